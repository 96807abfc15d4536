"""One trace of a run: every condition's edits against the clean forward, measured per target.

Nothing here knows a kind: each condition's kind class (:data:`interventions.spec.KINDS`) says
what it needs from the clean model (``trace_state``), which edits it makes for a target
(``edits_for``) and which columns it adds to the effects rows (``effect_values``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from interventions.compile.expand import edits_for, groups
from interventions.compile.targets import Target
from interventions.measures.compute import first_non_finite, per_layer, per_position, target_rows
from interventions.observation.capture import capture_sites
from interventions.progress import warn

from .execute import TraceExecutor, first_position
from .tables import (
    BASE_COLUMNS,
    clean_profile_rows,
    kind_columns,
    measured_columns,
    sink_layer_rows,
    sink_window_rows,
)


@dataclass
class TraceContext:
    """What a kind's ``trace_state`` may read about the trace being run (and the run's other traces)."""

    loaded: object
    """The :class:`~interventions.models.load.LoadedModel`."""
    index: int
    """This trace's index in the run."""
    token_ids: list[int]
    sinks: list
    """Clean-run :class:`~interventions.detection.rules.Sink` s of this trace."""
    sets: dict[str, list[Target]]
    """Every target set resolved in this trace."""
    traces: dict = field(default_factory=dict)
    """Every trace of the run by index (:class:`~interventions.spec.traces.Trace`), e.g. a patch's source."""
    all_sets: dict = field(default_factory=dict)
    """Resolved target sets of every trace of the run, by trace index."""

    @property
    def reference(self) -> int:
        """Position of this trace's reference primary sink (cosines are measured against it), 0 without one."""
        return next((s.position for s in self.sinks if s.kind == "primary" and s.reference), 0)

    def site_values(self, wanted, trace: int | None = None, reduce=None) -> dict:
        """Clean outputs ``{(site, layer): [T, D]}`` of this trace (or trace ``trace`` of the run), one forward."""
        ids = self.token_ids if trace is None or trace == self.index else self.traces[trace].token_ids
        return capture_sites(self.loaded, ids, wanted, reduce=reduce)


def kind_states(conditions, context: TraceContext) -> dict[str, object]:
    """Each kind's per-trace state, computed once for all its conditions in this trace."""
    by_kind: dict[str, list] = {}
    for c in conditions:
        by_kind.setdefault(c.kind, []).append(c)
    return {kind: conds[0].kind_class.trace_state(conds, context) for kind, conds in by_kind.items()}


def run_trace(loaded, tr, conditions, config, sinks, sets, condition_s, reuse_prefix, forwards, non_finite, *,
              measures, traces=None, all_sets=None):
    """Every condition on one trace, its targets resolved from the clean pass (``sinks``, ``sets``).

    Returns (effects rows, downstream rows, {"sink_layers", "clean_profile"} frames).
    """
    L = loaded.dims["layers"]
    context = TraceContext(loaded, tr.index, list(tr.token_ids), sinks, sets, traces or {}, all_sets or {})
    states = kind_states(conditions, context)
    planned = []
    for condition in conditions:
        for is_control, group in groups(condition, sets):
            edits, layers_of = edits_for(condition, group, states[condition.kind], L)
            if edits:
                planned.append((condition, is_control, group, edits, layers_of))
    # The clean forward also serves as the prefix of every intervened forward (see execute.py).
    # Cosines in every forward are measured against the clean run's reference primary sink.
    reference = context.reference
    ex = TraceExecutor(loaded, tr.token_ids, reuse_prefix=reuse_prefix,
                       starts=[first_position(p[3]) for p in planned], reference=reference)
    clean = ex.clean()
    clean_layers = per_layer(clean, config, primary_position=reference, measures=measures)
    keep = set(BASE_COLUMNS) | measured_columns(measures) | set(kind_columns())
    defaults = {name: col.default for name, col in kind_columns().items()}

    rows, downstream = [], []
    for condition, is_control, group, edits, layers_of in planned:
        t_cond = time.perf_counter()
        kind = condition.kind_class
        edited = ex.intervened(edits)
        bad = first_non_finite(edited, clean)
        if bad is not None:
            event = {"trace": tr.index, "condition": condition.id, "is_control": is_control, **bad}
            non_finite.append(event)
            warn(f"trace {tr.index}, {condition.id} ({'controls' if is_control else 'targets'}): non-finite "
                 f"{bad['quantity']} ({bad['value']}) from layer {bad['layer']}, position {bad['position']}; "
                 "its rows are kept and marked non_finite")
        edited_layers = per_layer(edited, config, primary_position=reference, measures=measures)
        positions = per_position(clean, edited, measures)
        if positions:
            downstream += [{"trace": tr.index, "condition": condition.id, "is_control": is_control, "position": p,
                            **{name: values[p] for name, values in positions.items()},
                            "non_finite": bad is not None}
                           for p in range(min(layers_of), tr.length)]
        for t in group:
            if t.position not in layers_of:
                continue
            layers = layers_of[t.position]
            base = {
                "condition": condition.id, "kind": condition.kind, "site": condition.site or "",
                "intervened_layer": layers[0], "intervened_layers": ",".join(map(str, layers)),
                "target_set": t.target_set, "is_control": is_control,
                "trace": tr.index, "position": t.position, "token": t.token, "token_id": t.token_id,
                "clean_kind": t.clean_kind, "prefix_hash": prefix_hash(tr.token_ids, t.position),
            }
            ref = layers[0] if kind.COMPILES_TO == "site" else None
            new = target_rows(clean=clean_layers, edited=edited_layers, positions=positions,
                              position=t.position, ref_layer=ref, base=base, measures=measures)
            for row in new:
                row.update(defaults)
                row.update(kind.effect_values(condition, t, row["layer"], layers, states[condition.kind]))
                row["non_finite"] = bad is not None
                for col in [c for c in row if c not in keep]:
                    del row[col]
            rows += new
        condition_s[condition.id] += time.perf_counter() - t_cond
    for k, v in ex.forwards.items():  # tokens: what ran; naive_tokens: one full forward per intervened pass
        forwards[k] += v
    extra = {"sink_layers": sink_layer_rows(clean, sinks, L), "clean_profile": clean_profile_rows(clean, tr.index, sinks),
             "sink_window": sink_window_rows(clean, sinks, L)}
    return rows, downstream, extra


def prefix_hash(token_ids, position: int) -> str:
    """A short hash of the tokens up to and including ``position``.

    A causal LM's activations at ``position`` depend on nothing else, so two traces whose targets share
    this hash (a sink in a shared system prompt) measure the same thing: one independent unit, not two.
    """
    import hashlib

    return hashlib.sha1(",".join(map(str, list(token_ids)[:position + 1])).encode()).hexdigest()[:16]
