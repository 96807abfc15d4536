"""Studies of experiments/ on the planted model, and `intervene compare` against paper-format references.

Every study runs end to end on the planted model with 6 traces (the fewest for which the
trace-level sign-flip test can reach p < 0.05) and must meet its own stated expectations.
The compare tests build references from our own detection: an exact copy (perfect agreement),
a perturbed copy with known counts, and a layer-shifted copy (the offset must be found).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from interventions.cli.main import app
from interventions.errors import UserError
from interventions.studies.compare import (
    compare,
    estimate_layer_offset,
    read_reference,
    reference_rows,
    to_reference_records,
)
from interventions.studies.experiments import (
    build_specs,
    expectation_checks,
    find_experiments,
    load_experiment,
    parse_check,
    run_experiment,
    spec_data,
)
from interventions.studies.origin import OriginConfig, judge_origin, principal_components, probe_table

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"
SHARED = REPO.parent / "shared" / "data" / "secondary-sinks-paper"
NAMES = ["sink_levels", "mlp_origin", "norm_laws", "ablation", "swap_timeline", "compensation"]
N_TRACES = 6
LIMITS = {"compensation": 16}
"""H4 keeps only traces whose controls remove at least the sinks' attention mass: on positive-h4 6 of 16 traces
(experiments/compensation/experiment.yaml), too few of 6 for a decisive verdict."""
REAL_ONLY = ["primary_sink_checks", "streaming_sinks"]
"""Studies with no planted run (known answers and streaming eviction on the cached real models;
tests/test_gguf_real_weights.py and tests/test_kind_heads_streaming.py)."""
OWN_TESTS = ["reproduce"]
"""Studies tested in their own file (the whole paper on one model: tests/test_reproduce.py)."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The planted model is tiny: one torch thread is several times faster than two on 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def results(cache_dir, tmp_path_factory):
    """Every study, run once on the planted model (6 traces, no report figures)."""
    root = tmp_path_factory.mktemp("experiments")
    return {name: run_experiment(EXPERIMENTS / name, results_root=root,
                                 overrides={"limit": LIMITS.get(name, N_TRACES)}, progress=False, report=False)
            for name in NAMES}


# --------------------------------------------------------------------------------------------
# the studies


def test_every_study_folder_is_listed():
    assert [p.name for p in find_experiments(EXPERIMENTS)] == sorted(NAMES + REAL_ONLY + OWN_TESTS)


@pytest.mark.parametrize("name", NAMES)
def test_study_meets_its_planted_expectations(results, name):
    result = results[name]
    assert result.checks, f"{name} declares no expectation"
    assert result.passed, "\n".join(f"{c['check']}: measured {c['measured']!r}" for c in result.failed)
    record = json.loads((result.out / "experiment.json").read_text())
    assert record["passed"] and record["mode"] == "planted"
    assert record["settings"]["limit"] == LIMITS.get(name, N_TRACES)
    assert [c["check"] for c in record["checks"]] == [c["check"] for c in result.checks]


def test_planted_verdicts_are_the_stated_ones(results):
    assert results["ablation"].measured["verdicts"]["H1"] == "supported"
    assert results["ablation"].measured["hypotheses"]["H1"]["conditions"] == ["zero.mlp_output.l_start"]
    assert results["norm_laws"].measured["verdicts"]["H2/mlp_output/l_start/sinks"] == "supported"
    swap = results["swap_timeline"].measured
    assert swap["verdicts"]["H3/block_output"] == "supported"
    assert swap["verdicts"]["H3/mlp_output"] == "not supported"   # nothing before l_start: exact null
    assert "mean_swap.block_output.l_start" in swap["hypotheses"]["H3/block_output"]["conditions"]
    assert any("tautological" in e["reason"] for e in swap["hypotheses"]["H3/block_output"]["excluded"])
    # H4 on its positive testbed (positive-h4): the primary sink moves beyond renormalisation, KL rises.
    comp = results["compensation"].measured
    for key in ("H4/sink_lifetime/none", "H4/sink_lifetime/bos"):
        assert comp["verdicts"][key] == "supported", comp["hypotheses"][key]["reason"]
        assert comp["hypotheses"][key]["conditions"] == [f"attention_mask.sink_lifetime.redirect-{key.rsplit('/', 1)[1]}"]


def test_h4_negative_is_an_exact_null_beyond_renormalisation(cache_dir, tmp_path):
    """The compensation study on the planted model (attention writes nothing after layer 2): the primary
    sink moves only by renormalisation arithmetic and predictions not at all (exact nulls, no p, no CI)."""
    result = run_experiment(EXPERIMENTS / "compensation", out=tmp_path, overrides={"limit": LIMITS["compensation"]},
                            progress=False, report=False, negative=True)
    assert result.mode == "negative" and result.passed, result.failed
    for key in ("H4/sink_lifetime/none", "H4/sink_lifetime/bos"):
        h4 = result.measured["hypotheses"][key]
        assert result.measured["verdicts"][key] == "not supported"
        assert all(c["exact_null"] and c["p"] is None and c["ci"] == [None, None] for c in h4["components"])


# norm_laws: negative-h2 makes the *lifetime* claim false (every sink ends at layer 8 whatever its norm); it
# still plants creation by the norm (" ~" becomes a sink when scaled up), which H2's weak family reads as
# lifetime 0 -> 4 and supports, so only the family of real sinks is a negative there
NEGATIVE = {"ablation": ["H1"], "norm_laws": ["H2/mlp_output/l_start/sinks"],
            "swap_timeline": ["H3/block_output", "H3/attention_output", "H3/mlp_output"]}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_negative_testbed_never_supports_the_claim(cache_dir, tmp_path, name):
    """The same study on a testbed where its claim is false by construction: never "supported"."""
    result = run_experiment(EXPERIMENTS / name, out=tmp_path / name, overrides={"limit": N_TRACES},
                            progress=False, report=False, negative=True)
    assert result.mode == "negative" and result.passed, result.failed
    verdicts = result.measured["verdicts"]
    for key in NEGATIVE[name]:
        assert verdicts[key] in ("not supported", "inconclusive"), (key, verdicts[key])
    if name != "norm_laws":
        assert "supported" not in verdicts.values()
    assert result.measured["hypotheses"][NEGATIVE[name][0]]["n_traces"] == N_TRACES


def test_sink_levels_and_origin_numbers(results):
    levels = results["sink_levels"].measured
    assert levels["levels"] == [[4, 2], [4, 3], [4, 4], [4, 7]]
    assert " ~" not in levels["token_set"]
    origin = results["mlp_origin"].measured
    assert origin["median_mlp_in_cos"] < 0.1 < 0.95 < origin["min_mlp_out_cos"]
    assert origin["n_future_sinks"] == levels["n_secondary"]
    best = origin["best_pc"]
    assert best["out_cos"] > 0.95 and best["out_norm"] >= origin["norm_floor"]
    out = results["mlp_origin"].out / "origin"
    assert {"origin.json", "cosines.csv", "pc_probe.csv"} <= {p.name for p in out.iterdir()}


def test_five_traces_cannot_support_a_hypothesis(cache_dir, tmp_path):
    """Why the studies use >= 6 traces: with 5, every trace agreeing gives the exact sign-flip
    p = 2/2^5 = 0.0625, so H1 stays inconclusive although every sink is removed."""
    result = run_experiment(EXPERIMENTS / "ablation", out=tmp_path / "five", overrides={"limit": 5},
                            progress=False, report=False)
    h1 = result.measured["hypotheses"]["H1"]
    assert h1["verdict"] == "inconclusive" and h1["effect"] == -1 and h1["p"] == pytest.approx(0.0625)
    assert "5 independent unit(s) < 6" in h1["reason"]   # the same minimum holds for "not supported"
    assert not result.passed


def test_every_real_configuration_builds_a_valid_spec():
    """Real configurations cannot run here (no weights): check they parse, point at existing
    shared files, and turn into valid specs."""
    from interventions.spec import Spec

    for folder in find_experiments(EXPERIMENTS):
        exp = load_experiment(folder)
        assert exp.real, f"{exp.name} has no real-model configuration"
        for name in exp.real:
            _, settings, expect = exp.mode(name)
            assert expectation_checks(expect), f"{exp.name}/{name} states no expected result"
            for key in ("traces", "reference"):
                if key in settings and SHARED.exists():
                    assert Path(settings[key]).is_file(), (exp.name, name, settings[key])
            assert not settings["model"].startswith("testbed")
            if SHARED.exists():
                specs = build_specs(exp, settings)   # checks the trace files exist, too
            else:
                specs = [Spec.from_dict(spec_data(exp, e, settings), base_dir=e["path"].parent) for e in exp.specs]
            for spec in specs:
                assert spec.model == settings["model"] and spec.limit == settings["limit"]


def test_checks_parse_and_evaluate():
    c = parse_check('token_set == [" #", " ^"]')
    assert c.path == ["token_set"] and c.expected == [" #", " ^"]
    assert c.evaluate({"token_set": [" #", " ^"]})["passed"]
    assert not parse_check("a.b > 3").evaluate({"a": {"b": 2}})["passed"]
    assert parse_check("a.0.x >= 1").evaluate({"a": [{"x": 1}]})["passed"]
    assert parse_check("levels contains [4, 6]").evaluate({"levels": [[4, 2], [4, 6]]})["passed"]
    missing = parse_check("nope == 1").evaluate({})
    assert not missing["passed"] and missing["note"] == "not measured"
    # a component expectation may name a unique prefix of the component
    (chk,) = expectation_checks({"components": {"H4": {"primary sink score": "supported"}}})
    assert chk.evaluate({"components": {"H4": {"primary sink score changes beyond controls": "supported"}}})["passed"]
    with pytest.raises(UserError):
        parse_check("just words")
    with pytest.raises(UserError):
        expectation_checks({"verdicts": {"H1": "proven"}})


def test_cli_exits_1_when_a_planted_expectation_fails(cache_dir, tmp_path):
    good = CliRunner().invoke(app, ["experiment", str(EXPERIMENTS / "sink_levels"), "--results", str(tmp_path),
                                    "--limit", "2", "--quiet"])
    assert good.exit_code == 0, good.output
    bad = tmp_path / "bad"
    shutil.copytree(EXPERIMENTS / "sink_levels", bad)
    data = yaml.safe_load((bad / "experiment.yaml").read_text())
    data["real"], data["name"] = {}, "wrong_expectation"
    data["expect"] = {"checks": ["levels == [[4, 2]]"]}
    (bad / "experiment.yaml").write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(app, ["experiment", str(bad), "--results", str(tmp_path), "--limit", "2", "--quiet"])
    assert res.exit_code == 1
    (good_record,) = (tmp_path / "experiments" / "sink_levels").glob("*/experiment.json")
    (bad_record,) = (tmp_path / "experiments" / "wrong_expectation").glob("*/experiment.json")
    assert json.loads(good_record.read_text())["passed"] and not json.loads(bad_record.read_text())["passed"]


def test_cli_negative_runs_the_negative_control_and_fails_when_it_would_support(cache_dir, tmp_path):
    """`--negative` runs the study on its negative testbed; an expectation the negative breaks exits 1."""
    limit = str(LIMITS["compensation"])
    ok = CliRunner().invoke(app, ["experiment", str(EXPERIMENTS / "compensation"), "--negative", "--no-report",
                                  "--results", str(tmp_path), "--limit", limit, "--quiet"])
    assert ok.exit_code == 0, ok.output
    (record,) = (tmp_path / "experiments" / "compensation").glob("*/experiment.json")
    assert json.loads(record.read_text())["mode"] == "negative"
    bad = tmp_path / "bad"
    shutil.copytree(EXPERIMENTS / "compensation", bad)
    data = yaml.safe_load((bad / "experiment.yaml").read_text())
    data.update(real={}, name="negative_claims_support", specs=[str(REPO / "specs" / "attn_mask.yaml")])
    data["negative"]["expect"] = {"verdicts": {"H4/sink_lifetime/none": "supported"}}
    (bad / "experiment.yaml").write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(app, ["experiment", str(bad), "--negative", "--no-report", "--results", str(tmp_path),
                                   "--limit", limit, "--quiet"])
    assert res.exit_code == 1 and "negative-control expectations failed" in res.output
    assert CliRunner().invoke(app, ["experiment", str(bad), "--negative", "--real"]).exit_code == 2


# --------------------------------------------------------------------------------------------
# origin.py: pure functions


def test_principal_components_and_judge():
    rng = torch.Generator().manual_seed(0)
    X = torch.randn(40, 2, generator=rng).numpy() @ torch.randn(2, 16, generator=rng).numpy()  # rank 2
    comps, explained = principal_components(X, 8)
    assert comps.shape == (2, 16) and explained.sum() == pytest.approx(1.0)
    d = torch.zeros(16).numpy()
    d[0] = 1.0
    aligned = probe_table(d[None] * 50, d[None] * 0.1, d, explained[:1], alpha=1.0, out_cos_min=0.95, norm_floor=5)
    assert aligned["maps_to_sink"].tolist() == [True, False]
    cos = pd.DataFrame({"trace": range(6), "l_start": 4, "mlp_in_cos": 0.1, "mlp_out_cos": 0.99})
    assert judge_origin(cos, aligned, layer=4)["verdict"] == "supported"
    assert judge_origin(cos.head(4), aligned, layer=4)["verdict"] == "inconclusive"
    misaligned = probe_table(-d[None] * 50, d[None] * 0.1, d, explained[:1], alpha=1.0, out_cos_min=0.95,
                             norm_floor=5)
    verdict = judge_origin(cos, misaligned, config=OriginConfig(), layer=4)
    assert verdict["verdict"] == "not supported" and "principal component" in verdict["reason"]
    assert judge_origin(cos.assign(mlp_in_cos=0.9), aligned, layer=4)["verdict"] == "not supported"


# --------------------------------------------------------------------------------------------
# compare


@pytest.fixture(scope="module")
def detected(planted, planted_truth, tmp_path_factory):
    from interventions import detect
    from interventions.spec.traces import traces_from_records
    from interventions.testbed.planted import planted_traces

    traces = traces_from_records([{"text": t} for t in planted_traces(planted_truth, N_TRACES, gated=True)],
                                 planted.tokenizer)
    out = tmp_path_factory.mktemp("detect") / "det"
    detect(planted, traces, out, progress=False)
    return out


def _write(records: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_compare_with_our_own_detection_agrees_perfectly(detected, tmp_path):
    sinks = pd.read_json(detected / "sinks.jsonl", lines=True)
    ref = _write(to_reference_records(sinks), tmp_path / "ref.jsonl")
    result = compare(detected, ref, tmp_path / "cmp")
    t = result.totals
    n = int((sinks.kind == "secondary").sum())
    assert (t["ours"], t["reference"], t["both"], t["only_ours"], t["only_reference"]) == (n, n, n, 0, 0)
    assert t["level_agreement"] == t["token_agreement"] == t["precision"] == t["recall"] == 1.0
    assert result.layer_offset["offset"] == 0 and result.layer_offset["constant"]
    assert result.primary["both"] == N_TRACES and result.primary["only_ours"] == 0
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["totals"]["both"] == n and len(saved["per_trace"]) == N_TRACES


def test_compare_counts_missing_extra_and_shifted_sinks_exactly(detected, tmp_path):
    sinks = pd.read_json(detected / "sinks.jsonl", lines=True)
    records = to_reference_records(sinks)
    sec = {t: sorted(int(p) for p, v in records[t]["candidate_sinks"].items() if v["sink_type"] == "secondary")
           for t in range(N_TRACES)}
    assert all(len(v) >= 5 for v in sec.values())
    cand = [r["candidate_sinks"] for r in records]
    del cand[0][str(sec[0][0])], cand[0][str(sec[0][1])]               # 2 missing in trace 0
    del cand[1][str(sec[1][0])]                                        # 1 missing in trace 1
    for p in (2, 3, 5):                                                # 3 extra in trace 2 (no sink there)
        assert str(p) not in cand[2]
        cand[2][str(p)] = {"layer": [4, 5], "token_id": 1, "sink_type": "secondary"}
    for p in sec[3][:2]:                                               # 2 levels shifted in trace 3
        cand[3][str(p)]["layer"] = [x + 1 for x in cand[3][str(p)]["layer"]]
    cand[4][str(sec[4][0])]["layer"] = cand[4][str(sec[4][0])]["layer"][:-1]   # 1 lifetime shorter in trace 4
    cand[5][str(sec[5][0])]["token_id"] += 1                           # 1 token id differs in trace 5
    free = next(str(p) for p in range(1, 40) if str(p) not in cand[5])
    cand[5][free] = {"layer": [4, 5, 6], "token_id": 9, "sink_type": "noise"}   # noise is not a sink
    result = compare(detected, _write(records, tmp_path / "perturbed.jsonl"), layer_offset=0)
    n = sum(len(v) for v in sec.values())
    per = result.per_trace.set_index("trace")
    assert per.loc[0, ["both", "only_ours", "only_reference"]].tolist() == [len(sec[0]) - 2, 2, 0]
    assert per.loc[1, ["both", "only_ours", "only_reference"]].tolist() == [len(sec[1]) - 1, 1, 0]
    assert per.loc[2, ["both", "only_ours", "only_reference"]].tolist() == [len(sec[2]), 0, 3]
    assert per.loc[3, "level_agree"] == len(sec[3]) - 2 and per.loc[4, "level_agree"] == len(sec[4]) - 1
    assert per.loc[5, "token_agree"] == len(sec[5]) - 1 and per.loc[5, "only_reference"] == 0
    t = result.totals
    assert (t["ours"], t["reference"], t["both"]) == (n, n - 3 + 3, n - 3)
    assert (t["only_ours"], t["only_reference"], t["level_agree"], t["token_agree"]) == (3, 3, n - 3 - 3, n - 3 - 1)
    off = result.layer_offset
    assert off["offset"] == 0 and not off["constant"] and off["counts"] == {0: n - 3 - 2, 1: 2}


def test_compare_finds_a_constant_layer_offset(detected, tmp_path):
    sinks = pd.read_json(detected / "sinks.jsonl", lines=True)
    records = to_reference_records(sinks)
    for r in records:
        for v in r["candidate_sinks"].values():
            v["layer"] = [x + 1 for x in v["layer"]]   # "hidden_states" counted with the embeddings
    ref = _write(records, tmp_path / "shifted.jsonl")
    auto = compare(detected, ref)
    assert auto.layer_offset["offset"] == 1 and auto.layer_offset["constant"] and auto.layer_offset["applied"] == 1
    assert auto.totals["level_agreement"] == 1.0 and auto.totals["level_agreement_raw"] == 0.0
    assert auto.layer_offset["primary_onset"]["offset"] == 1
    raw = compare(detected, ref, layer_offset=0)
    assert raw.totals["level_agreement"] == 0.0 and raw.layer_offset["applied"] == 0


def test_compare_reads_a_run_folder(results, detected, tmp_path):
    """clean_sinks.jsonl of a run over the same planted traces agrees with `detect` exactly."""
    run = Path(results["ablation"].measured["runs"]["mlp_zero"])
    sinks = pd.read_json(detected / "sinks.jsonl", lines=True)
    result = compare(run, _write(to_reference_records(sinks), tmp_path / "ref.jsonl"))
    assert result.totals["only_ours"] == result.totals["only_reference"] == 0
    assert result.totals["level_agreement"] == 1.0


def test_compare_cli(detected, tmp_path):
    sinks = pd.read_json(detected / "sinks.jsonl", lines=True)
    ref = _write(to_reference_records(sinks), tmp_path / "ref.jsonl")
    res = CliRunner().invoke(app, ["compare", str(detected), str(ref), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c" / "compare.json").read_text())["totals"]["level_agreement"] == 1.0
    res = CliRunner().invoke(app, ["compare", str(tmp_path), str(ref)])
    assert res.exit_code == 2 and "sinks.jsonl" in res.output


def test_estimate_layer_offset_needs_a_majority():
    m = pd.DataFrame({"l_start_ours": [4, 4, 4, 4], "l_start_ref": [5, 5, 4, 6]})
    off = estimate_layer_offset(m)
    assert off["offset"] == 1 and off["share"] == 0.5 and not off["explains"]
    assert estimate_layer_offset(m.iloc[:0])["offset"] is None


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/secondary-sinks-paper is not present")
def test_the_shared_reference_files_parse():
    qwen = read_reference(SHARED / "sink_detection_qwen3-4b-base.jsonl")
    assert qwen["trace"].nunique() == 30
    assert qwen["sink_type"].value_counts().to_dict() == {"bos_sink": 30, "secondary": 21}
    sec = qwen[qwen["kind"] == "secondary"]
    assert set(zip(sec["l_start"], sec["lifetime"])) == {(16, 18)}
    assert (sec["n_layers"] == sec["lifetime"]).all()  # contiguous runs
    assert sec["token_id"].value_counts()[220] == 16
    deepseek = read_reference(SHARED / "sink_detection_deepseek-r1-distill-qwen-14b.jsonl")
    types = deepseek.groupby("sink_type")["kind"].first().to_dict()
    assert types == {"bos_sink": "primary", "cliff": "secondary", "noise": "other"}
    cliffs = deepseek[deepseek["sink_type"] == "cliff"]
    assert len(cliffs) == 39 and cliffs["l_start"].eq(22).all()   # the paper's l_start 22
    assert len(reference_rows([{"candidate_sinks": {}}])) == 0


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/secondary-sinks-paper is not present")
def test_compare_against_the_shared_file_finds_a_shift(tmp_path):
    """Stand-in for a real run: the reference itself, one layer earlier, as 'ours'."""
    ref_file = SHARED / "sink_detection_qwen3-4b-base.jsonl"
    ref = read_reference(ref_file)
    ours = ref[ref["kind"] != "other"].assign(l_start=lambda d: d["l_start"] - 1)
    folder = tmp_path / "ours"
    folder.mkdir()
    ours[["trace", "position", "token_id", "kind", "l_start", "lifetime"]].to_json(
        folder / "sinks.jsonl", orient="records", lines=True)
    result = compare(folder, ref_file, n_traces=30)
    assert result.totals["both"] == 21 and result.totals["recall"] == 1.0
    assert result.layer_offset["offset"] == 1 and result.layer_offset["explains"]
    assert result.totals["levels_reference"] == {"(16, 18)": 21}
