"""``scale``: multiply a site's output at the targets by a factor (H2: norm sets score and lifetime)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator

from interventions.spec.conditions import Condition, Edit, EffectColumn, register_kind
from interventions.spec.fields import check_factor as _check_factor
from interventions.spec.fields import each_once

from .base import SiteIntervention


@register_kind
class Scale(SiteIntervention):
    """Multiply a site's output for the target tokens; each factor is its own condition."""

    TAUTOLOGICAL_AT_L_START: ClassVar[bool] = True
    DOSE: ClassVar[str | None] = "factor"
    NOISE_MATCHABLE: ClassVar[bool] = True
    EFFECT_COLUMNS: ClassVar[dict[str, EffectColumn]] = {
        "factor": EffectColumn("scale factor (NaN for other kinds)", float("nan"))}

    kind: Literal["scale"] = Field("scale", description="Scale the site output of the target tokens.")
    factors: list[Annotated[float, AfterValidator(_check_factor)]] = Field(
        min_length=1, description="Scale factors, each its own condition; > 0 (use kind: zero for 0).")

    _unique = field_validator("factors")(each_once("factor"))

    def conditions(self, index: int) -> list[Condition]:
        return [self._site_condition(index, f".x{f:g}", factor=f) for f in self.factors]

    def warnings(self, index: int) -> list[str]:
        return [f"interventions[{index}].factors[{j}]: 1 leaves the output unchanged (identity) — "
                "fine as a sanity check, otherwise remove it" for j, f in enumerate(self.factors) if f == 1]

    @classmethod
    def edits_for(cls, condition, target, layers, state):
        return [Edit("scale", layer, [target.position], site=condition.site, factor=condition.factor)
                for layer in layers]

    @classmethod
    def effect_values(cls, condition, target, layer, edited_layers, state=None) -> dict:
        return {"factor": float(condition.factor)}

    @classmethod
    def pyvene_intervention(cls, edit, dims):
        return _scale_intervention_class()(edit.factor, embed_dim=dims["hidden"])

    @classmethod
    def reference_value(cls, edit, original):
        return original * edit.factor


_SCALE_CLASS = None


def _scale_intervention_class():
    """The pyvene intervention class, defined on first use (pyvene loads only when a plan needs it)."""
    global _SCALE_CLASS
    if _SCALE_CLASS is None:
        from interventions.compile.pyvene_compat import pv

        class ScaleIntervention(pv.SourcelessIntervention, pv.LocalistRepresentationIntervention):
            """Multiply the selected representations by ``factor`` (pyvene keeps the [B, units, D] shape)."""

            def __init__(self, factor: float, **kwargs):
                super().__init__(**kwargs)
                self.factor = float(factor)

            def forward(self, base, source=None, subspaces=None, **kwargs):
                return base * self.factor

            def __str__(self):
                return f"ScaleIntervention(factor={self.factor})"

        _SCALE_CLASS = ScaleIntervention
    return _SCALE_CLASS
