"""``mean_swap``: write the mean non-sink vector of the same trace and layer at the targets (H3).

The mean comes from the clean run: the average of the site's output over every position that
is not a sink (primary or secondary) in that trace, at that layer (the paper's footnote 3).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from interventions.spec.conditions import Condition, Edit, InterventionBase, register_kind
from interventions.spec.fields import Site, SweepRange, layer_label, layer_spec_validator, site_validator

DEFAULT_MAX_OFFSET = 8
"""How far below ``l_start`` a sweep with ``to: l_start`` reaches by default."""


@register_kind
class MeanSwap(InterventionBase):
    """Replace a site's output for the target tokens by its mean over ordinary tokens, swept layer by layer.

    One condition per (site, layer). ``layers`` is an int, a list, ``{from: a, to: b}``, ``l_start``,
    or ``{from: a, to: l_start}``. The last one is relative to each sink, so it is swept by
    offset: conditions ``l_start``, ``l_start-1``, ..., ``l_start-max_offset`` (ids
    ``mean_swap.<site>.l_start-N``); a sink for which ``l_start - N < a`` is skipped in that
    condition (``params["min_layer"] = a``).
    """

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("layers",)
    COMPILES_TO: ClassVar[str] = "site"
    TAUTOLOGICAL_AT_L_START: ClassVar[bool] = True
    SWEEPS_LAYERS: ClassVar[bool] = True
    NOISE_MATCHABLE: ClassVar[bool] = True
    kind: Literal["mean_swap"] = Field("mean_swap",
                                       description="Swap the site output for its mean, one layer at a time.")
    site: Site | list[Site] = Field(description="One site or a list of sites; each site is swept separately.")
    layers: int | list[int] | SweepRange | Literal["l_start"] = Field(
        description="Layers swept one per condition: int, list, {from: a, to: b or l_start} or l_start.")
    max_offset: int = Field(DEFAULT_MAX_OFFSET, ge=0,
                            description="With {from: a, to: l_start}: sweep l_start down to l_start - max_offset.")

    _site = field_validator("site", mode="before")(lambda v: site_validator(True)(v))
    _layers = field_validator("layers", mode="before")(
        lambda v: layer_spec_validator(("l_start",), relative_to=True)(v))

    def sweep(self) -> list[tuple[int | str, dict]]:
        """The swept layer specs with their params, in order."""
        lay = self.layers
        if isinstance(lay, SweepRange):
            if lay.to == "l_start":
                return [("l_start" if k == 0 else f"l_start-{k}", {"offset": k, "min_layer": lay.from_})
                        for k in range(self.max_offset + 1)]
            return [(n, {}) for n in range(lay.from_, lay.to + 1)]
        if isinstance(lay, list):
            return [(n, {}) for n in lay]
        return [(lay, {})]

    def conditions(self, index: int) -> list[Condition]:
        sites = [self.site] if isinstance(self.site, str) else list(self.site)
        return [self._condition(index, f"mean_swap.{site}.{layer_label(layer)}", site=site, layer=layer,
                                params=dict(params))
                for site in sites for layer, params in self.sweep()]

    def warnings(self, index: int) -> list[str]:
        if "max_offset" in self.model_fields_set and not (
                isinstance(self.layers, SweepRange) and self.layers.to == "l_start"):
            return [f"interventions[{index}].max_offset: ignored — it only applies to layers: {{from: a, to: l_start}}"]
        return []

    @classmethod
    def family_key(cls, condition: dict) -> tuple:
        """A sweep's layers are one family (the claim is about swaps before l_start, read over the sweep)."""
        return (condition["kind"], condition.get("site") or "", "+".join(sorted(condition.get("targets") or [])))

    # -- run --------------------------------------------------------------------------------

    @classmethod
    def trace_state(cls, conditions, trace):
        """Per site: the L mean vectors of the trace's non-sink positions (one clean forward for all sites)."""
        sites = sorted({c.site for c in conditions})
        return site_means(trace.loaded, trace.token_ids, {s.position for s in trace.sinks}, sites)

    @classmethod
    def edits_for(cls, condition, target, layers, state):
        return [Edit("mean_swap", layer, [target.position], site=condition.site, vector=state[condition.site][layer])
                for layer in layers]

    # -- compile ----------------------------------------------------------------------------

    @classmethod
    def pyvene_intervention(cls, edit, dims):
        from interventions.compile.pyvene_compat import pv

        return pv.VanillaIntervention(source_representation=edit.vector, embed_dim=dims["hidden"])

    @classmethod
    def reference_value(cls, edit, original):
        return edit.vector.to(original.dtype).expand_as(original).clone()


def site_means(loaded, token_ids, exclude: set[int], sites) -> dict[str, list]:
    """Mean output of each site over the non-excluded positions, per layer: site -> L vectors [D].

    One clean forward with plain hooks (no observation, no logits beyond the last position). Each
    vector stays on its layer's device (layers may be spread over GPUs), where its edit runs.
    """
    import torch

    from interventions.observation.capture import capture_sites

    T = len(token_ids)
    keep = torch.ones(T, dtype=torch.bool)
    keep[sorted(p for p in exclude if p < T)] = False
    if not keep.any():
        raise ValueError("every position is a sink; there is no ordinary token to average")
    L = loaded.dims["layers"]
    dtype = next(loaded.model.parameters()).dtype
    values = capture_sites(loaded, token_ids, [(s, layer) for s in sites for layer in range(L)],
                           reduce=lambda site, layer, out: out[keep.to(out.device)].float().mean(0).to(dtype))
    return {s: [values[(s, layer)] for layer in range(L)] for s in sites}
