"""Comparing per-layer effects across runs, conditions and models (``compare-runs``), on real runs.

Every comparison here is of runs made in this module on the planted testbeds (6 short traces
each): the planted model against its Llama variant (same planted truth, so no difference),
two seeds of one spec on the same traces (identical rows: an exact zero) and, once the
negative-control testbed exists, the planted model against a world where H1 is false.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from interventions.errors import UserError
from interventions.studies.compare_runs import N_BOOT_MIN, compare_effects, compare_runs, load_runs

from .conftest import REPO

pytestmark = pytest.mark.slow

ZERO = "zero.mlp_output.l_start"
SCALE = "scale.mlp_output.l_start.x2"
N_TRACES = 6


def _spec(folder: Path, name: str, model: str, seed: int, traces: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"""name: {name}
model: {model}
traces: {traces}
limit: {N_TRACES}
seed: {seed}
dtype: float32
targets:
  sinks: {{select: secondary_sinks}}
  ctrl: {{select: matched_controls, match: sinks, seed: {seed}}}
interventions:
  - kind: zero
    site: mlp_output
    layer: l_start
    targets: [sinks]
    controls: ctrl
  - kind: scale
    site: mlp_output
    layer: l_start
    targets: [sinks]
    factors: [2]
report: false
""")
    return path


def _run(folder: Path, name: str, model: str, seed: int = 0, traces: str = "traces.jsonl") -> Path:
    from interventions.pipeline import run_spec

    return run_spec(str(_spec(folder, name, model, seed, traces)), run_dir=folder / name, progress=False,
                    report=False).out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """planted (seed 0 and 1, the same traces file) and planted-llama, each zero + scale x2 at l_start."""
    from interventions.models.load import resolve_source
    from interventions.testbed.planted import load_truth, planted_traces

    folder = tmp_path_factory.mktemp("compare_runs")
    truth = load_truth(resolve_source("testbed:planted").path)
    texts = planted_traces(truth, n=N_TRACES, seed=0, gated=True)
    (folder / "traces.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return {"folder": folder, "planted": _run(folder, "planted", "testbed:planted"),
            "seed1": _run(folder, "planted_seed1", "testbed:planted", seed=1),
            "llama": _run(folder, "llama", "testbed:planted-llama")}


def _covers_zero_or_exact(table: pd.DataFrame) -> pd.Series:
    has_ci = table["diff_ci_low"].notna()
    covers = (table["diff_ci_low"] <= 0) & (table["diff_ci_high"] >= 0)
    exact = (table["ci_method"] == "exact zero") & (table["diff"] == 0) & table["p"].isna()
    return (has_ci & covers) | (~has_ci & exact)


@pytest.mark.parametrize("align", ["layer", "depth", "l_start"])
def test_planted_vs_llama_differences_cover_zero_at_every_aligned_layer(runs, align):
    table = compare_effects([runs["planted"], runs["llama"]], measure="is_sink", align=align, conditions=[ZERO])
    assert len(table) == 12 and set(table["x"]) == set(table["x"].unique())
    assert not table["paired"].any()  # different models: traces resampled within each run, independently
    assert _covers_zero_or_exact(table).all(), table[["x", "diff", "diff_ci_low", "diff_ci_high", "ci_method"]]
    # The test can fail: several layers carry a real interval, and the effect itself is large.
    assert table["diff_ci_low"].notna().sum() >= 3
    at_start = table[table["layers"] == "4"].iloc[0]
    assert at_start["effect"] == at_start["ref_effect"] == -1.0  # zeroing the l_start MLP removes every sink there
    assert (table["p_adj"].dropna() > 0.05).all()


def test_two_seeds_on_the_same_traces_give_exact_zeros_without_ci(runs):
    result = compare_runs([runs["planted"], runs["seed1"]], measure="sink_score", align="layer")
    t = result.table
    assert t["paired"].all()  # same model and traces: paired by trace
    assert set(t["condition"]) == {ZERO, SCALE} and len(t) == 24
    assert (t["diff"] == 0).all() and (t["ci_method"] == "exact zero").all()
    assert t[["diff_ci_low", "diff_ci_high", "p", "p_adj"]].isna().all().all()
    # ... while each run's own effect does have an interval where it varies between traces.
    assert t["ci_low"].notna().any()
    from interventions.cli.compare_runs import print_comparison
    from interventions.report.tables import out  # results go to stdout

    with out.capture() as cap:
        print_comparison(result)
    assert "0 (exact)" in cap.get()


def test_three_runs_on_each_alignment(runs):
    paths = [runs["planted"], runs["llama"], runs["seed1"]]
    for align, n_x in (("layer", 12), ("depth", 12), ("l_start", 12)):
        result = compare_runs(paths, measure="is_sink", align=align, conditions=[ZERO])
        t = result.table
        assert sorted(t["run"].unique()) == ["llama", "planted_seed1"] and set(t["ref_run"]) == {"planted"}
        assert len(t) == 2 * n_x
        assert set(result.effects["series"]) == {"planted", "llama", "planted_seed1"}
    depth = compare_runs(paths[:2], measure="is_sink", align="depth", bins=4).table
    assert sorted(depth["x"].unique()) == [0.125, 0.375, 0.625, 0.875]
    assert set(depth["layers"]) == {"0,1,2", "3,4,5", "6,7,8", "9,10,11"}
    every = compare_runs(paths, measure="is_sink", conditions=[ZERO], pairs="all").table
    assert len(every) == 3 * 12


def test_condition_against_condition_on_one_model(runs):
    t = compare_effects([runs["planted"]], measure="is_sink", align="condition")
    assert set(t["condition"]) == {SCALE} and set(t["ref_condition"]) == {ZERO} and t["paired"].all()
    row = t[t["x"] == 4].iloc[0]
    # zeroing the l_start MLP removes every sink at layer 4, doubling it keeps them: +1 at layer 4
    assert row["ref_effect"] == -1.0 and row["effect"] == 0.0 and row["diff"] == 1.0
    before = t[t["x"] < 4]
    assert (before["diff"] == 0).all() and (before["ci_method"] == "exact zero").all()


def test_l_start_alignment_lines_up_a_deeper_model_that_absolute_layers_do_not(runs):
    """A 'deeper' copy of the planted run (6 more layers before the sink forms, l_start 10):
    on layers since l_start it is the same run (exact zeros); on absolute layers it is not."""
    shallow, deep = load_runs([runs["planted"], runs["planted"]], labels=["shallow", "deep"])
    deep.effects = deep.effects.assign(layer=deep.effects["layer"] + 6)
    deep.n_layers, deep.l_start = 18, 10
    aligned = compare_runs([shallow, deep], measure="is_sink", align="l_start", conditions=[ZERO]).table
    assert sorted(aligned["x"]) == list(range(-4, 8)) and set(aligned["ref_layers"]) == {str(l) for l in range(12)}
    assert (aligned["diff"] == 0).all() and (aligned["ci_method"] == "exact zero").all()
    absolute = compare_runs([shallow, deep], measure="is_sink", align="layer", conditions=[ZERO])
    assert sorted(absolute.table["x"]) == list(range(6, 12))
    at6 = absolute.table.set_index("x").loc[6]  # the deep copy has not formed its sinks yet at layer 6
    assert at6["effect"] == 0 and at6["ref_effect"] < -0.5 and at6["diff"] == -at6["ref_effect"]
    assert any("shallow dropped from layer 0..5" in n for n in absolute.notes)
    assert any("deep dropped from layer 12..17" in n for n in absolute.notes)


def test_dropped_layers_are_named(runs):
    a, b = load_runs([runs["planted"], runs["llama"]])
    b.effects = b.effects[b.effects["layer"] >= 3]
    result = compare_runs([a, b], measure="is_sink", conditions=[ZERO])
    assert sorted(result.table["x"]) == list(range(3, 12))
    assert any(re.search(r"planted dropped from layer 0\.\.2 .*llama has no rows there", n) for n in result.notes)


def test_refusals_are_one_line(runs):
    a, b = load_runs([runs["planted"], runs["llama"]])
    with pytest.raises(UserError, match="not a per-layer measure"):
        compare_effects([a, b], measure="kl")
    with pytest.raises(UserError, match="different models"):
        compare_effects([a, b], measure="is_sink", align="condition")
    with pytest.raises(UserError, match=f"at least {N_BOOT_MIN}"):
        compare_effects([a, b], measure="is_sink", n_boot=500)
    a2, b2 = load_runs([runs["planted"], runs["llama"]])
    a2.effects, b2.effects = a2.effects[a2.effects["layer"] < 6], b2.effects[b2.effects["layer"] >= 6]
    with pytest.raises(UserError, match="no layer in common"):
        compare_effects([a2, b2], measure="is_sink")
    c, d = load_runs([runs["planted"], runs["llama"]])
    d.manifest = {**d.manifest, "spec": {**d.manifest["spec"], "measures": ["kl", "delta_nll"]}}
    with pytest.raises(UserError, match="did not measure sink_score"):
        compare_effects([c, d], measure="sink_score")
    with pytest.raises(UserError, match="unknown correction 'fdr'.*fdr_bh is bh"):
        compare_effects([a, b], measure="is_sink", correction="fdr")
    e, f = load_runs([runs["planted"], runs["llama"]])
    f.effects = f.effects.iloc[0:0]
    with pytest.raises(UserError, match="has no per-layer effects"):
        compare_effects([e, f], measure="is_sink")


def test_cli_writes_tables_and_figures_and_refuses_with_exit_2(runs, tmp_path):
    from interventions.cli.main import app

    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["compare-runs", str(runs["planted"]), str(runs["llama"]), str(runs["seed1"]),
                                   "--align", "l_start", "--conditions", ZERO, "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("comparison.parquet", "comparison.csv", "effects.parquet", "effects.csv", "comparison.json",
                 "effects_by_layer.png", "difference_heatmap.png"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_parquet(out / "comparison.parquet")
    assert len(table) == 24 and (pd.read_csv(out / "comparison.csv")["diff"].to_numpy() == table["diff"]).all()
    bad = CliRunner().invoke(app, ["compare-runs", str(runs["planted"]), str(runs["llama"]), "--measure", "kl",
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1 and "per-layer" in bad.output
    assert not (tmp_path / "bad").exists()


def test_seeded_and_reproducible(runs):
    a = compare_effects([runs["planted"], runs["llama"]], measure="hidden_cos", seed=3)
    b = compare_effects([runs["planted"], runs["llama"]], measure="hidden_cos", seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_fdr_bh_is_an_alias_of_bh(runs):
    """Benjamini-Hochberg under its canonical name and statsmodels' spelling: the same p_adj, labelled bh.

    Scale x2 against zero on one model: 8 layers after the edit, each with the smallest p six paired
    traces allow (2 / 2**6); Holm multiplies it by 8, BH keeps it (all eight are equal)."""
    def compare(correction):
        return compare_effects([runs["planted"]], measure="hidden_cos", align="condition", correction=correction)

    bh, alias, holm = compare("bh"), compare("fdr_bh"), compare("holm")
    pd.testing.assert_frame_equal(bh, alias)
    tested = bh["p"].notna()
    assert (alias["correction"] == "bh").all() and tested.sum() == 8 and np.allclose(bh.loc[tested, "p"], 2 / 2**6)
    assert np.allclose(bh.loc[tested, "p_adj"], 2 / 2**6) and np.allclose(holm.loc[tested, "p_adj"], 8 * 2 / 2**6)


def test_planted_vs_negative_h1_differs_at_l_start_in_the_predicted_direction(runs, cache_dir):
    """H1 false by construction: zeroing the l_start MLP does not prevent the sinks there, so the
    negative control's change in sink fraction at l_start is above the planted model's (-1)."""
    from interventions.models.load import resolve_source

    try:
        resolve_source("testbed:negative-h1")
    except UserError as exc:
        pytest.skip(f"testbed:negative-h1 is not loadable yet ({exc}); remove this skip once it is merged")
    folder = runs["folder"]
    planted = _run(folder, "planted_own", "testbed:planted", traces="testbed")
    negative = _run(folder, "negative_h1", "testbed:negative-h1", traces="testbed")
    t = compare_effects([planted, negative], measure="is_sink", align="l_start", conditions=[ZERO])
    row = t[t["x"] == 0].iloc[0]
    assert row["ref_effect"] < -0.5 and row["diff"] > 0
    assert row["p_adj"] < 0.05
    assert np.isnan(row["diff_ci_low"]) or row["diff_ci_low"] > 0


def test_readme_section_runs_as_written(tmp_path, cache_dir):
    """The bash block of the README's "Comparing runs" section, verbatim, makes the figure."""
    import os
    import shlex
    import shutil
    import subprocess
    import sys

    section = (REPO / "README.md").read_text().split("## Comparing runs", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]
    assert [c.split()[:2] for c in commands][-1] == ["intervene", "compare-runs"]
    shutil.copytree(REPO / "specs", tmp_path / "specs")
    env = dict(os.environ, INTERVENTIONS_CACHE=str(cache_dir), COLUMNS="160")
    for command in commands:
        proc = subprocess.run([sys.executable, "-m", "interventions.cli.main", *shlex.split(command)[1:]],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
    out = Path(tmp_path / shlex.split(commands[-1])[shlex.split(commands[-1]).index("--out") + 1])
    assert (out / "difference_heatmap.png").exists() and (out / "effects_by_layer.png").exists()
    table = pd.read_parquet(out / "comparison.parquet")
    tenfold = table[table["condition"] == "scale.mlp_output.l_start.x10.weak+others"].set_index("x")["diff"]
    assert tenfold.loc[5:8].eq(0.5).all() and tenfold.drop(range(5, 9)).eq(0).all()  # the caption's numbers
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        scope: dict = {}
        exec(python, scope)
    finally:
        os.chdir(here)
    assert (scope["table"]["condition"] == "scale.mlp_output.l_start.x10.weak+others").all()
