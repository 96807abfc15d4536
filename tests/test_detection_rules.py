"""Detection rules on hand-made observations: primary sinks by massive activation, the reference
choice, exact secondary levels (longest run, flickers), the optional norm gate, the sensitivity
table, and the paper's released rule (window, labels, reference files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from interventions.detection.rules import (
    DetectionConfig,
    detect_sinks,
    detect_trace,
    find_primary_sinks,
    level_counts,
    sink_level,
    paper_code_flags,
    paper_code_label,
    paper_code_window,
    sensitivity_rows,
    sensitivity_table,
    token_frequencies,
)
from interventions.observation import PROFILE_COLUMNS, Observation

from .conftest import REPO

L, T = 12, 20
SHARED = REPO.parent / "shared" / "data" / "secondary-sinks-paper"


def make_obs(sinks: dict[int, tuple[int, int]], *, onset=1, extra_primary=(), reference=0, ref_massive=True
             ) -> Observation:
    """``reference`` massive from ``onset``; each position p in ``sinks`` aligned with it on [l_start, l_start+lifetime).

    Cosines are kept against every candidate position, as the observer keeps them: against the
    reference as planted, against any other candidate 0.1 everywhere (1 with itself).
    """
    norm = np.ones((L, T), dtype=np.float32)
    cos = np.full((L, T), 0.1, dtype=np.float32)
    cos[:, reference] = 1.0
    if ref_massive:
        norm[onset:, reference] = 100.0
    for p in extra_primary:
        norm[onset:, p], cos[onset:, p] = 80.0, 0.99
    for p, (start, life) in sinks.items():
        norm[start:start + life, p] = 30.0
        cos[start:start + life, p] = 0.97
    profiles = {name: np.ones((L, T), dtype=np.float32) for name in PROFILE_COLUMNS}
    profiles["hidden_norm"], profiles["hidden_cos"] = norm, cos
    scores = np.full((L, 2, T), 0.01, dtype=np.float32)
    scores[:, :, reference] = 0.5
    candidates = {}
    for c in {0, 1, 2, reference, *extra_primary}:
        other = np.full((L, T), 0.1, dtype=np.float32)
        other[:, c] = 1.0
        cc = cos if c == reference else other
        candidates[c] = {"hidden_cos": cc, "mlp_in_cos": cc, "mlp_out_cos": cc, "since": 0}
    obs = Observation(token_ids=np.arange(T), profiles=profiles, sink_scores=scores, candidates=candidates,
                      reference_position=None)
    obs.select_reference(0)
    return obs


def test_levels_are_exact():
    obs = make_obs({5: (4, 3), 9: (4, 6), 13: (6, 2), 17: (7, 5)})
    sinks = detect_sinks(obs, tokens=[f"t{i}" for i in range(T)])
    secondary = {s.position: s.level for s in sinks if s.kind == "secondary"}
    assert secondary == {5: (4, 3), 9: (4, 6), 13: (6, 2), 17: (7, 5)}
    primary = [s for s in sinks if s.kind == "primary"]
    assert [(s.position, s.l_start, s.reference) for s in primary] == [(0, 1, True)]
    assert primary[0].sink_score_ratio == pytest.approx(50.0)
    assert len(primary[0].norm_profile) == L
    assert level_counts(sinks) == {(4, 3): 1, (4, 6): 1, (6, 2): 1, (7, 5): 1}
    assert [s.censored for s in sinks if s.position == 17] == [True]  # 7 + 5 = 12 = L: runs to the last layer


def test_every_massive_position_is_a_primary_sink_and_none_is_secondary():
    obs = make_obs({8: (5, 2)}, extra_primary=(1, 2))
    kinds = {s.position: s.kind for s in detect_sinks(obs)}
    assert kinds == {0: "primary", 1: "primary", 2: "primary", 8: "secondary"}


def test_primary_sink_where_the_massive_activation_is_not_at_position_zero():
    """Position 0 is ordinary (a BOS the model never saw there); the first delimiter at 7 is massive."""
    obs = make_obs({12: (6, 3)}, reference=7, onset=3)
    found = detect_trace(obs, tokens=[f"t{i}" for i in range(T)])
    assert found.primaries == [7] and found.reference == 7 and found.onset == 3
    assert obs.reference_position == 7  # the cosine columns now hold the cosines against position 7
    assert {s.position: (s.kind, s.level) for s in found.sinks} == {7: ("primary", (3, 9)), 12: ("secondary", (6, 3))}


def test_reference_is_the_earliest_onset_ties_to_the_largest_norm_and_can_be_fixed():
    norm = np.ones((L, T), dtype=np.float32)
    norm[4:, 3] = 200.0  # onset 4
    norm[2:, 9] = 50.0  # onset 2: earliest
    norm[2:, 11] = 60.0  # onset 2 and larger: the reference
    obs = make_obs({}, ref_massive=False)
    obs.profiles["hidden_norm"] = norm
    for c in (3, 9, 11):
        obs.candidates[c] = dict(obs.candidates[1])
    found = detect_trace(obs)
    assert found.primaries == [3, 9, 11] and found.reference == 11 and found.onset == 2
    fixed = detect_trace(obs, config=DetectionConfig(reference="position 3"))
    assert fixed.reference == 3 and fixed.onset == 4
    assert DetectionConfig(reference=5).reference == 5
    with pytest.raises(ValueError):
        DetectionConfig(reference="first")


def test_primary_onset_is_the_start_of_the_run_that_reaches_the_end():
    """SmolLM2's profile: 9x on layers 2-7, 1.1x on 8-10, 176x from 11; the last layer drops (end_slack)."""
    ratio = np.array([1.3, 2.6, 9.2, 8.5, 8.0, 7.3, 6.9, 6.4, 4.7, 1.1, 1.1] + [176.0] * 18 + [1.0])
    norm = np.ones((30, 4), dtype=np.float32)
    norm[:, 0] = ratio
    (p,) = find_primary_sinks(norm)
    assert (p.position, p.onset, p.end, p.first_massive) == (0, 11, 28, 2)
    assert find_primary_sinks(norm, DetectionConfig(end_slack=0)) == []  # layer 29 is at 1.0x
    # Gemma-3-270M's <bos>: born at 26x, falls below 5x at layer 14 but stays above 2x through L-2.
    gemma = np.ones((18, 10), dtype=np.float32)
    gemma[:, 0] = [25.7, 5.05, 5.15, 7.3, 12.1, 12.8, 16.5, 13.1, 15.3, 14.1, 9.7, 8.9, 7.3, 5.5, 4.85, 4.1, 2.46, 1.78]
    gemma[3:12, 2] = 7.0  # a transient high-norm token (Qwen's first ".\n\n"): dies before the end
    gemma[12:17, 2] = 1.5
    (g,) = find_primary_sinks(gemma)
    assert (g.position, g.onset, g.end) == (0, 0, 16)
    assert find_primary_sinks(gemma, DetectionConfig(persist_ratio=3.0)) == []
    late_born = gemma.copy()
    late_born[4:17, 5] = 30.0  # born at layer 4, persists to the end: 4 > 0 + onset_spread
    assert [q.position for q in find_primary_sinks(late_born)] == [0]
    assert [q.position for q in find_primary_sinks(late_born, DetectionConfig(onset_spread=4))] == [0, 5]
    late = np.ones((30, 4), dtype=np.float32)
    late[16:29, 1] = 50.0  # starts after max_onset * L = 15: a long-lived secondary sink, not a primary one
    assert find_primary_sinks(late) == []
    assert [q.position for q in find_primary_sinks(late, DetectionConfig(max_onset=0.6))] == [1]


def test_no_primary_sink_is_reported_not_silent():
    obs = make_obs({5: (4, 3)}, ref_massive=False)
    found = detect_trace(obs, trace=3)
    assert found.no_primary and found.reference is None and found.sinks == []
    assert "trace 3: no primary sink" in found.warnings[0]


def test_cosine_alone_by_default_norm_gate_as_an_option():
    obs = make_obs({5: (4, 3)})
    obs.profiles["hidden_cos"][4:7, 5] = 0.94  # aligned direction missing
    assert [s.kind for s in detect_sinks(obs)] == ["primary"]
    obs = make_obs({5: (4, 3)})
    obs.profiles["hidden_norm"][4:7, 5] = 4.0  # 4 x median (1): no gate by default
    (sec,) = [s for s in detect_sinks(obs) if s.kind == "secondary"]
    assert sec.level == (4, 3) and sec.hidden_norm_ratio == pytest.approx(4.0)
    assert [s.kind for s in detect_sinks(obs, config=DetectionConfig(norm_ratio=5.0))] == ["primary"]
    assert [s.kind for s in detect_sinks(obs, config=DetectionConfig(norm_ratio=3.0))] == ["primary", "secondary"]


def test_level_is_the_longest_run_and_a_flicker_is_recorded_not_used():
    obs = make_obs({5: (5, 4)})
    obs.profiles["hidden_cos"][2, 5] = 0.97  # a one-layer flicker before the real run
    obs.profiles["hidden_cos"][10, 5] = 0.97  # and one after it
    (sink,) = [s for s in detect_sinks(obs) if s.kind == "secondary"]
    assert sink.level == (5, 4) and sink.first_aligned == 2 and sink.n_aligned == 6
    assert sink.layers == [5, 6, 7, 8]
    assert sink_level(np.array([1, 1, 0, 1, 1, 0], bool)) == (0, 2)  # ties: the earliest
    assert sink_level(np.zeros(4, bool)) == (-1, 0)
    assert not [s for s in detect_sinks(obs, config=DetectionConfig(min_lifetime=5)) if s.kind == "secondary"]


def test_sensitivity_table_covers_every_setting():
    obs = make_obs({5: (4, 3), 9: (4, 6)})
    obs.profiles["hidden_cos"][4:7, 5] = 0.96  # above 0.95, below 0.98
    obs.profiles["hidden_norm"][4:10, 9] = 7.0  # passes the 5x gate, not the 10x one
    found = detect_trace(obs)
    table = sensitivity_table(sensitivity_rows(obs, found))
    got = {(r.cos_threshold, r.norm_gate): [] for r in table.itertuples()}
    for r in table.itertuples():
        if r.count:
            got[(r.cos_threshold, r.norm_gate)].append((r.l_start, r.lifetime, r.count))
    assert len(got) == 9
    assert got[(0.95, "off")] == [(4, 3, 1), (4, 6, 1)]
    assert got[(0.98, "off")] == []  # 0.96 and 0.97 both fail 0.98
    assert got[(0.9, "5x")] == [(4, 3, 1), (4, 6, 1)]
    assert got[(0.9, "10x")] == [(4, 3, 1)]


def test_token_frequencies():
    obs = make_obs({3: (4, 2), 5: (4, 2), 9: (4, 2)})
    tokens = [f"t{i}" for i in range(T)]
    tokens[3] = tokens[5] = " "
    obs.token_ids[5] = 3
    rows = token_frequencies(detect_sinks(obs, tokens=tokens))
    assert rows[0][0] == " " and rows[0][2] == 2 and rows[0][3] == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------
# the paper's released rule


def test_paper_code_window_from_the_norm_jump_and_drop():
    norm = np.array([5, 6, 300, 310, 305, 150, 300, 290, 20, 15], dtype=float)
    # largest rise 6 -> 300 (d[1]), so start = 2; largest fall after it is 290 -> 20 (d[7]), end = 8
    assert paper_code_window(norm) == (2, 8)
    assert paper_code_window(np.array([1.0, 1.0, 9.0])) == (2, 3)  # jump at the last layer: only layer 2


@pytest.mark.parametrize("n,L,label", [(21, 36, "bos_sink"), (20, 36, "secondary"), (5, 36, "secondary"),
                                       (4, 36, "noise"), (33, 48, "bos_sink"), (32, 48, "secondary"),
                                       (3, 12, "bos_sink"), (0, 12, "bos_sink"), (0, 20, "noise")])
def test_paper_code_labels_by_layer_count_against_L_minus_15(n, L, label):
    assert paper_code_label(n, L) == label


def test_paper_code_flags_abs_cos_inside_the_window_after_the_reference_only():
    Ls, Ts = 10, 8
    norm = np.ones((Ls, Ts))
    norm[:, 1] = [5, 6, 300, 310, 305, 300, 300, 290, 20, 15]  # reference: largest mean norm of [0, 1]
    cos = np.zeros((Ls, Ts))
    cos[:, 0] = 0.95  # before the reference: never flagged
    cos[[2, 3, 5, 6, 7], 4] = [0.95, -0.95, 0.95, 0.95, 0.95]  # |cos|, non-contiguous
    cos[[0, 1, 8, 9], 6] = 0.99  # outside the window [2, 8)
    ref, window, flags = paper_code_flags(norm, cos, chat_template=False)
    assert ref == 1 and window == (2, 8)
    assert flags == {1: [2, 3, 4, 5, 6, 7], 4: [2, 3, 5, 6, 7]}
    ref3, _, _ = paper_code_flags(np.c_[norm, norm[:, 1] * 2][:, [0, 1, 8, 3, 4, 5, 6, 7]], cos, chat_template=True)
    assert ref3 == 2  # with a chat template position 2 is a candidate too


def test_paper_code_rule_on_an_observation():
    obs = make_obs({5: (4, 3), 9: (2, 9)}, onset=1)
    obs.profiles["hidden_norm"][-1, 0] = 2.0  # the drop at the last layer
    obs.final_norm = obs.profiles["hidden_norm"][-1].copy()
    sinks = detect_sinks(obs, config=DetectionConfig(rule="paper-code"))
    # window: jump 1 -> 100 at layer 1, drop at layer 11: layers 1..10 (10 layers); L = 12, L - 15 < 0
    by = {s.position: (s.kind, s.layers) for s in sinks}
    assert by[0] == ("primary", list(range(1, 11)))
    assert by[5] == ("primary", [4, 5, 6]) and by[9] == ("primary", list(range(2, 11)))  # L=12: every list is bos_sink
    assert DetectionConfig(rule="legacy").rule == "paper-code"


def _reference_files():
    return {"sink_detection_qwen3-4b-base.jsonl": 36, "sink_detection_deepseek-r1-distill-qwen-14b.jsonl": 48}


def test_paper_code_labels_reproduce_every_label_of_the_shared_reference_files():
    """Every entry's label follows from its layer list and L (DeepSeek's ``cliff`` counts as the code's
    ``secondary``). Agreement, 100% required: 2 files, every entry of every sample."""
    total, agree = 0, 0
    for name, n_layers in _reference_files().items():
        path = SHARED / name
        if not path.is_file():
            pytest.skip(f"shared reference file {path} not found")
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            for pos, info in rec["candidate_sinks"].items():
                if not isinstance(info, dict):
                    continue
                expected = "secondary" if info["sink_type"] == "cliff" else info["sink_type"]
                total += 1
                agree += paper_code_label(len(info["layer"]), n_layers) == expected
    assert total > 0
    print(f"paper-code label agreement: {agree}/{total}")
    assert agree == total


def test_shared_reference_windows_are_contiguous_from_the_reference():
    """The reference itself is listed with exactly its window (start..end-1), as the code writes it."""
    path = SHARED / "sink_detection_qwen3-4b-base.jsonl"
    if not path.is_file():
        pytest.skip(f"shared reference file {path} not found")
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        ref = rec["candidate_sinks"]["0"]["layer"]
        assert ref == list(range(ref[0], ref[-1] + 1)) == list(range(6, 35))


def test_compare_recomputes_the_reference_labels_with_the_paper_code():
    from interventions.studies.compare import label_agreement, read_reference

    for name, n_layers in _reference_files().items():
        path = SHARED / name
        if not path.is_file():
            pytest.skip(f"shared reference file {path} not found")
        ref = read_reference(path, model_layers=n_layers)
        agreement = label_agreement(ref)
        assert agreement["n"] == len(ref) and agreement["share"] == 1.0
        assert (ref["lifetime"] == ref["n_layers"]).all()  # the code's count, not the contiguous run


def test_effects_rows_read_the_level_detection_reads_for_a_flickering_sink():
    """A token aligned at layer 1 alone, then 4-7 (a flicker before its main run, as the '.' of Qwen2.5-Coder's
    system prompt at layers 4 and 16-21): effects rows say (4, 4) like detection, not the first run (1, 1)."""
    from interventions.measures.compute import target_rows

    L, T, pos = 10, 3, 2
    aligned = np.zeros((L, T), bool)
    aligned[1, pos] = True
    aligned[4:8, pos] = True
    zeros = np.zeros((L, T))
    table = {"is_sink": aligned, "hidden_norm": zeros, "hidden_cos": zeros, "mlp_out_norm": zeros,
             "sink_score": zeros, "primary_sink_score": zeros}
    rows = target_rows(clean=table, edited=table, positions={}, position=pos, ref_layer=None, base={},
                       measures=["sinks", "hidden", "sink_score", "primary_sink_score"])
    assert (rows[0]["clean_l_start"], rows[0]["clean_lifetime"]) == (4, 4) == sink_level(aligned[:, pos])
    assert (rows[0]["l_start"], rows[0]["lifetime"]) == (4, 4)
