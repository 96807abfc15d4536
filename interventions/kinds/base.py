"""What site-editing kinds share: the ``site`` and ``layer`` fields and their one-condition expansion.

Not a kind itself; ``zero``, ``scale``, ``add`` and ``patch`` build on it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ..spec.conditions import Condition, InterventionBase
from ..spec.fields import LayerRange, Site, concrete, layer_label, layer_spec_validator, site_validator


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
