"""Hypothesis verdicts end to end: planted truth gives "supported"; a model without sinks never does."""

from __future__ import annotations

import json

import pytest

from interventions.run import run_spec
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
