"""`intervene reproduce`: the paper on one model in one command (interventions/studies/reproduce.py).

The planted model must show every planted fact (levels, the layer-4 MLP origin, the swap timeline,
H1-H4 as the testbed states them); SmolLM2 (skipped without .cache/real) runs the small CI version.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from interventions.errors import UserError
from interventions.studies.reproduce import independent_units, measure_reproduce, prefix_keys, reproduce, shared_prefix_length

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = REPO / ".cache" / "real" / "smollm2-135m-instruct"
TRACES = REPO.parent / "shared" / "data" / "secondary-sinks-paper" / "aime24_traces_deepseek-r1-distill-qwen-14b.jsonl"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted_study(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "planted"
    result = reproduce("testbed:planted", out=out, max_traces=6, max_tokens=None, progress=False, run_reports=False)
    return result, measure_reproduce(result)


# --------------------------------------------------------------------------------------------
# independent units (pure functions)


def test_templated_sinks_count_once():
    """Three traces share a 4-token template holding a sink at position 2: one measurement, not
    three; sinks in the traces' own text are one each."""
    ids = {0: [1, 5, 6, 7, 10, 11], 1: [1, 5, 6, 7, 20, 21], 2: [1, 5, 6, 7, 30, 31]}
    keys = prefix_keys(ids)
    assert shared_prefix_length(ids) == 4
    templated = pd.DataFrame({"trace": [0, 1, 2], "position": [2, 2, 2]})
    u = independent_units(templated, keys)
    assert (u["n_positions"], u["n_independent"], u["n_traces"], u["n_traces_own_text"], u["effective_units"]) == \
        (3, 1, 3, 0, 1)
    own = pd.DataFrame({"trace": [0, 1, 2, 2], "position": [2, 4, 5, 2]})
    u = independent_units(own, keys)
    assert (u["n_positions"], u["n_independent"], u["n_traces"], u["n_traces_own_text"], u["effective_units"]) == \
        (4, 3, 3, 2, 3)


# --------------------------------------------------------------------------------------------
# the planted model: every planted fact


def test_planted_detection_and_origin(planted_study):
    result, m = planted_study
    assert m["layers"] == 12 and m["primary_sink_layer"] == 1
    assert m["levels"] == [[4, 2], [4, 3], [4, 4], [4, 7]]
    assert m["modal_l_start"] == 4 and m["l_start_shares"] == {"4": 1.0}
    assert set(m["tokens"]) == {" ^", " #", " @", " &"}
    assert m["origin"]["layer"] == 4 and m["origin"]["verdict"] == "supported"
    assert m["origin"]["median_mlp_out_cos"] >= 0.95 and abs(m["origin"]["median_mlp_in_cos"]) <= 0.5
    # every planted sink is in its trace's own text: as many independent units as sinks
    assert m["units"]["all"]["n_independent"] == m["units"]["all"]["n_positions"] == m["n_secondary"] > 0


def test_planted_causal_checks(planted_study):
    result, m = planted_study
    v = m["verdicts"]
    assert v["H1"] == "supported" and m["hypotheses"]["H1"]["effect"] <= -0.9
    # decided against clean sinks under a magnitude-matched noise placebo, never against non-sink controls
    assert m["hypotheses"]["H1"]["compared_with"] == "placebo" and m["hypotheses"]["H1"]["n_traces"] == 6
    assert v["H2/mlp_output/l_start/sinks"] == "supported" and v["H2/mlp_output/l_start/others"] == "not supported"
    assert v["H3/block_output"] == "supported" and v["H3/mlp_output"] == "not supported"
    # H4 masks all five sinks of a trace; its ordinary tokens cannot match their attention mass (control sets at
    # 0.07-0.22x), so no trace is inside the mass caliper: not testable, never supported
    for key in ("H4/sink_lifetime/none", "H4/sink_lifetime/bos"):
        assert v[key] == "not testable", m["hypotheses"][key]
        assert all("matched on attention mass" in c["reason"] for c in m["hypotheses"][key]["components"])
    # the swap timeline: the MLP output suppresses only at l_start (4), the hidden state at every layer
    assert m["swap"]["mlp_output"]["4"] == 1.0 and m["swap"]["mlp_output"]["3"] == 0.0
    assert all(r == 1.0 for r in m["swap"]["block_output"].values())
    assert m["compensation"]["valley_in_l_start_range"] is True
    # functional cost: zeroing the writer costs NLL beyond the controls; masking costs exactly nothing
    h1 = m["functional_cost"]["H1"]
    assert h1["compared_with"] == "controls" and h1["effect"] > 0 and h1["ci"][0] > 0
    assert m["functional_cost"]["H4"]["exact_null"] is True
    units = m["hypotheses"]["H1"]["units"]
    assert units["n_positions"] == units["n_independent"] == m["n_secondary"]


def test_planted_report_and_resume(planted_study):
    result, m = planted_study
    text = result.report.read_text()
    assert "| testbed:planted | no | 12 | 1 | 4: 100.0% |" in text
    assert "![Fig. 8](figures/fig8_swap_timeline.png)" in text
    for name in ("fig2_levels", "fig3_positions", "fig4_cosines", "fig5_pcs", "fig7_left_valley", "fig8_swap_timeline"):
        assert (result.out / "figures" / f"{name}.png").stat().st_size > 1000
    assert sorted(p.name for p in (result.out / "specs").iterdir()) == \
        ["attn_mask.yaml", "mean_swap.yaml", "mlp_zero.yaml", "norm_scale.yaml"]
    before = {p: json.loads((result.out / "phases" / f"{p}.json").read_text())["seconds"] for p in ("detect", "H1")}
    again = reproduce("testbed:planted", out=result.out, max_traces=6, max_tokens=None, progress=False, resume=True)
    assert {p: again.phases[p]["seconds"] for p in before} == before          # reused, not rerun
    assert measure_reproduce(again)["verdicts"] == m["verdicts"]
    with pytest.raises(UserError, match="--resume"):
        reproduce("testbed:planted", out=result.out, max_traces=6, max_tokens=None, progress=False)
    with pytest.raises(UserError, match="other settings"):
        reproduce("testbed:planted", out=result.out, max_traces=7, max_tokens=None, progress=False, resume=True)


def test_no_secondary_sinks_says_so_and_runs_the_rest(cache_dir, tmp_path):
    """Traces of the planted model's filler words only (no trigger): detection and the report run;
    each part that needs secondary sinks says so in one line."""
    from interventions.models.load import resolve_source
    from interventions.testbed.planted import load_truth

    fillers = load_truth(resolve_source("testbed:planted").path).fillers
    texts = [" ".join(fillers[(7 * i + 3 * k) % len(fillers)] for k in range(40)) for i in range(3)]
    traces = tmp_path / "plain.jsonl"
    traces.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    result = reproduce("testbed:planted", traces, tmp_path / "out", max_traces=3, max_tokens=None, progress=False)
    m = measure_reproduce(result)
    assert m["n_secondary"] == 0 and m["primary_sink_layer"] == 1
    assert m["verdicts"] == {h: "not tested" for h in ("H1", "H2", "H3", "H4")}
    assert all("has none" in line for line in m["skipped"].values())
    assert "**No secondary sinks**" in result.report.read_text()


def test_bad_input_fails_before_loading(tmp_path):
    with pytest.raises(UserError, match="--traces"):
        reproduce(".cache/real/whatever", None, tmp_path / "x")
    with pytest.raises(UserError, match="no such file"):
        reproduce("testbed:planted", tmp_path / "missing.jsonl", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# a real model (small CI version)


@pytest.mark.skipif(not (SMOLLM2 / "model.safetensors").is_file() or not TRACES.is_file(),
                    reason="SmolLM2 not cached (intervene testbed fetch-gguf) or the shared traces are absent")
def test_smollm2_small(tmp_path):
    """3 traces of 48 tokens (3 sinks in 2 traces): detection finds SmolLM2's secondary sinks (l_start 2), every phase runs,
    and each verdict record carries its comparison, its trace count and the independent units."""
    result = reproduce(str(SMOLLM2), TRACES, tmp_path / "smollm2", max_traces=3, max_tokens=48, progress=False,
                       run_reports=False)
    m = measure_reproduce(result)
    assert m["layers"] == 30 and m["n_secondary"] > 0 and m["modal_l_start"] == 2
    assert m["origin"]["layer"] == 2
    for key, rec in m["hypotheses"].items():
        assert rec["verdict"] != "supported", key   # <= 3 traces: an exact sign flip cannot reach p < 0.05
        if rec["verdict"] == "not testable":          # no unit in an arm that could decide it: says why, no numbers
            assert rec["compared_with"] is None and rec["effect"] is None, key
            continue
        assert rec["n_traces"] is not None and rec["n_traces"] <= 3, key
        assert "compared_with" in rec and rec["units"]["n_positions"] >= rec["units"]["n_independent"] > 0
    assert set(k.split("/")[0] for k in m["hypotheses"]) == {"H1", "H2", "H3", "H4"}
    assert "## The four causal checks" in result.report.read_text()
