"""``attention_mask``: no query attends to the target keys in the chosen layers (H4).

pyvene 0.1.8 has no attention-probability component for Qwen/Llama (the softmax is inside a
function, not a module), so this kind is applied through the hookable attention function
(``interventions.attention``): probability exactly 0 on the masked keys, the rest renormalised
by the softmax, or (``redirect: bos``) the removed mass moved onto the primary sink.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ..spec.conditions import Condition, Edit, EffectColumn, InterventionBase, register_kind
from ..spec.fields import LayerRange, concrete, layer_label, layer_spec_validator
from .base import attention_edits


@register_kind
class AttentionMask(InterventionBase):
    """Stop every query from attending to the target tokens (as keys) in the given layers (one condition)."""

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("layers",)
    COMPILES_TO: ClassVar[str] = "attention"
    EFFECT_COLUMNS: ClassVar[dict[str, EffectColumn]] = {
        "redirect": EffectColumn("attention_mask: none | bos", ""),
        "masked": EffectColumn("attention_mask: this layer is one of the layers masked for this target", False),
    }

    kind: Literal["attention_mask"] = Field("attention_mask", description="Mask attention to the target tokens.")
    layers: int | list[int] | LayerRange | Literal["sink_lifetime"] = Field(
        description="Layers masked together: int, list, {from: a, to: b} or sink_lifetime "
                    "(where each target is a sink).")
    redirect: Literal["none", "bos"] = Field(
        "none", description="Where the removed attention goes: none (renormalise) or bos (to the primary sink).")

    _layers = field_validator("layers", mode="before")(lambda v: layer_spec_validator(("sink_lifetime",))(v))

    def conditions(self, index: int) -> list[Condition]:
        cid = f"attention_mask.{layer_label(self.layers)}.redirect-{self.redirect}"
        return [self._condition(index, cid, site=None, layer=concrete(self.layers), redirect=self.redirect)]

    @classmethod
    def edits_for(cls, condition, target, layers, state):
        return [Edit("attention_mask", layer, [target.position], redirect_to=0 if condition.redirect == "bos" else None)
                for layer in layers]

    @classmethod
    def effect_values(cls, condition, target, layer, edited_layers, state=None) -> dict:
        return {"redirect": condition.redirect or "", "masked": layer in edited_layers}

    @classmethod
    def install(cls, loaded, edits):
        """Install the attention edits on their layers for the duration of the block."""
        from ..attention import AttentionEdit

        def build(previous, edit):
            keys = tuple(sorted(set(edit.positions) | set(previous.masked_keys if previous else ())))
            return AttentionEdit(masked_keys=keys, redirect_to=edit.redirect_to,
                                 window=previous.window if previous else None,
                                 keep_first=previous.keep_first if previous else 0)

        return attention_edits(loaded, edits, build)

applied = AttentionMask.install
"""The install step under its old name."""
