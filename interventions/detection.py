"""Sink detection rules: pure functions over one trace's observation.

Default rule (paper Sec. 3, with the norm condition made explicit): position t is *aligned*
at layer l when cos(h_t^l, h_0^l) > ``cos_threshold`` and ||h_t^l|| > ``norm_ratio`` x the
median token norm of layer l. The primary sink's *onset* is the first layer where position 0
passes the norm condition. Position 0 and every position aligned at the onset layer are
primary sinks (the paper's chat-template tokens 0-2). Any other position with an aligned
layer is a secondary sink: ``l_start`` is its first aligned layer and ``lifetime`` the length
of the contiguous aligned run from there; (l_start, lifetime) is its sink level.

Legacy rule (the paper's released code, for comparing with ``../shared`` files): aligned
means |cos| > 0.9 with no norm condition; lifetime = number of aligned layers; a non-primary
position is ``secondary`` when 4 < lifetime < L - 15, else ``noise``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from .observe import Observation


@dataclass(frozen=True)
class DetectionConfig:
    """Thresholds of the detection rule (recorded in every manifest)."""

    cos_threshold: float = 0.95
    """Cosine to the primary sink's hidden state above which a state counts as sink-aligned."""
    norm_ratio: float = 5.0
    """A sink's hidden-state norm must exceed this multiple of the layer's median token norm."""
    min_lifetime: int = 1
    """Secondary sinks with a shorter contiguous run are dropped."""
    rule: Literal["default", "legacy"] = "default"
    """``default`` (cos and norm) or ``legacy`` (the paper's code: |cos| > 0.9, 4 < lifetime < L-15)."""
    reference_position: int = 0


@dataclass
class Sink:
    """One detected sink in one trace (a row of ``sinks.jsonl``)."""

    trace: int
    position: int
    token_id: int
    token: str
    kind: str
    """``primary``, ``secondary`` or (legacy rule only) ``noise``."""
    l_start: int
    lifetime: int
    layers: list[int] = field(default_factory=list)
    """The layers of the contiguous aligned run (legacy: every aligned layer)."""
    hidden_norm: float = float("nan")
    """||h|| at l_start."""
    mlp_out_norm: float = float("nan")
    """||MLP output|| at l_start: the quantity the paper says sets score and lifetime."""
    cos: float = float("nan")
    """Cosine to the primary sink's hidden state at l_start."""
    peak_sink_score: float = float("nan")
    """Highest head-averaged sink score over the attention layers that read the sink: a state aligned
    at layer l (output of layer l) is a key in the attention of layer l + 1, so layers
    l_start + 1 .. l_start + lifetime (the convention of ``sink_layers.parquet`` and the norm -> score fit)."""
    censored: bool = False
    """The run reaches the last layer, so the true lifetime may be longer."""

    @property
    def level(self) -> tuple[int, int]:
        return (self.l_start, self.lifetime)

    def to_dict(self) -> dict:
        return asdict(self)


def aligned_layers(obs: Observation, config: DetectionConfig) -> np.ndarray:
    """Boolean [L, T]: where each position's hidden state counts as sink-aligned."""
    cos = obs.profiles["hidden_cos"]
    if config.rule == "legacy":
        return np.abs(cos) > 0.9
    norm = obs.profiles["hidden_norm"]
    median = np.median(norm, axis=1, keepdims=True)
    return (cos > config.cos_threshold) & (norm > config.norm_ratio * median)


def onset_layer(obs: Observation, config: DetectionConfig) -> int | None:
    """First layer where the reference (BOS) state passes the norm condition, or None."""
    norm = obs.profiles["hidden_norm"]
    ref = config.reference_position
    massive = norm[:, ref] > config.norm_ratio * np.median(norm, axis=1)
    hits = np.flatnonzero(massive)
    return int(hits[0]) if hits.size else None


def _run_from(column: np.ndarray, start: int) -> int:
    """Length of the run of True in ``column`` starting at ``start``."""
    n = 0
    while start + n < column.shape[0] and column[start + n]:
        n += 1
    return n


def detect_sinks(obs: Observation, *, trace: int = 0, tokens: list[str] | None = None,
                 config: DetectionConfig = DetectionConfig()) -> list[Sink]:
    """Primary and secondary sinks of one trace, ordered by position."""
    aligned = aligned_layers(obs, config)
    L, T = aligned.shape
    ref = config.reference_position
    scores = obs.mean_sink_scores()
    onset = onset_layer(obs, config)
    ref_layers = set(np.flatnonzero(aligned[:, ref]).tolist())
    sinks: list[Sink] = []
    for t in range(T):
        hits = np.flatnonzero(aligned[:, t])
        if t == ref:
            if config.rule == "default" and onset is None:
                continue
            start = onset if config.rule == "default" else (int(hits[0]) if hits.size else 0)
            kind = "primary"
        else:
            if hits.size == 0:
                continue
            start = int(hits[0])
            if config.rule == "default":
                kind = "primary" if onset is not None and aligned[onset, t] and start <= onset else "secondary"
            else:
                kind = "primary" if set(hits.tolist()) == ref_layers else "secondary"
        if config.rule == "legacy":
            layers = hits.tolist()
            lifetime = len(layers)
            if kind == "secondary" and not (4 < lifetime < L - 15):
                kind = "noise"
        else:
            lifetime = _run_from(aligned[:, t], start)
            layers = list(range(start, start + lifetime))
            if kind == "secondary" and lifetime < config.min_lifetime:
                continue
        span = layers or [start]
        sinks.append(Sink(
            trace=trace, position=t, token_id=int(obs.token_ids[t]),
            token=tokens[t] if tokens is not None else "",
            kind=kind, l_start=start, lifetime=lifetime, layers=layers,
            hidden_norm=float(obs.profiles["hidden_norm"][start, t]),
            mlp_out_norm=float(obs.profiles["mlp_out_norm"][start, t]),
            cos=float(obs.profiles["hidden_cos"][start, t]),
            peak_sink_score=_peak_score(scores, span, t),
            censored=bool(layers) and layers[-1] == L - 1,
        ))
    return sinks


def _peak_score(scores: np.ndarray, layers: list[int], t: int) -> float:
    """Highest sink score of key ``t`` in the attention layers after its aligned ``layers`` (l + 1)."""
    read = [l + 1 for l in layers if l + 1 < scores.shape[0]]
    return float(np.nanmax(scores[read, t])) if read else float("nan")


def level_counts(sinks: list[Sink]) -> dict[tuple[int, int], int]:
    """Number of secondary sinks per level (l_start, lifetime)."""
    counts: dict[tuple[int, int], int] = {}
    for s in sinks:
        if s.kind == "secondary":
            counts[s.level] = counts.get(s.level, 0) + 1
    return dict(sorted(counts.items()))


def token_frequencies(sinks: list[Sink]) -> list[tuple[str, int, int, float]]:
    """(token, token_id, count, share) of secondary sinks, most frequent first (paper Table 1)."""
    counts: dict[tuple[str, int], int] = {}
    for s in sinks:
        if s.kind == "secondary":
            counts[(s.token, s.token_id)] = counts.get((s.token, s.token_id), 0) + 1
    total = sum(counts.values()) or 1
    rows = [(tok, tid, n, n / total) for (tok, tid), n in counts.items()]
    return sorted(rows, key=lambda r: (-r[2], r[1]))
