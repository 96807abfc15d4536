"""Sink detection rules: pure functions over one trace's observation.

Primary sinks (every rule)
--------------------------
A primary sink is a position carrying a *massive activation* (Sun et al. 2024) that appears early
and persists through the network. With r = hidden-state norm / the layer's median token norm:
the activation is *born* where r > ``massive_ratio`` (5) and *persists* while r >
``persist_ratio`` (2). A position is a primary sink when its persisting run reaches layer
``L - 1 - end_slack`` (``end_slack`` 1: the last decoder layer may erase it) and the run holds a
birth at a layer ``<= max_onset * L`` (0.5); the onset is the first birth layer in that run.
Primary sinks "emerge at the same layer" (the paper, Sec. 2; Sun et al.): the earliest onset
is a primary sink, and so is every other such position whose onset is at most ``onset_spread``
(2) layers later; a later-born one is a long-lived secondary sink (the planted " @", born at
layer 4 and above 2x until layer 10, beside the BOS born at layer 1). Every primary sink is
reported, wherever it is (position 0, a chat-template token, the first delimiter). A dip before the final run only moves the onset: SmolLM2 has position 0 at 9x
on layers 2-7, 1.1x on layers 9-10 and 176x from layer 11 on, so its onset is 11.

Defaults from the real models of ``tests/test_real_detection.py`` (observer norms, AIME
prefixes of 120-200 tokens; L-2 is the layer the run must reach):

=========================  ==============  ===========  =============  =====================
model                      sink            peak r       r at L-2       other tokens after
                                                                       the first 2 layers
=========================  ==============  ===========  =============  =====================
SmolLM2-135M (L=30)        position 0      185          13             <= 1.5 (" the": 9 on 2-8)
Gemma-3-270M (L=18)        ``<bos>``       26 (layer 0) 2.5            <= 1.7
Qwen2.5-Coder-1.5B (L=28)  position 0      227          4.6            <= 1.5 (first ".\n\n":
                                                                       7 on 5-10, < 2 from 22)
=========================  ==============  ===========  =============  =====================

With Qwen's chat template, the template's "\n" and "You" (positions 2-3) are born at layer 4
(32x) and still at 3x at L-2: they are kept out of the primary sinks only by ``onset_spread``
(born 3 layers after ``<|im_start|>``), and come out as secondary sinks at (4, 22). That is
the decision this rule is least sure of; ``sensitivity.csv`` and the per-sink
``hidden_norm_ratio`` show it, and ``onset_spread: 3`` makes them primary.

A single threshold cannot serve: Gemma's and Qwen's sinks end the network below 5x (the median
norm grows 300-fold through Gemma), while transient tokens reach 7-9x early on. Birth at 5x
separates massive activations from ordinary tokens (<= 2x); persistence at 2x sits between
ordinary tokens (<= 1.7x) and the weakest sink at L-2 (Gemma, 2.5x); ``end_slack`` 1 keeps out
the paper's secondary sinks (Qwen3-4B's live on layers 16-33 of 36, ending at L-3).

The reference (the state every cosine is measured against) is one primary sink: the earliest
onset, ties to the largest norm at that onset (``reference: auto``), or a fixed position
(``reference: N``). A trace without a primary sink has no reference; its cosines stay against
position 0 and it is flagged (``DetectionReport.no_primary``).

Default rule (the paper's definition, Sec. 3)
---------------------------------------------
Position t (not a primary sink) is *aligned* at layer l when cos(h_t^l, h_ref^l) >
``cos_threshold`` (0.95). No norm condition, unless ``norm_ratio`` is set: then it must also
exceed ``norm_ratio`` x the layer median (an explicit option; the norm ratio at ``l_start`` is
always reported as ``hidden_norm_ratio``). The sink's level (``l_start``, ``lifetime``) is the
**longest** run of aligned layers (ties: the earliest), so a one-layer flicker before the real
run neither sets the level nor hides it; ``first_aligned`` records the first aligned layer of
any run and ``n_aligned`` the total count.

Paper-code rule (``rule: paper-code``)
--------------------------------------
The released detector of the paper (``src/hidden_state_base.py`` of
JeffreyWong20/Secondary-Attention-Sinks, ``hidden_state_norm_detection`` and
``sink_labeling_machine``; ``../shared/notes/paper-code-rule.md``), step by step:

1. It reads ``hidden_states[1:]``: the outputs of decoder layers 0..L-2 and, for the last
   layer, the state **after the final norm** (what Hugging Face returns). So do we: the last
   row of the norm and cosine profiles is replaced by ``Observation.final_norm`` and the
   final-normed cosines (:func:`paper_code_profiles`).
2. Reference: among positions [0, 1, 2] with a chat template, [0, 1] without, the one with the
   largest norm averaged over all layers.
3. Window: d[l] = norm[l+1] - norm[l] of the reference; start = argmax(d) + 1, end =
   argmin(d[start:]) + start + 1; only layers start..end-1 are examined (when the jump is at the
   last layer, d[start:] is empty and the released code would fail; we examine layer start).
4. Every position after the reference with |cos| > 0.9 to the reference at an examined layer
   gets that layer; the list need not be contiguous; no norm condition.
5. Labels by the list length n and L: n >= L-15 ``bos_sink``; 4 < n < L-15 ``secondary``; else
   ``noise``. The reference itself is listed with the whole window. Our kinds: ``bos_sink`` ->
   ``primary``, ``secondary`` -> ``secondary``, ``noise`` -> ``noise``; ``l_start`` = first listed
   layer, ``lifetime`` = list length, ``layers`` = the list.

Tokenisation as the code: special tokens only without a chat template, which is what
:mod:`interventions.spec.traces` does by default (``prepend_bos: auto``). ``legacy`` is a deprecated
alias of ``paper-code``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from interventions.observation import Observation
from interventions.observation.observer import MASSIVE_RATIO

RULES = ("default", "paper-code", "legacy")
SENSITIVITY_COS = (0.9, 0.95, 0.98)
SENSITIVITY_NORM = (None, 5.0, 10.0)


def parse_reference(value) -> str | int:
    """``auto``, an int, or ``position N`` -> ``auto`` or N."""
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"reference position {value} is negative")
        return int(value)
    text = str(value).strip().lower()
    if text.startswith("position"):
        text = text[len("position"):].strip()
    if text.isdigit():
        return int(text)
    raise ValueError(f"reference {value!r} is not 'auto' or 'position N'")


@dataclass(frozen=True)
class DetectionConfig:
    """Thresholds of the detection rule (recorded in every manifest)."""

    cos_threshold: float = 0.95
    """Cosine to the reference primary sink's hidden state above which a state is sink-aligned."""
    norm_ratio: float | None = None
    """Optional norm gate: an aligned state must also exceed this x the layer's median norm (off by default)."""
    min_lifetime: int = 1
    """Secondary sinks whose longest aligned run is shorter are dropped."""
    rule: Literal["default", "paper-code", "legacy"] = "default"
    """``default`` (cosine > cos_threshold, longest run) or ``paper-code`` (the released detector)."""
    massive_ratio: float = MASSIVE_RATIO
    """A massive activation is born where the hidden-state norm exceeds this x the layer's median norm."""
    persist_ratio: float = 2.0
    """... and persists while it stays above this x the median."""
    reference: str | int = "auto"
    """``auto`` (the primary sink with the earliest onset, ties to the largest norm) or a position."""
    end_slack: int = 1
    """A primary sink's persisting run must reach layer L - 1 - end_slack."""
    max_onset: float = 0.5
    """... and be born at a layer <= max_onset x L ..."""
    onset_spread: int = 2
    """... and at most this many layers after the earliest primary sink's onset."""
    top_channels: int = 4
    """Massive channels (index, value) reported per primary sink."""

    def __post_init__(self):
        object.__setattr__(self, "reference", parse_reference(self.reference))
        if self.rule == "legacy":
            object.__setattr__(self, "rule", "paper-code")

    @property
    def paper_code(self) -> bool:
        return self.rule in ("paper-code", "legacy")


def deprecated_rule(rule: str) -> str:
    """Map ``legacy`` to ``paper-code`` with a warning; check the name."""
    if rule == "legacy":
        warnings.warn("rule 'legacy' is deprecated: it now means 'paper-code' (the paper's released detector)",
                      DeprecationWarning, stacklevel=2)
        return "paper-code"
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} is not one of default, paper-code")
    return rule


@dataclass
class Sink:
    """One detected sink in one trace (a row of ``sinks.jsonl``)."""

    trace: int
    position: int
    token_id: int
    token: str
    kind: str
    """``primary``, ``secondary`` or (paper-code rule only) ``noise``."""
    l_start: int
    """Secondary: first layer of the longest aligned run. Primary: the onset layer."""
    lifetime: int
    """Secondary: length of that run. Primary: layers of the massive run (onset to its end)."""
    layers: list[int] = field(default_factory=list)
    """The layers of the run (paper-code: every flagged layer)."""
    hidden_norm: float = float("nan")
    """||h|| at l_start."""
    mlp_out_norm: float = float("nan")
    """||MLP output|| at l_start: the quantity the paper says sets score and lifetime."""
    cos: float = float("nan")
    """Cosine to the reference's hidden state at l_start."""
    peak_sink_score: float = float("nan")
    """Highest head-averaged sink score over the attention layers that read the sink: a state aligned
    at layer l (output of layer l) is a key in the attention of layer l + 1, so layers
    l_start + 1 .. l_start + lifetime (the convention of ``sink_layers.parquet`` and the norm -> score fit)."""
    censored: bool = False
    """The run reaches the last layer, so the true lifetime may be longer."""
    hidden_norm_ratio: float = float("nan")
    """||h|| / median token norm at l_start (the norm condition, reported rather than gated)."""
    first_aligned: int = -1
    """First layer where the position is aligned (or massive, for a primary sink)."""
    n_aligned: int = 0
    """Aligned layers in total (all runs)."""
    reference: bool = False
    """This primary sink is the cosine reference of its trace."""
    key_norm: float = float("nan")
    """Mean key norm (over kv heads) over the sink's layers."""
    value_norm: float = float("nan")
    """Mean value norm over the sink's layers."""
    sink_score_ratio: float = float("nan")
    """Mean over the sink's layers of its sink score / the median key's sink score."""
    top_channels: list = field(default_factory=list)
    """Primary sinks: [[channel, value], ...] of the largest |h| entries at the middle of the run."""
    norm_profile: list = field(default_factory=list)
    """Primary sinks: ||h|| at every layer."""

    @property
    def level(self) -> tuple[int, int]:
        return (self.l_start, self.lifetime)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# primary sinks


@dataclass
class PrimarySink:
    position: int
    onset: int
    end: int
    """Last layer of the massive run."""
    first_massive: int
    onset_norm: float


def norm_ratios(norm: np.ndarray) -> np.ndarray:
    """[L, T]: each state's norm over the median token norm of its layer."""
    median = np.median(norm, axis=1, keepdims=True)
    return norm / np.maximum(median, 1e-30)


def find_primary_sinks(norm: np.ndarray, config: DetectionConfig = DetectionConfig()) -> list[PrimarySink]:
    """Every position whose massive activation persists to the end of the network (module docstring)."""
    L, T = norm.shape
    ratio = norm_ratios(norm)
    born = ratio > config.massive_ratio
    alive = ratio > config.persist_ratio
    last_needed = max(0, L - 1 - config.end_slack)
    out = []
    for t in np.flatnonzero(alive[last_needed]):
        col = alive[:, t]
        start, end = last_needed, last_needed
        while start > 0 and col[start - 1]:
            start -= 1
        while end + 1 < L and col[end + 1]:
            end += 1
        births = np.flatnonzero(born[start:end + 1, t])
        if not births.size:
            continue
        onset = start + int(births[0])
        if onset > config.max_onset * L:
            continue
        out.append(PrimarySink(position=int(t), onset=onset, end=end, first_massive=int(np.flatnonzero(born[:, t])[0]),
                               onset_norm=float(norm[onset, t])))
    if out:
        first = min(p.onset for p in out)
        out = [p for p in out if p.onset <= first + config.onset_spread]
    return out


def choose_reference(primaries: list[PrimarySink], config: DetectionConfig = DetectionConfig(),
                     available=None) -> int | None:
    """The reference position: fixed by ``config.reference``, else the earliest onset (ties: largest
    norm at the onset, then the lowest position) among ``available`` positions (those whose cosines
    were tracked)."""
    if config.reference != "auto":
        return int(config.reference)
    pool = [p for p in primaries if available is None or p.position in available]
    if not pool:
        return None
    return min(pool, key=lambda p: (p.onset, -p.onset_norm, p.position)).position


# --------------------------------------------------------------------------------------------
# alignment and levels


def aligned_layers(obs: Observation, config: DetectionConfig) -> np.ndarray:
    """Boolean [L, T]: where each position's hidden state counts as sink-aligned (no primary exclusion)."""
    if config.paper_code:
        _, cos = paper_code_profiles(obs)
        return np.nan_to_num(np.abs(cos), nan=0.0) > 0.9
    return _aligned(obs.profiles["hidden_norm"], obs.profiles["hidden_cos"], config.cos_threshold, config.norm_ratio)


def _aligned(norm: np.ndarray, cos: np.ndarray, cos_threshold: float, norm_ratio: float | None) -> np.ndarray:
    aligned = np.nan_to_num(cos, nan=-1.0) > cos_threshold
    if norm_ratio is not None:
        aligned &= norm_ratios(norm) > norm_ratio
    return aligned


def sink_level(column: np.ndarray) -> tuple[int, int]:
    """A secondary sink's level ``(l_start, lifetime)`` from its aligned-layer column: the longest run of True
    (ties: the earliest); ``(-1, 0)`` when none.

    The one definition of a level: detection, target selection and every effects measure
    (``l_start``/``lifetime`` and their ``clean_`` twins in ``effects.parquet``) call it, so a token whose
    cosine flickers above the threshold before its main run gets the same level everywhere.
    """
    best = (-1, 0)
    start = None
    for i, v in enumerate(list(column) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best[1]:
                best = (start, i - start)
            start = None
    return best


def onset_layer(obs: Observation, config: DetectionConfig = DetectionConfig()) -> int | None:
    """Onset of the reference primary sink of this trace, or None when it has none."""
    primaries = find_primary_sinks(obs.profiles["hidden_norm"], config)
    ref = choose_reference(primaries, config, available=set(obs.candidates) or None)
    return next((p.onset for p in primaries if p.position == ref), None)


# --------------------------------------------------------------------------------------------
# detection


def _primary_sink(obs: Observation, p: PrimarySink, *, trace: int, tokens, config: DetectionConfig,
                  is_reference: bool, scores: np.ndarray) -> Sink:
    norm = obs.profiles["hidden_norm"]
    L = norm.shape[0]
    layers = list(range(p.onset, p.end + 1))
    t = p.position
    channels = []
    vectors = obs.candidate_vectors.get(t)
    if vectors is not None and config.top_channels > 0:
        mid = (p.onset + p.end) // 2
        h = vectors["hidden"][mid].float().numpy()
        if np.isfinite(h).all():
            top = np.argsort(-np.abs(h))[:config.top_channels]
            channels = [[int(i), float(h[i])] for i in top]
    return Sink(trace=trace, position=t, token_id=int(obs.token_ids[t]), token=tokens[t] if tokens else "",
                kind="primary", l_start=p.onset, lifetime=len(layers), layers=layers,
                hidden_norm=float(norm[p.onset, t]), mlp_out_norm=float(obs.profiles["mlp_out_norm"][p.onset, t]),
                cos=float(obs.profiles["hidden_cos"][p.onset, t]) if is_reference else float("nan"),
                peak_sink_score=_peak_score(scores, layers, t),
                censored=p.end == L - 1, hidden_norm_ratio=float(norm_ratios(norm)[p.onset, t]),
                first_aligned=p.first_massive, n_aligned=int((norm_ratios(norm)[:, t] > config.massive_ratio).sum()),
                reference=is_reference, **_kv_and_score(obs, t, layers, scores),
                top_channels=channels, norm_profile=[float(x) for x in norm[:, t]])


def _kv_and_score(obs: Observation, t: int, layers: list[int], scores: np.ndarray) -> dict:
    if not layers:
        return {}
    med = np.nanmedian(scores[layers], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = scores[layers, t] / med
    return {"key_norm": float(np.nanmean(obs.profiles["key_norm"][layers, t])),
            "value_norm": float(np.nanmean(obs.profiles["value_norm"][layers, t])),
            "sink_score_ratio": float(np.nanmean(ratio)) if np.isfinite(ratio).any() else float("nan")}


@dataclass
class TraceDetection:
    """Everything detection decided about one trace."""

    sinks: list[Sink]
    reference: int | None
    onset: int | None
    primaries: list[int]
    warnings: list[str] = field(default_factory=list)

    @property
    def no_primary(self) -> bool:
        return not self.primaries


def detect_trace(obs: Observation, *, trace: int = 0, tokens: list[str] | None = None,
                 config: DetectionConfig = DetectionConfig(), chat_template: bool = False) -> TraceDetection:
    """Primary and secondary sinks of one trace, the reference chosen, and any warning.

    Selects the reference's cosines in ``obs`` (:meth:`Observation.select_reference`).
    """
    if config.paper_code:
        return _detect_paper_code(obs, trace=trace, tokens=tokens, chat_template=chat_template)
    norm = obs.profiles["hidden_norm"]
    L, T = norm.shape
    scores = obs.mean_sink_scores()
    primaries = find_primary_sinks(norm, config)
    notes = []
    tracked = set(obs.candidates) if obs.candidates else None
    ref = choose_reference(primaries, config, available=tracked)
    if config.reference == "auto" and primaries and tracked is not None:
        untracked = [p.position for p in primaries if p.position not in tracked]
        if untracked:
            notes.append(f"trace {trace}: primary sinks {untracked} had no tracked cosines "
                         f"({obs.dropped_candidates} massive positions over the candidate cap)")
    if ref is not None and ref != obs.reference_position:
        obs.select_reference(ref)
    if not primaries:
        notes.append(f"trace {trace}: no primary sink (no position born above {config.massive_ratio:g}x the "
                     f"layer median norm stays above {config.persist_ratio:g}x through layer "
                     f"{L - 1 - config.end_slack}); its secondary sinks are not searched")
    sinks = [_primary_sink(obs, p, trace=trace, tokens=tokens, config=config, is_reference=p.position == ref,
                           scores=scores) for p in primaries]
    onset = next((p.onset for p in primaries if p.position == ref), None)
    if primaries or ref is not None:
        aligned = _aligned(norm, obs.profiles["hidden_cos"], config.cos_threshold, config.norm_ratio)
        primary_positions = {p.position for p in primaries} | ({ref} if ref is not None else set())
        ratios = norm_ratios(norm)
        for t in range(T):
            if t in primary_positions:
                continue
            hits = np.flatnonzero(aligned[:, t])
            if not hits.size:
                continue
            start, lifetime = sink_level(aligned[:, t])
            if lifetime < config.min_lifetime:
                continue
            layers = list(range(start, start + lifetime))
            sinks.append(Sink(
                trace=trace, position=t, token_id=int(obs.token_ids[t]), token=tokens[t] if tokens else "",
                kind="secondary", l_start=start, lifetime=lifetime, layers=layers,
                hidden_norm=float(norm[start, t]), mlp_out_norm=float(obs.profiles["mlp_out_norm"][start, t]),
                cos=float(obs.profiles["hidden_cos"][start, t]),
                peak_sink_score=_peak_score(scores, layers, t), censored=layers[-1] == L - 1,
                hidden_norm_ratio=float(ratios[start, t]), first_aligned=int(hits[0]), n_aligned=int(hits.size),
                **_kv_and_score(obs, t, layers, scores)))
    sinks.sort(key=lambda s: s.position)
    return TraceDetection(sinks=sinks, reference=ref, onset=onset, primaries=[p.position for p in primaries],
                          warnings=notes)


def detect_sinks(obs: Observation, *, trace: int = 0, tokens: list[str] | None = None,
                 config: DetectionConfig = DetectionConfig(), chat_template: bool = False) -> list[Sink]:
    """Primary and secondary sinks of one trace, ordered by position (see :func:`detect_trace`)."""
    return detect_trace(obs, trace=trace, tokens=tokens, config=config, chat_template=chat_template).sinks


# --------------------------------------------------------------------------------------------
# the paper's released rule


def paper_code_profiles(obs: Observation) -> tuple[np.ndarray, np.ndarray]:
    """(norm, cos) [L, T] as the released code sees them: the last layer after the final norm."""
    norm = obs.profiles["hidden_norm"].copy()
    cos = obs.profiles["hidden_cos"].copy()
    if obs.final_norm is not None:
        norm[-1] = obs.final_norm
    if obs.final_cos is not None:
        cos[-1] = obs.final_cos
    return norm, cos


def paper_code_window(ref_norm: np.ndarray) -> tuple[int, int]:
    """(start, end): the released code's "sink clipper" on the reference's norm profile; layers start..end-1."""
    d = np.diff(np.asarray(ref_norm, dtype=np.float64))
    if d.size == 0:
        return 0, len(ref_norm)
    start = int(np.argmax(d)) + 1
    rest = d[start:]
    end = (int(np.argmin(rest)) + start + 1) if rest.size else start + 1
    return start, end


def paper_code_label(n_layers_flagged: int, n_layers: int) -> str:
    """``sink_labeling_machine``: bos_sink / secondary / noise from the number of flagged layers and L."""
    if n_layers_flagged >= n_layers - 15:
        return "bos_sink"
    if 4 < n_layers_flagged < n_layers - 15:
        return "secondary"
    return "noise"


PAPER_KIND = {"bos_sink": "primary", "secondary": "secondary", "noise": "noise"}


def paper_code_reference(norm: np.ndarray, chat_template: bool) -> int:
    """Among [0, 1, 2] (chat template) or [0, 1], the position with the largest mean norm over layers."""
    cands = [p for p in ((0, 1, 2) if chat_template else (0, 1)) if p < norm.shape[1]]
    return max(cands, key=lambda p: (float(np.mean(norm[:, p])), -p))


def paper_code_flags(norm: np.ndarray, cos: np.ndarray, *, chat_template: bool) -> tuple[int, tuple[int, int], dict]:
    """(reference, window, {position: flagged layers}) exactly as the released code builds its sink map."""
    ref = paper_code_reference(norm, chat_template)
    start, end = paper_code_window(norm[:, ref])
    flagged: dict[int, list[int]] = {ref: list(range(start, end))}
    absolute = np.nan_to_num(np.abs(cos), nan=0.0) > 0.9
    for layer in range(start, min(end, norm.shape[0])):
        for t in np.flatnonzero(absolute[layer, ref + 1:]) + ref + 1:
            flagged.setdefault(int(t), []).append(layer)
    return ref, (start, end), flagged


def _detect_paper_code(obs: Observation, *, trace: int, tokens, chat_template: bool) -> TraceDetection:
    raw_norm = obs.profiles["hidden_norm"]
    L = raw_norm.shape[0]
    # Cosines against every candidate reference are in the observation; pick the code's reference first.
    norm, _ = paper_code_profiles(obs)
    ref = paper_code_reference(norm, chat_template)
    if ref != obs.reference_position:
        obs.select_reference(ref)
    norm, cos = paper_code_profiles(obs)
    ref, (start, end), flagged = paper_code_flags(norm, cos, chat_template=chat_template)
    scores = obs.mean_sink_scores()
    sinks = []
    for t in sorted(flagged):
        layers = flagged[t]
        label = paper_code_label(len(layers), L)
        span = [x for x in layers if x < L] or [min(start, L - 1)]
        sinks.append(Sink(trace=trace, position=t, token_id=int(obs.token_ids[t]), token=tokens[t] if tokens else "",
                          kind=PAPER_KIND[label], l_start=layers[0] if layers else start, lifetime=len(layers),
                          layers=layers, hidden_norm=float(raw_norm[span[0], t]),
                          mlp_out_norm=float(obs.profiles["mlp_out_norm"][span[0], t]),
                          cos=float(cos[span[0], t]), peak_sink_score=_peak_score(scores, span, t),
                          censored=bool(layers) and layers[-1] == L - 1,
                          hidden_norm_ratio=float(norm_ratios(raw_norm)[span[0], t]),
                          first_aligned=layers[0] if layers else -1, n_aligned=len(layers), reference=t == ref,
                          **_kv_and_score(obs, t, span, scores)))
    return TraceDetection(sinks=sinks, reference=ref, onset=start, primaries=[s.position for s in sinks
                                                                                 if s.kind == "primary"])


# --------------------------------------------------------------------------------------------
# threshold sensitivity


def sensitivity_rows(obs: Observation, detection: TraceDetection, *, trace: int = 0,
                     cos_values=SENSITIVITY_COS, norm_values=SENSITIVITY_NORM, min_lifetime: int = 1) -> list[dict]:
    """Secondary sinks of one trace under every (cosine threshold, norm gate) pair, against the
    reference ``detection`` chose: one row per (cos, norm gate, level) with its count, plus a row
    with level (-1, 0) and count 0 where a setting finds nothing (so every setting appears)."""
    norm, cos = obs.profiles["hidden_norm"], obs.profiles["hidden_cos"]
    excluded = set(detection.primaries) | ({detection.reference} if detection.reference is not None else set())
    rows = []
    for c in cos_values:
        for g in norm_values:
            aligned = _aligned(norm, cos, c, g) if detection.reference is not None else np.zeros_like(norm, bool)
            counts: dict[tuple[int, int], int] = {}
            for t in range(norm.shape[1]):
                if t in excluded:
                    continue
                start, life = sink_level(aligned[:, t])
                if life >= min_lifetime:
                    counts[(start, life)] = counts.get((start, life), 0) + 1
            gate = "off" if g is None else f"{g:g}x"
            if not counts:
                rows.append({"trace": trace, "cos_threshold": c, "norm_gate": gate, "l_start": -1, "lifetime": 0,
                             "count": 0})
            for (start, life), n in sorted(counts.items()):
                rows.append({"trace": trace, "cos_threshold": c, "norm_gate": gate, "l_start": start,
                             "lifetime": life, "count": n})
    return rows


def sensitivity_table(rows: list[dict]):
    """Levels and counts per setting, summed over traces (the ``sensitivity.csv`` table)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["trace", "cos_threshold", "norm_gate", "l_start", "lifetime", "count"])
    if frame.empty:
        return frame.drop(columns="trace")
    table = frame.groupby(["cos_threshold", "norm_gate", "l_start", "lifetime"], as_index=False, sort=False)["count"].sum()
    found = table[table["count"] > 0]
    empty = table[(table["count"] == 0)]
    empty = empty[~empty.set_index(["cos_threshold", "norm_gate"]).index.isin(
        found.set_index(["cos_threshold", "norm_gate"]).index)].drop_duplicates(["cos_threshold", "norm_gate"])
    out = pd.concat([found, empty]).reset_index(drop=True)
    order = {"off": 0, **{f"{g:g}x": i + 1 for i, g in enumerate(x for x in SENSITIVITY_NORM if x is not None)}}
    out["_g"] = out["norm_gate"].map(lambda g: order.get(g, 99))
    return out.sort_values(["cos_threshold", "_g", "l_start", "lifetime"]).drop(columns="_g").reset_index(drop=True)


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


__all__ = ["DetectionConfig", "Sink", "TraceDetection", "aligned_layers", "choose_reference", "detect_sinks",
           "detect_trace", "find_primary_sinks", "level_counts", "sink_level", "onset_layer", "paper_code_flags",
           "paper_code_label", "paper_code_window", "sensitivity_rows", "sensitivity_table", "token_frequencies"]
