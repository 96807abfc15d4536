"""``patch``: activation patching — write a site's clean value from another position or trace at the targets.

The core operation of causal tracing (Meng et al. 2022; Heimersheim & Nanda 2024). The value
written at a target comes from the clean run, at the same site and layer, of

* ``source: {position: p}``: position ``p`` of the same trace (negative counts from the end),
* ``source: {set: name}``: the first position of target set ``name`` (e.g. the primary sink),
* ``source: {trace: k}``: the target's own position in trace ``k`` of the run (0-based),
* any combination of ``trace`` with ``position`` or ``set``.

A target with no such source (a shorter source trace, an empty set) is skipped. Patching the
clean value of a position into itself changes nothing (the tests check it); a spec that asks
for it gets a warning.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from interventions.errors import UserError
from interventions.spec.conditions import Condition, Edit, EffectColumn, register_kind
from interventions.spec.fields import SpecModel, fail

from .base import SiteIntervention


class PatchSource(SpecModel):
    """Where a patched value comes from (all fields optional; empty = the target itself)."""

    trace: int | None = Field(None, ge=0, description="Trace of the run (0-based) to take the value from; "
                                                       "default: the target's own trace.")
    position: int | None = Field(None, description="Position to take the value from (negative counts from the end); "
                                                   "default: the target's own position.")
    set: str | None = Field(None, description="Take the value from the first position of this target set.")

    @model_validator(mode="after")
    def _one_position(self) -> PatchSource:
        if self.position is not None and self.set is not None:
            raise fail("give position or set, not both — they both say which position the value comes from")
        return self

    def label(self) -> str:
        parts = ([f"t{self.trace}"] if self.trace is not None else []) + \
            ([f"p{self.position}"] if self.position is not None else []) + ([self.set] if self.set else [])
        return "-".join(parts) or "self"


@register_kind
class Patch(SiteIntervention):
    """Write the clean value of another position or trace at a site for the target tokens (one condition)."""

    TAUTOLOGICAL_AT_L_START: ClassVar[bool] = True
    EFFECT_COLUMNS: ClassVar[dict[str, EffectColumn]] = {
        "source_trace": EffectColumn("patch: trace the written value comes from (-1 for other kinds)", -1),
        "source_position": EffectColumn("patch: position the written value comes from (-1 for other kinds)", -1),
    }

    kind: Literal["patch"] = Field("patch", description="Patch the site output of the targets from a clean source.")
    source: PatchSource = Field(default_factory=PatchSource,
                                description="{trace: k, position: p | set: name}: where the written value comes from.")

    def conditions(self, index: int) -> list[Condition]:
        return [self._site_condition(index, f".from-{self.source.label()}",
                                     params={"source": self.source.model_dump(), "label": self.source.label()})]

    def warnings(self, index: int) -> list[str]:
        s = self.source
        if s.trace is None and s.position is None and s.set is None:
            return [f"interventions[{index}].source: empty — each target gets its own clean value back, which "
                    "changes nothing (fine as a sanity check; otherwise give position, set or trace)"]
        return []

    @classmethod
    def referenced_sets(cls, raw: dict) -> list[tuple[str, Any]]:
        src = raw.get("source")
        return [("source.set", src["set"])] if isinstance(src, dict) and isinstance(src.get("set"), str) else []

    # -- run --------------------------------------------------------------------------------

    @classmethod
    def trace_state(cls, conditions, trace) -> dict[str, dict]:
        """Per condition id: the source trace, each target's source position, and the clean values there."""
        L = trace.loaded.dims["layers"]
        state: dict[str, dict] = {}
        for c in conditions:
            src = c.params["source"]
            k = trace.index if src["trace"] is None else src["trace"]
            if k != trace.index and k not in trace.traces:
                raise UserError(f"{c.id}: source trace {k} is not in this run ({len(trace.traces)} traces, "
                                f"0..{len(trace.traces) - 1}); use a smaller trace or raise limit",
                                field="interventions.source.trace")
            n = len(trace.token_ids) if k == trace.index else len(trace.traces[k].token_ids)
            sets = trace.sets if k == trace.index else trace.all_sets.get(k, {})
            if src["set"] is not None:
                members = sets.get(src["set"], [])
                fixed = members[0].position if members else None
            elif src["position"] is not None:
                fixed = src["position"] + n if src["position"] < 0 else src["position"]
            else:
                fixed = None
            own = src["set"] is None and src["position"] is None
            targets = [t.position for name in [*c.targets, *([c.controls] if c.controls else [])]
                       for t in trace.sets.get(name, [])]
            wanted = sorted({p for p in (targets if own else [fixed]) if p is not None and 0 <= p < n})
            source_of = {p: (p if own else fixed) for p in targets}
            values = trace.site_values([(c.site, layer) for layer in range(L)], trace=k,
                                       reduce=lambda site, layer, out: out[wanted].clone()) if wanted else {}
            state[c.id] = {"trace": k, "rows": {p: i for i, p in enumerate(wanted)}, "source_of": source_of,
                           "values": values}
        return state

    @classmethod
    def edits_for(cls, condition, target, layers, state):
        s = state[condition.id]
        row = s["rows"].get(s["source_of"].get(target.position))
        if row is None:
            return []
        return [Edit("patch", layer, [target.position], site=condition.site,
                     vector=s["values"][(condition.site, layer)][row:row + 1]) for layer in layers]

    @classmethod
    def effect_values(cls, condition, target, layer, edited_layers, state=None) -> dict:
        s = state[condition.id]
        return {"source_trace": int(s["trace"]), "source_position": int(s["source_of"][target.position])}

    @classmethod
    def merge_key(cls, edit) -> tuple:
        return (edit.kind, edit.site, edit.layer)  # one edit per (site, layer); each position keeps its row

    @classmethod
    def api_edits(cls, loaded, *, layers, positions, site, values=None, source_tokens=None, source_positions=None):
        """``Patch(site=..., layer=..., positions=..., values=...)`` writes ``values`` ([N, D], or [D] for all);
        ``Patch(..., source_tokens=ids, source_positions=[...])`` writes the clean values of another input
        (``source_positions`` defaults to ``positions``)."""
        import torch

        from interventions.observation.capture import capture_sites

        positions = list(positions)
        if values is not None:
            v = torch.as_tensor(values)
            rows = {layer: (v if v.dim() == 2 else v.expand(len(positions), -1)) for layer in layers}
        elif source_tokens is not None:
            src = list(source_positions) if source_positions is not None else positions
            if len(src) != len(positions):
                raise ValueError(f"{len(src)} source_positions for {len(positions)} positions; give one each")
            got = capture_sites(loaded, source_tokens, [(site, layer) for layer in layers])
            rows = {layer: got[(site, layer)][src] for layer in layers}
        else:
            raise ValueError("Patch needs values=..., or source_tokens=... (and source_positions=...)")
        return [Edit("patch", layer, positions, site=site, vector=rows[layer]) for layer in layers]

    # -- compile ----------------------------------------------------------------------------

    @classmethod
    def pyvene_intervention(cls, edit, dims):
        from interventions.compile.pyvene_compat import pv

        # One row per position: pyvene's [B, N, D] selection (B = 1 in a run) is overwritten by the rows.
        return pv.VanillaIntervention(source_representation=edit.vector[None], embed_dim=dims["hidden"])

    @classmethod
    def reference_value(cls, edit, original):
        return edit.vector.to(device=original.device, dtype=original.dtype).clone()
