"""Hypothesis verdicts end to end: planted truth gives "supported"; a model without sinks never does."""

from __future__ import annotations

import json

import pytest
import yaml

from interventions.pipeline import analyze_run, run_spec
from interventions.spec import Spec, load_spec

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_h1_supported_on_the_planted_model(tmp_path, cache_dir):
    result = run_spec(load_spec(REPO / "specs" / "mlp_zero.yaml"), results_root=tmp_path, progress=False)
    h1 = result.stats["verdicts"]["H1"]
    assert h1["verdict"] == "supported", h1
    assert json.loads((result.out / "stats.json").read_text())["verdicts"]["H1"]["verdict"] == "supported"


def test_random_init_model_never_supports_a_hypothesis(tmp_path, cache_dir):
    from interventions.testbed.tiny import save_tiny

    save_tiny("qwen2", tmp_path / "tiny", layers=4)
    (tmp_path / "traces.jsonl").write_text("".join(
        json.dumps({"text": f"a cat and a dog ran {i} times past a big red barn"}) + "\n" for i in range(8)))
    spec = Spec.from_dict({
        "name": "random_init", "model": str(tmp_path / "tiny"), "traces": str(tmp_path / "traces.jsonl"),
        "dtype": "float32", "report": True,
        "targets": {"a": {"select": "tokens", "tokens": ["a"]}, "ctrl": {"select": "matched_controls", "match": "a"}},
        "interventions": [
            {"kind": "zero", "site": "mlp_output", "layer": 1, "targets": ["a"], "controls": "ctrl"},
            {"kind": "scale", "site": "mlp_output", "layer": 1, "targets": ["a"], "factors": [2, 5, 10],
             "controls": "ctrl"},
            {"kind": "mean_swap", "site": "block_output", "layers": [0, 1, 2], "targets": ["a"]},
            {"kind": "attention_mask", "layers": [2, 3], "targets": ["a"], "controls": "ctrl"},
        ]})
    result = run_spec(spec, results_root=tmp_path / "results", progress=False)
    verdicts = {k: v["verdict"] for k, v in result.stats["verdicts"].items()}
    assert set(verdicts) == {"H1", "H2", "H3", "H4"}
    assert "supported" not in verdicts.values(), verdicts


def test_placebo_layer_is_generated_and_kept_sinks_are_possible(tmp_path, cache_dir):
    """H1 with a generated placebo (zero the MLP at layer 2, not l_start): the same real sinks are the
    placebo arm, where they are kept; the l_start arm loses them; the verdict names both."""
    data = yaml.safe_load((REPO / "specs" / "mlp_zero.yaml").read_text())
    data.update(limit=6, report=False, hypotheses=[{
        "id": "H1", "conditions": {"kind": "zero", "site": "mlp_output", "layer": "l_start"},
        "measure": "sink_rate_change", "compare": "placebo", "placebo": {"layers": [2]}}])
    result = run_spec(Spec.from_dict(data), results_root=tmp_path, progress=False)
    h1 = analyze_run(result.out, progress=False, report=False)[0]["verdicts"]["H1"]
    assert h1["conditions"] == ["zero.mlp_output.l_start"]
    assert h1["compared_with"] == "placebo" and h1["comparison_conditions"] == ["zero.mlp_output.L2.placebo"]
    assert h1["verdict"] == "supported" and h1["effect"] == -1
    assert h1["components"][0]["comparison_mean"] == 0   # placebo sinks kept: both outcomes were possible


def test_negative_h1_with_placebo_is_not_supported(tmp_path, cache_dir):
    data = yaml.safe_load((REPO / "specs" / "mlp_zero.yaml").read_text())
    data.update(model="testbed:negative-h1", limit=6, report=False, hypotheses=[{
        "id": "H1", "conditions": {"kind": "zero", "site": "mlp_output"}, "measure": "sink_rate_change",
        "placebo": {"layers": [2]}}])
    result = run_spec(Spec.from_dict(data), results_root=tmp_path, progress=False)
    h1 = analyze_run(result.out, progress=False, report=False)[0]["verdicts"]["H1"]
    assert h1["verdict"] == "not supported" and h1["p"] is None and h1["ci"] == [None, None]


def test_tautological_swap_is_excluded(tmp_path, cache_dir):
    data = yaml.safe_load((REPO / "specs" / "mean_swap.yaml").read_text())
    data.update(limit=6, report=False, interventions=[
        {"kind": "mean_swap", "site": "block_output", "layers": "l_start", "targets": ["sinks"]}])
    result = run_spec(Spec.from_dict(data), results_root=tmp_path, progress=False)
    stats = analyze_run(result.out, progress=False, report=False)[0]
    # the edit and the noise placebo beside it leave the same tautological units (both arms alike)
    assert [t["condition"] for t in stats["tautologies"]] == ["mean_swap.block_output.l_start",
                                                              "mean_swap.block_output.l_start.noise.placebo"]
    h3 = stats["verdicts"]["H3"]
    # nothing left before l_start: no unit in either arm, so no comparison can decide it
    assert h3["verdict"] == "not testable" and h3["excluded"]


@pytest.mark.parametrize("model", ["testbed:planted", "testbed:negative-h3"])
def test_declared_suppression_trend_is_tested_not_described(tmp_path, cache_dir, model):
    """H3's "more suppression nearer l_start", declared as a measure, is a trace-level test. Planted:
    swapping the attention output at layer 2 (the gate head) suppresses, earlier layers do not, so the
    slope is positive; the whole hidden state suppresses at every layer before l_start (flat: exact
    null). negative-h3: nothing at the sink's own position matters, so no trend anywhere."""
    data = yaml.safe_load((REPO / "specs" / "mean_swap.yaml").read_text())
    data.update(model=model, limit=6, report=False, hypotheses=[{
        "id": "H3", "conditions": {"kind": "mean_swap"}, "measure": ["suppression_rate", "suppression_trend"],
        "placebo": {"edit": "noise"}}])
    result = run_spec(Spec.from_dict(data), results_root=tmp_path, progress=False)
    verdicts = analyze_run(result.out, progress=False, report=False)[0]["verdicts"]
    trend = {k: next(c for c in v["components"] if c["name"] == "suppression_trend") for k, v in verdicts.items()}
    if model == "testbed:planted":
        # a trace-level test against the noise placebo: the gate head at layer 2 gives a positive slope
        # (0.013 per layer beyond the placebo, p 0.125 on 6 traces: inconclusive); the whole hidden state
        # suppresses at every layer before l_start, so its slope is flat beyond the placebo's
        att = trend["H3/attention_output"]
        assert att["compared_with"] == "placebo" and att["p"] is not None and att["effect"] > 0
        assert att["verdict"] == "inconclusive"
        assert trend["H3/block_output"]["verdict"] != "supported" and abs(trend["H3/block_output"]["effect"]) < 0.05
        assert not any("descriptive" in n for n in verdicts["H3/block_output"]["notes"])
    else:
        assert all(t["verdict"] != "supported" for t in trend.values()), trend
