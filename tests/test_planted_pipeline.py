"""The framework's own path (load_model -> observe -> detect -> interventions) on the planted model.

The planted model's truth is known by construction (interventions/testbed/planted.py):
onset layer 1, l_start 4, triggers " ^" " #" " @" with lifetimes 2/4/6, the sub-threshold " ~"
(a sink only when its l_start MLP output is scaled), and " &", a sink (lifetime 3) only after " $".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions import DetectionConfig, detect
from interventions.compile import Edit
from interventions.detection.rules import sink_level as first_run
from interventions.measures.compute import per_layer
from interventions.run.execute import TraceExecutor
from interventions.spec.traces import traces_from_records
from interventions.testbed.planted import planted_traces

CONFIG = DetectionConfig()


@pytest.fixture(scope="module")
def traces(planted, planted_truth):
    texts = planted_traces(planted_truth, 4, seed=0, gated=True)
    return traces_from_records([{"text": t} for t in texts], planted.tokenizer)


def expected_levels(truth, ids) -> dict[int, tuple[int, int]]:
    """Planted (l_start, lifetime) per position, from the truth's positions rule."""
    life = {t["token_id"]: t["lifetime"] for t in truth.triggers}
    gated = {g["token_id"]: (g["gate_token_id"], g["lifetime"]) for g in truth.gated}
    out = {}
    for pos in range(1, len(ids)):
        tok = ids[pos]
        if tok in life and ids[pos - 1] not in {g[0] for g in gated.values()}:
            out[pos] = (truth.l_start, life[tok])
        elif tok in gated and ids[pos - 1] == gated[tok][0]:
            out[pos] = (truth.l_start, gated[tok][1])
    return out


def test_detection_finds_exactly_the_planted_sinks(planted, planted_truth, traces):
    result = detect(planted, traces, progress=False)
    sinks = result.sinks
    for tr in traces:
        mine = sinks[sinks.trace == tr.index]
        primary = mine[mine.kind == "primary"]
        assert list(primary.position) == [0] and list(primary.l_start) == [planted_truth.onset_layer]
        found = {int(r.position): (int(r.l_start), int(r.lifetime)) for r in mine[mine.kind == "secondary"].itertuples()}
        assert found == expected_levels(planted_truth, tr.token_ids)
        sub = {s["token_id"] for s in planted_truth.sub_threshold}
        assert not any(tr.token_ids[p] in sub for p in found)
    assert set(result.traces.onset_layer) == {planted_truth.onset_layer}
    # The " &" without its gate is a same-token non-sink: the token appears both as sink and not.
    amp = next(g["token_id"] for g in planted_truth.gated)
    as_sink = sinks[(sinks.kind == "secondary") & (sinks.token_id == amp)]
    occurrences = sum(tr.token_ids.count(amp) for tr in traces)
    assert 0 < len(as_sink) < occurrences


def test_secondary_sink_score_grows_with_mlp_norm(planted, traces):
    result = detect(planted, traces, progress=False)
    sec = result.secondary()
    by_norm = sec.groupby(sec.mlp_out_norm.round(1)).peak_sink_score.mean().sort_index()
    assert len(by_norm) >= 3 and by_norm.is_monotonic_increasing


def positions_of(truth, tr, token: str) -> list[int]:
    tid = next(t["token_id"] for t in truth.triggers + truth.sub_threshold + truth.gated if t["token"] == token)
    return [p for p, i in enumerate(tr.token_ids) if i == tid and p > 0]


def test_zero_at_l_start_removes_every_sink_and_nothing_before(planted, planted_truth, traces):
    tr = traces[0]
    ex = TraceExecutor(planted, tr.token_ids, reuse_prefix=False)  # strict bit-identity needs the same shapes
    clean = ex.clean()
    sinks = sorted(expected_levels(planted_truth, tr.token_ids))
    edited = ex.intervened([Edit("zero", planted_truth.l_start, sinks, site="mlp_output")])
    fast = TraceExecutor(planted, tr.token_ids).intervened([Edit("zero", planted_truth.l_start, sinks,
                                                                  site="mlp_output")])
    for name, arr in clean.profiles.items():  # with prefix reuse: positions before the first target untouched
        assert np.array_equal(fast.profiles[name][:, :sinks[0]], arr[:, :sinks[0]]), name
    aligned = per_layer(edited, CONFIG)["is_sink"]
    assert not aligned[:, 1:].any(), "no secondary sink may survive"
    assert aligned[planted_truth.onset_layer:, 0].all(), "the primary sink is untouched"
    for name, arr in clean.profiles.items():  # layers below l_start: bit-identical everywhere
        assert np.array_equal(edited.profiles[name][:planted_truth.l_start], arr[:planted_truth.l_start]), name
        assert np.array_equal(edited.profiles[name][:, :sinks[0]], arr[:, :sinks[0]]), name  # before first target
    assert torch.equal(edited.logits[:sinks[0]], clean.logits[:sinks[0]])


def test_scaling_the_sub_threshold_token_makes_planted_sinks(planted, planted_truth, traces):
    tr = traces[1]
    sub = planted_truth.sub_threshold[0]
    (pos,) = positions_of(planted_truth, tr, sub["token"])
    ex = TraceExecutor(planted, tr.token_ids)
    lifetimes = {}
    for factor in (1.0, 2.0, 5.0, 10.0):
        edited = ex.intervened([Edit("scale", planted_truth.l_start, [pos], site="mlp_output", factor=factor)])
        ratio = edited.profiles["mlp_out_norm"][planted_truth.l_start, pos] / \
            ex.clean().profiles["mlp_out_norm"][planted_truth.l_start, pos]
        assert ratio == pytest.approx(factor, rel=1e-5)
        lifetimes[factor] = first_run(per_layer(edited, CONFIG)["is_sink"][:, pos])[1]
    assert lifetimes[1.0] == 0
    assert [lifetimes[f] for f in (2.0, 5.0, 10.0)] == [sub["lifetime_at_factor"][k] for k in ("2", "5", "10")]
    assert lifetimes[2.0] <= lifetimes[5.0] <= lifetimes[10.0]


def test_mean_swap_before_l_start_suppresses_and_after_death_changes_nothing(planted, planted_truth, traces):
    from interventions.kinds.mean_swap import site_means

    tr = traces[0]
    levels = expected_levels(planted_truth, tr.token_ids)
    gate = planted_truth.gated[0]
    gated_pos = [p for p in levels if tr.token_ids[p] == gate["token_id"]]
    assert gated_pos, "trace 0 holds a gated trigger"
    ex = TraceExecutor(planted, tr.token_ids)
    means = site_means(planted, tr.token_ids, set(levels) | {0}, ["attention_output", "block_output"])
    # The gate is read by layer 2's attention: swapping it (or the state after it) suppresses the sink.
    for site, layer in (("attention_output", gate["gate_layer"]), ("block_output", planted_truth.l_start - 1)):
        edited = ex.intervened([Edit("mean_swap", layer, gated_pos, site=site, vector=means[site][layer])])
        assert all(first_run(per_layer(edited, CONFIG)["is_sink"][:, p])[1] == 0 for p in gated_pos), site
    # After the sink's last layer, a swap of its hidden state cannot change anything about its life.
    p = gated_pos[0]
    last = planted_truth.l_start + levels[p][1] - 1
    edited = ex.intervened([Edit("mean_swap", last + 1, [p], site="block_output", vector=means["block_output"][last + 1])])
    assert first_run(per_layer(edited, CONFIG)["is_sink"][:, p]) == (planted_truth.l_start, levels[p][1])


def test_attention_mask_moves_attention_to_the_primary_sink(planted, planted_truth, traces):
    tr = traces[0]
    levels = expected_levels(planted_truth, tr.token_ids)
    ex = TraceExecutor(planted, tr.token_ids, reuse_prefix=False)
    clean = ex.clean()
    layers = range(planted_truth.l_start + 1, planted_truth.l_start + 3)
    edited = ex.intervened([Edit("attention_mask", layer, sorted(levels)) for layer in layers])
    for layer in layers:
        assert (edited.sink_scores[layer][:, sorted(levels)] == 0).all()
        # Compensation: with the secondary sinks masked, the primary sink takes more attention.
        assert edited.mean_sink_scores()[layer, 0] > clean.mean_sink_scores()[layer, 0]
    below = planted_truth.l_start + 1
    assert np.array_equal(edited.sink_scores[:below], clean.sink_scores[:below])


@pytest.mark.parametrize("source,dtype", [("testbed:planted", "bfloat16"), ("testbed:planted-llama", "float32"),
                                          ("testbed:planted-llama", "bfloat16")])
def test_same_sinks_in_bf16_and_on_the_llama_variant(cache_dir, source, dtype):
    from interventions import load_model
    from interventions.testbed.planted import load_truth

    loaded = load_model(source, dtype=dtype)
    truth = load_truth(loaded.source.path)
    texts = planted_traces(truth, 3, seed=0, gated=True)
    traces = traces_from_records([{"text": t} for t in texts], loaded.tokenizer)
    result = detect(loaded, traces, progress=False)
    for tr in traces:
        mine = result.sinks[(result.sinks.trace == tr.index) & (result.sinks.kind == "secondary")]
        assert {int(r.position): (int(r.l_start), int(r.lifetime)) for r in mine.itertuples()} == \
            expected_levels(truth, tr.token_ids)
    assert set(result.traces.onset_layer) == {truth.onset_layer}
