"""Resolving a spec's named target sets to token positions of one trace.

Resolution uses the clean run: which positions are sinks, their levels, and run-level facts
(the token ids that became secondary sinks anywhere, the most common l_start). Every target
carries the ``l_start`` a ``layer: l_start`` intervention should use for it: its own when it
is a secondary sink; for a matched control, the l_start of the target it is paired with; for
any other token, the run's most common secondary-sink l_start (the model's sink-creating layer).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from interventions.detection.rules import Sink
from interventions.errors import UserError
from interventions.spec.fields import resolve_layers
from interventions.spec.target_sets import MASS_CALIPER, token_ids_for  # token_ids_for: defined beside the selectors


@dataclass
class Target:
    """One position an intervention acts on."""

    position: int
    token_id: int
    token: str
    target_set: str
    is_control: bool = False
    l_start: int | None = None
    """Layer ``l_start`` resolves to for this position (see module docstring)."""
    lifetime: int | None = None
    """Clean lifetime when the position is a secondary sink, else None."""
    ref_lifetime: int | None = None
    """Lifetime ``sink_lifetime`` resolves to: its own, or for a matched control its paired target's."""
    clean_kind: str = "none"
    """``primary``, ``secondary`` or ``none`` in the clean run."""
    control_of: int | None = None
    """For a matched control: the position of the target it is matched to (a mass-matched set shares it)."""


@dataclass
class RunFacts:
    """What the clean run over all traces says, needed to resolve per-trace targets."""

    sink_token_ids: set[int]
    """Token ids that are a secondary sink somewhere in the run."""
    modal_l_start: int | None
    """Most common secondary-sink l_start of the run (ties: the earliest), None if there is none."""

    @classmethod
    def from_sinks(cls, sinks: list[Sink]) -> RunFacts:
        secondary = [s for s in sinks if s.kind == "secondary"]
        counts = Counter(s.l_start for s in secondary)
        modal = min(counts, key=lambda k: (-counts[k], k)) if counts else None
        return cls({s.token_id for s in secondary}, modal)


def attention_mass(key_scores: np.ndarray, position: int, layers: list[int]) -> float:
    """Clean attention mass of key ``position``: its column sum (score x queries that see it, mean over
    heads) averaged over ``layers`` (all layers when empty)."""
    L, T = key_scores.shape
    rows = [l for l in layers if 0 <= l < L] or list(range(L))
    return float(key_scores[rows, position].mean()) * (T - position)


def mass_matched(matched: list[Target], pool: np.ndarray, key_scores: np.ndarray, caliper: int,
                 n_layers: int, size: str | int = 1) -> list[tuple[int, Target]]:
    """Match the targets with pool positions within ``caliper`` tokens of each (the nearest positions when none is
    that close) on clean attention mass over each target's lifetime layers, without replacement.

    ``size=1``: each target in position order takes the free position of closest log mass. ``size="auto"``: each
    target gets a set; the targets take turns, the one whose set holds the smallest share of its mass first, and
    add the free candidate whose log mass is closest to the mass still missing, among those keeping the set's sum
    below ``MASS_CALIPER[1]`` x the target's; a target stops when its set reaches its mass or nothing fits (see
    :class:`~interventions.spec.target_sets.MatchedControls`). Taking turns keeps one target from using up the
    tokens its neighbours need. Returns (control position, its target) pairs.
    """
    free = {int(p) for p in pool}
    if not free or not matched:
        return []
    order = sorted(free)
    near, mass = [], []
    for m in matched:
        layers = (resolve_layers("sink_lifetime", l_start=m.l_start, lifetime=m.ref_lifetime)
                  if m.l_start is not None and m.ref_lifetime else list(range(1, n_layers)))
        close = [p for p in order if abs(p - m.position) <= caliper]
        if not close:
            closest = min(abs(p - m.position) for p in order)
            close = [p for p in order if abs(p - m.position) == closest]
        near.append(close)
        mass.append({p: attention_mass(key_scores, p, layers) for p in close + [m.position]})

    def log_gap(i: int, p: int, goal: float) -> tuple:
        return (abs(np.log(max(mass[i][p], 1e-12)) - np.log(max(goal, 1e-12))), abs(p - matched[i].position), p)

    pairs = []
    if size == 1:
        for i, m in enumerate(matched):
            options = [p for p in near[i] if p in free]
            if options:
                best = min(options, key=lambda p: log_gap(i, p, mass[i][m.position]))
                free.discard(best)
                pairs.append((best, m))
        return pairs
    want = [mass[i][m.position] for i, m in enumerate(matched)]
    total = [0.0] * len(matched)
    open_ = set(range(len(matched)))
    while open_:
        i = min(open_, key=lambda j: (total[j] / max(want[j], 1e-12), matched[j].position))
        fits = [p for p in near[i] if p in free and total[i] + mass[i][p] < MASS_CALIPER[1] * want[i]]
        if total[i] >= want[i] * (1 - 1e-9) or not fits:      # reached (to float rounding) or nothing fits
            open_.discard(i)
            continue
        best = min(fits, key=lambda p: log_gap(i, p, want[i] - total[i]))
        free.discard(best)
        total[i] += mass[i][best]
        pairs.append((best, matched[i]))
    return pairs


def resolve_targets(target_specs: dict, *, trace: int, token_ids: np.ndarray, tokens: list[str], sinks: list[Sink],
                    facts: RunFacts, tokenizer, key_scores: np.ndarray | None = None) -> dict[str, list[Target]]:
    """Positions of every named target set in one trace (matched controls resolved last).

    ``key_scores``: the clean run's sink score of every key per layer ([L, T], mean over heads),
    needed by ``matched_controls`` with ``by: attention_mass``.
    """
    by_pos = {s.position: s for s in sinks}
    T = len(token_ids)

    def make(pos: int, name: str, *, control: bool = False, l_start: int | None = None,
             lifetime: int | None = None, control_of: int | None = None) -> Target:
        sink = by_pos.get(pos)
        own = sink is not None and sink.kind == "secondary"
        return Target(position=pos, token_id=int(token_ids[pos]), token=tokens[pos], target_set=name,
                      is_control=control, l_start=sink.l_start if own else (l_start if l_start is not None
                                                                            else facts.modal_l_start),
                      lifetime=sink.lifetime if own else None,
                      ref_lifetime=sink.lifetime if own else lifetime, clean_kind=sink.kind if sink else "none",
                      control_of=control_of)

    resolved: dict[str, list[Target]] = {}
    deferred = []
    for name, spec in target_specs.items():
        select = spec.select
        if select == "secondary_sinks":
            keep = [s for s in sinks if s.kind == "secondary"]
            if spec.level is not None:
                keep = [s for s in keep if [s.l_start, s.lifetime] == list(spec.level)]
            if spec.l_start is not None:
                keep = [s for s in keep if s.l_start == spec.l_start]
            if spec.tokens is not None:
                wanted = set(token_ids_for(tokenizer, spec.tokens, field=f"targets.{name}.tokens"))
                keep = [s for s in keep if s.token_id in wanted]
            if getattr(spec, "min_position", None) is not None:
                keep = [s for s in keep if s.position >= spec.min_position]
            positions = [s.position for s in keep]
        elif select == "primary_sinks":
            positions = [s.position for s in sinks if s.kind == "primary"]
        elif select == "tokens":
            wanted = set(token_ids_for(tokenizer, spec.tokens, field=f"targets.{name}.tokens"))
            positions = [t for t in range(1, T) if int(token_ids[t]) in wanted]
        elif select == "same_token_non_sinks":
            positions = [t for t in range(1, T) if int(token_ids[t]) in facts.sink_token_ids and t not in by_pos]
        elif select == "positions":
            positions = sorted({p if p >= 0 else T + p for p in spec.positions if -T <= p < T})
        elif select == "matched_controls":
            deferred.append((name, spec))
            continue
        else:  # the schema admits only the selectors above
            raise UserError(f"unknown target selector {select!r}", field=f"targets.{name}.select")
        resolved[name] = [make(p, name) for p in sorted(positions)]

    for name, spec in deferred:
        matched = resolved.get(spec.match, [])
        taken = {t.position for t in matched}
        pool = np.array([t for t in range(1, T) if t not in by_pos and t not in taken], dtype=np.int64)
        if getattr(spec, "by", "random") == "attention_mass":
            if key_scores is None:
                raise UserError("matched_controls by attention_mass needs the clean run's attention scores",
                                field=f"targets.{name}.by")
            pairs = mass_matched(matched, pool, key_scores, spec.caliper, key_scores.shape[0],
                                 size=getattr(spec, "size", 1))
        else:
            rng = np.random.default_rng([spec.seed, trace])
            n = min(len(matched), len(pool))
            chosen = rng.choice(pool, size=n, replace=False) if n else np.array([], dtype=np.int64)
            # Pair control i with target i (both sorted by position).
            pairs = list(zip(sorted(chosen.tolist()), matched))
        # Control i borrows its target's l_start and lifetime: `layer: l_start` and `layers:
        # sink_lifetime` then edit the same layers.
        resolved[name] = sorted((make(int(p), name, control=True, l_start=m.l_start, lifetime=m.ref_lifetime,
                                      control_of=m.position) for p, m in pairs), key=lambda t: t.position)
    return resolved
