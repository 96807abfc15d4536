"""The ``kv_norm`` measure (one file, ``interventions/measures/kv_norm.py``) flows into effects, statistics and
run comparison with nothing else touched; a measure registered in a notebook does the same."""

from __future__ import annotations

import numpy as np
import pytest

from interventions.observation import observe_tokens
from interventions.pipeline import analyze_run, run_spec
from interventions.spec import MEASURES, Measure, Spec, register_measure
from interventions.run.job import prepare
from interventions.studies.compare_runs import compare_runs

from .conditions_helpers import PLANTED_BASE

BASE = {**PLANTED_BASE, "report": False,
        "interventions": [{"kind": "zero", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"]},
                          {"kind": "scale", "site": "mlp_output", "layer": "l_start", "factors": [2],
                           "targets": ["sinks"]}]}
STATS = ["sinks", "sink_score", "hidden", "primary_sink_score"]


@pytest.fixture(scope="module")
def kv_run(tmp_path_factory, cache_dir):
    spec = Spec.from_dict({**BASE, "name": "kv_norm_check", "measures": STATS + ["kv_norm"]})
    return run_spec(spec, results_root=tmp_path_factory.mktemp("kv"), progress=False)


def test_kv_norm_is_opt_in_and_its_columns_are_the_observed_norms(kv_run, planted, tmp_path):
    assert "kv_norm" not in Spec.from_dict({**BASE, "name": "x"}).measures
    e = kv_run.effects
    targets = e[~e.is_control.astype(bool) & (e.condition == "zero.mlp_output.l_start")]
    assert len(targets)
    trace = targets.trace.iloc[0]
    ids = prepare(Spec.from_dict({**BASE, "name": "x"}), results_root=tmp_path).traces[trace].token_ids
    clean = observe_tokens(planted, ids)
    for _, row in targets[targets.trace == trace].iterrows():
        assert row.clean_key_norm == pytest.approx(float(clean.profiles["key_norm"][row.layer, row.position]), rel=1e-5)
        assert row.clean_value_norm == pytest.approx(float(clean.profiles["value_norm"][row.layer, row.position]),
                                                     rel=1e-5)
    # zeroing the l_start MLP output leaves every layer up to the edit alone and moves the later keys
    before = targets[targets.layer <= targets.intervened_layer]
    after = targets[targets.layer > targets.intervened_layer]
    np.testing.assert_array_equal(before.key_norm.to_numpy(), before.clean_key_norm.to_numpy())
    assert (np.abs(after.key_norm - after.clean_key_norm) > 1e-3).any()


def test_kv_norm_reaches_statistics_and_run_comparison(kv_run):
    stats, _ = analyze_run(kv_run.out, progress=False, report=False)
    measured = {r["measure"] for r in stats["per_layer_effects"]}
    assert {"key_norm", "value_norm", "is_sink", "mlp_out_norm"} <= measured
    key = [r for r in stats["per_layer_effects"] if r["measure"] == "key_norm"
           and r["condition"] == "zero.mlp_output.l_start"]
    assert any(r["pre_edit"] for r in key) and any(r.get("p_adj") is not None for r in key)
    comparison = compare_runs([kv_run.out], measure="key_norm", align="condition")
    assert set(comparison.effects["condition"]) >= {"zero.mlp_output.l_start", "scale.mlp_output.l_start.x2"}
    assert comparison.effects["effect"].notna().any()


def test_a_measure_registered_in_a_notebook_flows_into_a_run(tmp_path, cache_dir):
    def attention_output(obs, config, reference):
        return {"attn_out_norm": obs.profiles["attn_out_norm"]}

    register_measure(Measure(name="attn_out", meaning="norm of the attention output", default=False,
                             layer_columns={"attn_out_norm": "||attention output|| of the target"},
                             layer_values=attention_output))
    try:
        spec = Spec.from_dict({**BASE, "name": "attn_out_check", "measures": STATS + ["attn_out"]})
        result = run_spec(spec, results_root=tmp_path, progress=False)
        assert {"attn_out_norm", "clean_attn_out_norm"} <= set(result.effects.columns)
        stats, _ = analyze_run(result.out, progress=False, report=False)
        assert "attn_out_norm" in {r["measure"] for r in stats["per_layer_effects"]}
        with pytest.raises(ValueError, match="already written by measure 'hidden'"):
            register_measure(Measure(name="again", meaning="", layer_columns={"hidden_norm": ""}))
    finally:
        MEASURES.unregister("attn_out")
    with pytest.raises(Exception, match="'attn_out' is not a known measure"):
        Spec.from_dict({**BASE, "name": "x", "measures": ["attn_out"]})
