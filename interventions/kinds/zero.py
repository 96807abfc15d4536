"""``zero``: set a site's output to 0 at the target positions (H1: no MLP output, no sink)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from interventions.spec.conditions import Condition, register_kind

from .base import SiteIntervention


@register_kind
class Zero(SiteIntervention):
    """Set a site's output to zero for the target tokens (one condition)."""

    TAUTOLOGICAL_AT_L_START: ClassVar[bool] = True
    NOISE_MATCHABLE: ClassVar[bool] = True

    kind: Literal["zero"] = Field("zero", description="Zero the site output of the target tokens.")

    def conditions(self, index: int) -> list[Condition]:
        return [self._site_condition(index)]

    @classmethod
    def pyvene_intervention(cls, edit, dims):
        from interventions.compile.pyvene_compat import pv

        return pv.ZeroIntervention(embed_dim=dims["hidden"])

    @classmethod
    def reference_value(cls, edit, original):
        """Oracle: what the edited positions hold afterwards ([N, D] in, [N, D] out)."""
        return original.new_zeros(original.shape)
