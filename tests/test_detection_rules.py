"""Detection rules on hand-made observations: exact levels, thresholds, legacy rule."""

from __future__ import annotations

import numpy as np

from interventions.detection import DetectionConfig, detect_sinks, level_counts, token_frequencies
from interventions.observe import PROFILE_COLUMNS, Observation

L, T = 12, 20


def make_obs(sinks: dict[int, tuple[int, int]], *, onset=1, extra_primary=()) -> Observation:
    """Position 0 massive from ``onset``; each position p in ``sinks`` aligned on [l_start, l_start+lifetime)."""
    norm = np.ones((L, T), dtype=np.float32)
    cos = np.full((L, T), 0.1, dtype=np.float32)
    cos[:, 0] = 1.0
    norm[onset:, 0] = 100.0
    for p in extra_primary:
        norm[onset:, p], cos[onset:, p] = 80.0, 0.99
    for p, (start, life) in sinks.items():
        norm[start:start + life, p] = 30.0
        cos[start:start + life, p] = 0.97
    profiles = {name: np.ones((L, T), dtype=np.float32) for name in PROFILE_COLUMNS}
    profiles["hidden_norm"], profiles["hidden_cos"] = norm, cos
    scores = np.full((L, 2, T), 0.01, dtype=np.float32)
    return Observation(token_ids=np.arange(T), profiles=profiles, sink_scores=scores)


def test_levels_are_exact():
    obs = make_obs({5: (4, 3), 9: (4, 6), 13: (6, 2), 17: (7, 5)})
    sinks = detect_sinks(obs, tokens=[f"t{i}" for i in range(T)])
    secondary = {s.position: s.level for s in sinks if s.kind == "secondary"}
    assert secondary == {5: (4, 3), 9: (4, 6), 13: (6, 2), 17: (7, 5)}
    primary = [s for s in sinks if s.kind == "primary"]
    assert [(s.position, s.l_start) for s in primary] == [(0, 1)]
    assert level_counts(sinks) == {(4, 3): 1, (4, 6): 1, (6, 2): 1, (7, 5): 1}
    assert [s.censored for s in sinks if s.position == 17] == [True]  # 7 + 5 = 12 = L: runs to the last layer


def test_positions_aligned_at_onset_are_primary():
    obs = make_obs({8: (5, 2)}, extra_primary=(1, 2))
    kinds = {s.position: s.kind for s in detect_sinks(obs)}
    assert kinds == {0: "primary", 1: "primary", 2: "primary", 8: "secondary"}


def test_norm_and_cos_thresholds_both_needed():
    obs = make_obs({5: (4, 3)})
    obs.profiles["hidden_cos"][4:7, 5] = 0.94  # aligned direction missing
    assert [s.kind for s in detect_sinks(obs)] == ["primary"]
    obs = make_obs({5: (4, 3)})
    obs.profiles["hidden_norm"][4:7, 5] = 4.0  # 4 x median (1) < 5
    assert [s.kind for s in detect_sinks(obs)] == ["primary"]
    assert [s.kind for s in detect_sinks(obs, config=DetectionConfig(norm_ratio=3.0))] == ["primary", "secondary"]


def test_lifetime_is_the_contiguous_run_and_min_lifetime_filters():
    obs = make_obs({5: (3, 2)})
    obs.profiles["hidden_norm"][8, 5], obs.profiles["hidden_cos"][8, 5] = 30.0, 0.97  # a later, separate blip
    (sink,) = [s for s in detect_sinks(obs) if s.kind == "secondary"]
    assert (sink.l_start, sink.lifetime, sink.layers) == (3, 2, [3, 4])
    assert not [s for s in detect_sinks(obs, config=DetectionConfig(min_lifetime=3)) if s.kind == "secondary"]


def test_no_massive_first_token_means_no_primary():
    obs = make_obs({})
    obs.profiles["hidden_norm"][:, 0] = 1.0
    assert detect_sinks(obs) == []


def test_legacy_rule_uses_abs_cos_and_lifetime_window():
    obs = make_obs({5: (2, 6), 9: (2, 3)})  # L=12: secondary needs 4 < lifetime < -3 -> never
    kinds = {s.position: s.kind for s in detect_sinks(obs, config=DetectionConfig(rule="legacy"))}
    assert kinds == {0: "primary", 5: "noise", 9: "noise"}


def test_token_frequencies_rank_secondary_sinks():
    obs = make_obs({3: (4, 2), 5: (4, 2), 9: (4, 2)})
    tokens = ["a"] * T
    tokens[3] = tokens[5] = " "
    tokens[9] = "1"
    obs.token_ids[[3, 5]] = 220
    obs.token_ids[9] = 16
    rows = token_frequencies(detect_sinks(obs, tokens=tokens))
    assert rows[0][:3] == (" ", 220, 2) and abs(rows[0][3] - 2 / 3) < 1e-9
