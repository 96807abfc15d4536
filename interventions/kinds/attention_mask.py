"""``attention_mask``: no query attends to the target keys in the chosen layers (H4).

pyvene 0.1.8 has no attention-probability component for Qwen/Llama (the softmax is inside a
function, not a module), so this kind is applied through the hookable attention function
(``interventions.models.attention``): probability exactly 0 on the masked keys, the rest renormalised
by the softmax, or (``redirect: bos``) the removed mass moved onto the primary sink.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from interventions.spec.conditions import Condition, Edit, EffectColumn, InterventionBase, register_kind
from interventions.spec.fields import LayerRange, concrete, layer_label, layer_spec_validator

from .base import attention_edits


@register_kind
class AttentionMask(InterventionBase):
    """Stop every query from attending to the target tokens (as keys) in the given layers (one condition)."""

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("layers",)
    COMPILES_TO: ClassVar[str] = "attention"
    MASKS_TARGET_KEYS: ClassVar[bool] = True
    EFFECT_COLUMNS: ClassVar[dict[str, EffectColumn]] = {
        "redirect": EffectColumn("attention_mask: none | bos", ""),
        "masked": EffectColumn("attention_mask: this layer is one of the layers masked for this target", False),
        "renorm_primary_sink_score": EffectColumn(
            "attention_mask: primary sink score the mask gives by arithmetic alone (renormalisation, or the "
            "redirected mass), applied to the clean layer's attention; NaN in layers this forward does not mask",
            float("nan")),
        "masked_attention_mass": EffectColumn(
            "attention_mask: clean attention on the keys this forward masks in this layer, per query (mean over "
            "heads and queries); NaN in layers it does not mask. Targets and controls side by side show how well "
            "the controls are matched (H4's verdict keeps only traces where controls / targets is within "
            "mass_caliper: 1-2x for a claim that the targets move the outcome more)", float("nan")),
        "control_of": EffectColumn(
            "attention_mask: for a control row, the position of the target it is matched to (a mass-matched set "
            "of controls shares it and is one unit); -1 for a target row", -1),
    }

    kind: Literal["attention_mask"] = Field("attention_mask", description="Mask attention to the target tokens.")
    layers: int | list[int] | LayerRange | Literal["sink_lifetime"] = Field(
        description="Layers masked together: int, list, {from: a, to: b} or sink_lifetime "
                    "(the attention layers that read each target while it is a sink: l_start+1 .. l_start+lifetime).")
    redirect: Literal["none", "bos"] = Field(
        "none", description="Where the removed attention goes: none (renormalise) or bos (to the primary sink).")

    _layers = field_validator("layers", mode="before")(lambda v: layer_spec_validator(("sink_lifetime",))(v))

    def conditions(self, index: int) -> list[Condition]:
        cid = f"attention_mask.{layer_label(self.layers)}.redirect-{self.redirect}"
        return [self._condition(index, cid, site=None, layer=concrete(self.layers), redirect=self.redirect)]

    @classmethod
    def family_key(cls, condition: dict) -> tuple:
        """Layer rule and redirect split the families (a redirect to the primary sink is another claim)."""
        return (condition["kind"], str(condition.get("layer")), condition.get("redirect") or "",
                "+".join(sorted(condition.get("targets") or [])))

    @classmethod
    def edits_for(cls, condition, target, layers, state):
        # bos: the removed mass goes to the trace's reference primary sink (position 0 unless detection
        # put the primary sink elsewhere).
        to = (state or {}).get("reference", 0) if condition.redirect == "bos" else None
        return [Edit("attention_mask", layer, [target.position], redirect_to=to) for layer in layers]

    @classmethod
    def trace_state(cls, conditions, trace) -> dict:
        """Per (condition, targets | controls): the primary sink score each masked layer would have by
        renormalisation alone (:mod:`interventions.observation.renormalisation`), from one clean forward."""
        from interventions.compile.expand import edits_for, groups
        from interventions.observation.renormalisation import predicted_key_scores

        n_layers = trace.loaded.dims["layers"]
        state = {"reference": trace.reference}
        plans = {}
        for c in conditions:
            for is_control, group in groups(c, trace.sets):
                edits, _ = edits_for(c, group, state, n_layers)
                per_layer: dict = {}
                for e in edits:   # exactly what install() sets on each layer
                    per_layer[e.layer] = _merged(per_layer.get(e.layer), e)
                plans[(c.id, is_control)] = per_layer
        return {**state, "predicted": predicted_key_scores(trace.loaded, trace.token_ids, plans, trace.reference)}

    @classmethod
    def effect_values(cls, condition, target, layer, edited_layers, state=None) -> dict:
        predicted = (state or {}).get("predicted", {}).get((condition.id, target.is_control), {}).get(layer, {})
        return {"redirect": condition.redirect or "", "masked": layer in edited_layers,
                "renorm_primary_sink_score": predicted.get("score", float("nan")),
                "masked_attention_mass": predicted.get("removed", float("nan")),
                "control_of": target.control_of if target.is_control and target.control_of is not None else -1}

    @classmethod
    def install(cls, loaded, edits):
        """Install the attention edits on their layers for the duration of the block."""
        return attention_edits(loaded, edits, _merged)


def _merged(previous, edit):
    """The :class:`~interventions.models.attention.AttentionEdit` of one layer: ``edit``'s keys added to what an
    earlier edit of the same forward set there (``previous``, or None)."""
    from interventions.models.attention import AttentionEdit

    keys = tuple(sorted(set(edit.positions) | set(previous.masked_keys if previous else ())))
    return AttentionEdit(masked_keys=keys, redirect_to=edit.redirect_to,
                         window=previous.window if previous else None,
                         keep_first=previous.keep_first if previous else 0)
