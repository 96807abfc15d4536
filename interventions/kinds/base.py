"""What site-editing kinds share: the ``site`` and ``layer`` fields and their one-condition expansion.

Not a kind itself; ``zero``, ``scale``, ``add`` and ``patch`` build on it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from interventions.spec.conditions import Condition, InterventionBase
from interventions.spec.fields import LayerRange, Site, concrete, layer_label, layer_spec_validator, site_validator


class SiteIntervention(InterventionBase):
    """A kind that rewrites one site's output at the targets, on the layers of ``layer`` together."""

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("layer",)
    COMPILES_TO: ClassVar[str] = "site"

    site: Site = Field(description="Site to edit: mlp_output, attention_output or block_output.")
    layer: int | list[int] | LayerRange | Literal["l_start"] = Field(
        description="Layers edited together: int, list of ints, {from: a, to: b} or l_start (per sink).")

    _site = field_validator("site", mode="before")(lambda v: site_validator(False)(v))
    _layer = field_validator("layer", mode="before")(lambda v: layer_spec_validator(("l_start",))(v))

    def _site_condition(self, index: int, suffix: str = "", **kw) -> Condition:
        """One condition ``<kind>.<site>.<layer><suffix>`` over the layers of ``layer``."""
        return self._condition(index, f"{self.kind}.{self.site}.{layer_label(self.layer)}{suffix}",
                               layer=concrete(self.layer), **kw)


@contextmanager
def attention_edits(loaded, edits, build):
    """Set ``build(previous, edit)`` (an :class:`~interventions.models.attention.AttentionEdit`) on the attention
    module of each edit's layer for the duration of the block, and remove it on exit (also on error).

    The install step shared by the kinds that edit attention probabilities (``attention_mask``,
    ``streaming``); ``previous`` is what an earlier edit of the same forward set on that layer.
    """
    from interventions.models.adapters import decoder_layers, get_module

    layers = decoder_layers(loaded.model, loaded.adapter)
    touched = []
    try:
        for edit in edits:
            attn = get_module(layers[edit.layer], loaded.adapter.attention)
            attn._interventions_edit = build(getattr(attn, "_interventions_edit", None), edit)
            touched.append(attn)
        yield
    finally:
        for attn in touched:
            if hasattr(attn, "_interventions_edit"):
                del attn._interventions_edit
