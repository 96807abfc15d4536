"""One condition on one trace's resolved targets -> the concrete edits of one forward.

Between the spec (conditions, named target sets) and the compiled plan: a condition's layer rule is
resolved per target (``l_start``, ``sink_lifetime`` ...), targets whose layers do not resolve are
skipped (and counted, with why), and the kind makes the edits.
"""

from __future__ import annotations

from .targets import Target


def groups(condition, sets: dict[str, list[Target]]) -> list[tuple[bool, list[Target]]]:
    """(is_control, targets) groups of one condition in one trace: targets, then its controls."""
    out = [(False, _unique([t for name in condition.targets for t in sets.get(name, [])]))]
    if condition.controls:
        out.append((True, sets.get(condition.controls, [])))
    return out


def skip_reason(condition, target: Target, n_layers: int) -> str | None:
    """Why ``condition`` has nothing to edit for ``target`` (its layers do not resolve in this model), or None."""
    try:
        layers = condition.layers_for(l_start=target.l_start, lifetime=target.ref_lifetime)
    except ValueError as exc:
        if condition.layer == "sink_lifetime":
            return "neither a sink nor paired with one, so no lifetime to mask"
        return f"layer not resolvable ({exc})"
    if not any(0 <= layer < n_layers for layer in layers):
        return f"every layer outside 0..{n_layers - 1}"
    return None


def skipped_targets(conditions, sets_by_trace: dict, n_layers: int) -> dict[str, dict[str, int]]:
    """Per condition id: how many targets (over all traces) it skips, by reason (only conditions that skip)."""
    out: dict[str, dict[str, int]] = {}
    for sets in sets_by_trace.values():
        for c in conditions:
            for _, group in groups(c, sets):
                for t in group:
                    reason = skip_reason(c, t, n_layers)
                    if reason is not None:
                        counts = out.setdefault(c.id, {})
                        counts[reason] = counts.get(reason, 0) + 1
    return out


def edits_for(condition, group: list[Target], state, n_layers: int):
    """Edits of one condition for one group of targets, and the layers edited per position.

    A target whose layers cannot be resolved (``l_start`` of a token that is no sink and has
    no paired sink, ``sink_lifetime`` without a lifetime) or for which its kind makes no edit
    is skipped in this condition.
    """
    kind = condition.kind_class
    edits, layers_of = [], {}
    for t in group:
        try:
            layers = condition.layers_for(l_start=t.l_start, lifetime=t.ref_lifetime)
        except ValueError:
            continue
        layers = [l for l in layers if 0 <= l < n_layers]
        if not layers:
            continue
        made = kind.edits_for(condition, t, layers, state)
        if not made:
            continue
        layers_of[t.position] = layers
        edits += made
    return edits, layers_of


def _unique(targets: list[Target]) -> list[Target]:
    seen, out = set(), []
    for t in targets:
        if t.position not in seen:
            seen.add(t.position)
            out.append(t)
    return out
