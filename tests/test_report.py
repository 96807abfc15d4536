"""report.md and its figures on synthetic run folders (sinks present, and none at all).

The folders are written the way ``intervene run`` writes them (manifest.json, clean_sinks.jsonl,
sink_layers.parquet, clean_profile.parquet, effects.parquet/ parts with every effects column
and its clean_ twin), then ``analyze_run`` computes stats.json and renders the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from interventions.pipeline import analyze_run
from interventions.report.figures import FIGURES
from interventions.run.job import EFFECT_COLUMNS

N_LAYERS = 8
N_TRACES = 6
LENGTH = 24
PER_LAYER = ("is_sink", "hidden_norm", "hidden_cos", "mlp_out_norm", "sink_score", "primary_sink_score")
TWINS = ("l_start", "lifetime", "ref_mlp_out_norm", "ref_sink_score") + PER_LAYER
TINY_DEMO = Path("/tmp/rt/results/tiny_demo")


# ---------------------------------------------------------------------------------------------
# a synthetic run folder
# ---------------------------------------------------------------------------------------------


def _primary_profile(rng) -> np.ndarray:
    """BOS sink score per layer: forms at layer 1, dips to a valley at layer 3, recovers."""
    base = np.array([0.05, 0.9, 0.7, 0.45, 0.55, 0.7, 0.8, 0.85])[:N_LAYERS]
    return np.clip(base + rng.normal(0, 0.02, N_LAYERS), 0.01, 0.99)


def _sinks_of_trace(trace: int, rng, with_secondary: bool) -> list[dict]:
    sinks = [{"trace": trace, "position": 0, "token_id": 1, "token": "<bos>", "kind": "primary", "l_start": 1,
              "lifetime": N_LAYERS - 1, "layers": list(range(1, N_LAYERS)), "hidden_norm": 300.0,
              "mlp_out_norm": 250.0, "cos": 1.0, "peak_sink_score": 0.9, "censored": True}]
    if not with_secondary:
        return sinks
    for k, (pos, life) in enumerate(((6, 2), (11, 3), (17, 4 + trace % 2))):
        norm = float(np.exp(2.0 + 0.5 * life + rng.normal(0, 0.08)))
        l_start = 3 + (trace + k) % 2
        life = min(life, N_LAYERS - l_start)
        sinks.append({"trace": trace, "position": pos, "token_id": 10 + k, "token": [" ", "1", "\n"][k],
                      "kind": "secondary", "l_start": l_start, "lifetime": life,
                      "layers": list(range(l_start, l_start + life)), "hidden_norm": 3 * norm, "mlp_out_norm": norm,
                      "cos": 0.98, "peak_sink_score": 0.1, "censored": l_start + life == N_LAYERS})
    return sinks


def _target_rows(base: dict, *, trace: int, position: int, clean_life: int, clean_start: int, life: int,
                 start: int, ref: int, rng, primary: np.ndarray, primary_after: np.ndarray | None = None,
                 masked: list[int] = (), kl: float = 0.001) -> list[dict]:
    clean_is = np.zeros(N_LAYERS, bool)
    now_is = np.zeros(N_LAYERS, bool)
    if clean_life:
        clean_is[clean_start:clean_start + clean_life] = True
    if life:
        now_is[start:start + life] = True
    clean_score = np.where(clean_is, 0.12, 0.01) + rng.normal(0, 0.002, N_LAYERS)
    now_score = np.where(now_is, 0.12, 0.01) + rng.normal(0, 0.002, N_LAYERS)
    primary_after = primary if primary_after is None else primary_after
    seen = min(ref + 1, N_LAYERS - 1) if ref >= 0 else None
    per_target = {
        **base, "trace": trace, "position": position, "token": "x", "token_id": 50 + position,
        "clean_kind": "secondary" if clean_life else "none", "prefix_hash": f"{trace}:{position}",
        "l_start": start if life else -1, "lifetime": life,
        "clean_l_start": clean_start if clean_life else -1, "clean_lifetime": clean_life, "ref_layer": ref,
        "ref_mlp_out_norm": 5.0 * (base.get("factor") or 1.0) if ref >= 0 else np.nan,
        "clean_ref_mlp_out_norm": 5.0 if ref >= 0 else np.nan,
        "ref_sink_score": float(now_score[seen]) if seen is not None else np.nan,
        "clean_ref_sink_score": float(clean_score[seen]) if seen is not None else np.nan,
        "kl": kl * (1 + rng.uniform(0, 0.3)), "delta_nll": kl * rng.normal(0, 1),
        "suppressed": bool(clean_life > 0 and life == 0),
    }
    rows = []
    for layer in range(N_LAYERS):
        hn_clean = 40.0 if clean_is[layer] else 1.0 + 0.1 * layer
        hn_now = 40.0 if now_is[layer] else 1.0 + 0.1 * layer
        rows.append({
            **per_target, "layer": layer, "masked": layer in masked,
            "is_sink": bool(now_is[layer]), "clean_is_sink": bool(clean_is[layer]),
            "hidden_norm": hn_now, "clean_hidden_norm": hn_clean,
            "hidden_cos": 0.98 if now_is[layer] else 0.2, "clean_hidden_cos": 0.98 if clean_is[layer] else 0.2,
            "mlp_out_norm": 3.0, "clean_mlp_out_norm": 3.0,
            "sink_score": float(now_score[layer]), "clean_sink_score": float(clean_score[layer]),
            "primary_sink_score": float(primary_after[layer]), "clean_primary_sink_score": float(primary[layer]),
        })
    return rows


def _base(condition: str, kind: str, site: str, layers: list[int], target_set: str, is_control: bool,
          factor: float = np.nan, redirect: str = "") -> dict:
    from interventions.run.tables import kind_columns

    others = {name: col.default for name, col in kind_columns().items()}  # every registered kind's columns
    return {**others, "condition": condition, "kind": kind, "site": site, "intervened_layer": layers[0],
            "intervened_layers": ",".join(map(str, layers)), "factor": factor, "redirect": redirect,
            "target_set": target_set, "is_control": is_control, "non_finite": False}


def _effects_of_trace(trace: int, sinks: list[dict], primary: np.ndarray, rng) -> list[dict]:
    secondary = [s for s in sinks if s["kind"] == "secondary"]
    controls = [20, 21, 22]
    rows: list[dict] = []
    # scale: a sub-threshold token (position 4) becomes a sink living longer as the factor grows
    for factor in (2.0, 5.0, 10.0):
        cond = f"scale.mlp_output.l_start.x{factor:g}"
        life = {2.0: 1, 5.0: 2, 10.0: 4}[factor] if rng.uniform() < 0.9 else 0
        rows += _target_rows(_base(cond, "scale", "mlp_output", [3], "weak", False, factor), trace=trace, position=4,
                             clean_life=0, clean_start=-1, life=life, start=3, ref=3, rng=rng, primary=primary)
        for p in controls[:2]:
            rows += _target_rows(_base(cond, "scale", "mlp_output", [3], "ctrl", True, factor), trace=trace, position=p,
                                 clean_life=0, clean_start=-1, life=0, start=-1, ref=3, rng=rng, primary=primary)
    # scale of real sinks: down shortens, up lengthens
    for factor in (0.5, 2.0):
        cond = f"scale.mlp_output.l_start.x{factor:g}.sinks"
        for s in secondary:
            life = max(0, s["lifetime"] - 1) if factor < 1 else min(N_LAYERS - s["l_start"], s["lifetime"] + 1)
            rows += _target_rows(_base(cond, "scale", "mlp_output", [s["l_start"]], "sinks", False, factor),
                                 trace=trace, position=s["position"], clean_life=s["lifetime"],
                                 clean_start=s["l_start"], life=life, start=s["l_start"], ref=s["l_start"], rng=rng,
                                 primary=primary)
        for p in controls:
            rows += _target_rows(_base(cond, "scale", "mlp_output", [3], "sink_ctrl", True, factor), trace=trace,
                                 position=p, clean_life=0, clean_start=-1, life=0, start=-1, ref=3, rng=rng,
                                 primary=primary)
    # zero: sinks vanish, controls unchanged
    for s in secondary:
        rows += _target_rows(_base("zero.mlp_output.l_start", "zero", "mlp_output", [s["l_start"]], "sinks", False),
                             trace=trace, position=s["position"], clean_life=s["lifetime"], clean_start=s["l_start"],
                             life=0, start=-1, ref=s["l_start"], rng=rng, primary=primary)
    for p in controls:
        rows += _target_rows(_base("zero.mlp_output.l_start", "zero", "mlp_output", [3], "ctrl", True), trace=trace,
                             position=p, clean_life=0, clean_start=-1, life=0, start=-1, ref=3, rng=rng,
                             primary=primary)
    # mean swap: later swaps suppress more often
    for site in ("block_output", "attention_output", "mlp_output"):
        for layer in range(0, 4):
            cond = f"mean_swap.{site}.L{layer}"
            for s in secondary:
                suppressed = rng.uniform() < 0.15 + 0.25 * layer
                rows += _target_rows(_base(cond, "mean_swap", site, [layer], "sinks", False), trace=trace,
                                     position=s["position"], clean_life=s["lifetime"], clean_start=s["l_start"],
                                     life=0 if suppressed else s["lifetime"], start=s["l_start"], ref=layer, rng=rng,
                                     primary=primary)
    # attention mask: the BOS sink regains attention in the masked layers; targets move predictions more
    for redirect in ("none", "bos"):
        cond = f"attention_mask.sink_lifetime.redirect-{redirect}"
        for group, positions in (("sinks", [(s["position"], s["l_start"], s["lifetime"]) for s in secondary]),
                                 ("ctrl", [(p, 3, 2) for p in controls])):
            is_control = group == "ctrl"
            after = primary.copy()
            for _, start, life in positions:
                after[start:start + life] += 0.0 if is_control else 0.05 + rng.normal(0, 0.005)
            for pos, start, life in positions:
                layers = list(range(start, start + life))
                rows += _target_rows(_base(cond, "attention_mask", "", layers, group, is_control, redirect=redirect),
                                     trace=trace, position=pos, clean_life=0 if is_control else life,
                                     clean_start=start, life=0 if is_control else life, start=start, ref=-1 if
                                     is_control else start, rng=rng, primary=primary, primary_after=after,
                                     masked=layers, kl=0.001 if is_control else 0.05)
    return rows


def make_run(folder: Path, *, with_secondary: bool = True, seed: int = 0) -> Path:
    """Write a run folder like ``intervene run`` does; returns it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    all_sinks, sink_layers, profiles = [], [], []
    for trace in range(N_TRACES):
        primary = _primary_profile(rng)
        sinks = _sinks_of_trace(trace, rng, with_secondary)
        all_sinks += sinks
        for s in sinks:
            if s["kind"] != "secondary":
                continue
            for layer in s["layers"]:
                score = float(np.exp(-4.5 + 0.9 * np.log(s["mlp_out_norm"]) + 0.1 * (layer - 4)
                                     + rng.normal(0, 0.1))) * primary[layer]
                sink_layers.append({"trace": trace, "position": s["position"], "token": s["token"],
                                    "token_id": s["token_id"], "l_start": s["l_start"], "lifetime": s["lifetime"],
                                    "censored": s["censored"], "layer": layer, "mlp_out_norm": s["mlp_out_norm"],
                                    "sink_score": score, "primary_sink_score": float(primary[layer])})
        med = 1.0 + 0.1 * np.arange(N_LAYERS)
        profiles.append(pd.DataFrame({
            "trace": trace, "layer": np.arange(N_LAYERS), "primary_sink_score": primary,
            "primary_hidden_norm": np.r_[1.0, np.full(N_LAYERS - 1, 300.0)], "median_hidden_norm": med,
            "primary_key_norm": np.r_[5.0, np.full(N_LAYERS - 1, 0.5)], "median_key_norm": np.full(N_LAYERS, 5.0),
            "primary_value_norm": np.r_[1.0, np.zeros(N_LAYERS - 1)],  # exactly 0, as in the planted model
            "median_value_norm": np.full(N_LAYERS, 1.2),
            "n_secondary": 3 if with_secondary else 0,
            "secondary_hidden_norm": np.r_[np.ones(3), np.full(N_LAYERS - 3, 40.0)] if with_secondary else np.nan,
            "secondary_key_norm": np.r_[np.full(4, 5.0), np.full(N_LAYERS - 4, 1.0)] if with_secondary else np.nan,
            "secondary_value_norm": np.r_[np.full(4, 1.0), np.full(N_LAYERS - 4, 0.1)] if with_secondary
            else np.nan}))
        rows = _effects_of_trace(trace, sinks, primary, rng) if with_secondary else \
            _effects_without_sinks(trace, primary, rng)
        frame = pd.DataFrame(rows)
        frame = frame[[c for c in _all_columns() if c in frame.columns]]
        (folder / "effects.parquet").mkdir(exist_ok=True)
        frame.to_parquet(folder / "effects.parquet" / f"part-{trace:05d}.parquet", index=False)
    (folder / "clean_sinks.jsonl").write_text("".join(json.dumps(s) + "\n" for s in all_sinks))
    pd.DataFrame(sink_layers, columns=["trace", "position", "token", "token_id", "l_start", "lifetime", "censored",
                                       "layer", "mlp_out_norm", "sink_score", "primary_sink_score"]).to_parquet(
        folder / "sink_layers.parquet", index=False)
    pd.concat(profiles, ignore_index=True).to_parquet(folder / "clean_profile.parquet", index=False)
    conditions = sorted(pd.read_parquet(folder / "effects.parquet")["condition"].unique())
    manifest = {
        "manifest_version": 1, "kind": "run", "run_id": folder.name, "created_utc": "2026-01-01T00:00:00+00:00",
        "finished_utc": "2026-01-01T00:01:00+00:00", "command": "intervene run synthetic.yaml", "status": "complete",
        "versions": {"python": "3.11", "interventions": "0.1.0", "numpy": np.__version__, "pandas": pd.__version__},
        "tool": {"commit": "0" * 40, "dirty": False}, "traces_completed": list(range(N_TRACES)),
        "traces_total": N_TRACES, "seed": seed, "spec_name": "synthetic", "spec_hash": "abc123",
        "spec": {"model": "testbed:synthetic", "dtype": "float32", "device": "cpu", "traces": "testbed",
                 "description": "synthetic run folder for the report tests"},
        "model": {"source": "testbed:synthetic", "model_type": "qwen2", "dtype": "float32", "device": "cpu",
                  "n_layers": N_LAYERS, "n_heads": 4, "n_hidden": 64},
        "conditions": [{"id": c} for c in conditions], "run_facts": {"modal_l_start": 3, "sink_token_ids": [10]},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _effects_without_sinks(trace: int, primary: np.ndarray, rng) -> list[dict]:
    """A random-init model: nothing is a sink, interventions change (almost) nothing."""
    rows: list[dict] = []
    for factor in (2.0, 10.0):
        cond = f"scale.mlp_output.L1.x{factor:g}"
        rows += _target_rows(_base(cond, "scale", "mlp_output", [1], "the", False, factor), trace=trace, position=3,
                             clean_life=0, clean_start=-1, life=0, start=-1, ref=1, rng=rng, primary=primary)
        rows += _target_rows(_base(cond, "scale", "mlp_output", [1], "ctrl", True, factor), trace=trace, position=9,
                             clean_life=0, clean_start=-1, life=0, start=-1, ref=1, rng=rng, primary=primary)
    for layer in range(3):
        rows += _target_rows(_base(f"mean_swap.block_output.L{layer}", "mean_swap", "block_output", [layer], "the",
                                   False), trace=trace, position=3, clean_life=0, clean_start=-1, life=0, start=-1,
                             ref=layer, rng=rng, primary=primary)
    rows += _target_rows(_base("attention_mask.L2+3.redirect-bos", "attention_mask", "", [2, 3], "the", False,
                               redirect="bos"), trace=trace, position=3, clean_life=0, clean_start=-1, life=0,
                         start=-1, ref=-1, rng=rng, primary=primary, masked=[2, 3])
    return rows


def _all_columns() -> list[str]:
    """Every effects column a run with the default measures writes (opt-in measures such as kv_norm aside)."""
    from interventions.spec.measures import MEASURES

    opt_in = {c for m in MEASURES.values() if not m.default for c in m.columns}
    cols = []
    for c in [c for c in EFFECT_COLUMNS if c not in opt_in]:
        cols.append(c)
        if c in TWINS:
            cols.append("clean_" + c)
    return cols


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sink_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("report") / "20260101-000000-synth", with_secondary=True)


def test_synthetic_folder_has_every_effects_column(sink_run):
    effects = pd.read_parquet(sink_run / "effects.parquet")
    missing = [c for c in _all_columns() if c not in effects.columns]
    assert not missing
    assert set(effects["kind"]) == {"scale", "zero", "mean_swap", "attention_mask"}


def test_report_with_sinks_has_every_figure(sink_run):
    stats, report = analyze_run(sink_run, progress=False)
    assert report == sink_run / "report.md" and report.exists()
    text = report.read_text()
    for name in FIGURES:
        png = sink_run / "figures" / f"{name}.png"
        assert f"](figures/{name}.png)" in text, f"{name} not embedded in report.md"
        assert png.exists() and png.stat().st_size > 1024, f"{png} missing or tiny"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not drawn" not in text
    # stats.json round-trips, and the report shows what it holds
    on_disk = json.loads((sink_run / "stats.json").read_text())
    assert json.loads(json.dumps(on_disk)) == on_disk
    assert set(on_disk["verdicts"]) == {"H1", "H2", "H3", "H4"}
    for key, v in on_disk["verdicts"].items():
        assert f"**{key}**" in text and v["verdict"] in text
    assert on_disk["verdicts"]["H1"]["rule"] in text
    for heading in ("## Provenance", "## Verdicts", "## Key statistics", "### Norm -> sink score",
                    "### Norm -> lifetime", "### Dose-response", "### Compensation", "### Per-layer effects",
                    "## Figures", "## How to read this"):
        assert heading in text
    assert "abc123" in text and "0" * 40 in text and "testbed:synthetic" in text
    assert "synthetic: run 20260101-000000-synth" in text
    assert on_disk["norm_score"]["estimable"] and "pooled slope" in text
    assert f"layer **{on_disk['compensation']['valley_layer']}**" in text
    # each figure has a caption stating n
    for line in text.splitlines():
        if line.startswith("*fig_"):
            assert any(ch.isdigit() for ch in line), line


def _no_sink_run(tmp_path: Path) -> Path:
    """A copy of a tiny_demo run when one with today's columns exists, else a synthetic one."""
    for candidate in sorted(TINY_DEMO.glob("*")) if TINY_DEMO.exists() else []:
        parts = sorted((candidate / "effects.parquet").glob("part-*.parquet"))
        if (candidate / "manifest.json").exists() and parts and \
                "ref_sink_score" in pd.read_parquet(parts[0]).columns:
            dest = tmp_path / candidate.name
            shutil.copytree(candidate, dest, ignore=shutil.ignore_patterns("figures", "report.md", "stats.json"))
            return dest
    return make_run(tmp_path / "20260101-000000-nosinks", with_secondary=False)


def test_report_without_secondary_sinks_renders_with_notes(tmp_path):
    run = _no_sink_run(tmp_path)
    stats, report = analyze_run(run, progress=False)
    text = report.read_text()
    json.loads((run / "stats.json").read_text())
    assert "no secondary sinks in the clean run" in text
    for name in ("fig_levels", "fig_norm_score", "fig_norm_lifetime"):
        assert f"*{name}* not drawn" in text
        assert not (run / "figures" / f"{name}.png").exists()
    for line in text.splitlines():
        if line.startswith("!["):
            png = run / line.split("](", 1)[1].rstrip(")")
            assert png.exists() and png.stat().st_size > 1024
    assert "fig_norms.png" in text  # the primary sink's norms are still shown
    assert "drawing failed" not in text


# ---------------------------------------------------------------------------------------------
# exact zeros, degenerate estimates and untested layers: no CI, no p (terminal and report.md)
# ---------------------------------------------------------------------------------------------

DEGENERATE_REASON = "collapsed sandwich variance: cluster-robust SE 3.47e-16 is below 1e-06 x the model-based SE"


def _honesty_stats(stats: dict) -> dict:
    """``stats`` with a degenerate norm -> score slope, an exact-zero dose slope and a pre-edit layer.

    The degenerate and exact-zero dicts also carry a stale CI and p (0.0123): nothing may print them.
    """
    out = json.loads(json.dumps(stats))
    stale = {"ci_low": 7.77, "ci_high": 9.99, "p": 0.0123}
    out["norm_score"].update(slope=8.54, degenerate=True, degenerate_reason=DEGENERATE_REASON, **stale)
    group = next(iter(out["dose_response"]))
    out["dose_response"][group]["controls"]["lifetime"].update(slope=0.0, exact_zero=True, degenerate=False, **stale)
    out["dose_response"][group]["targets"]["lifetime"].update(degenerate=True, degenerate_reason=DEGENERATE_REASON,
                                                              exact_zero=False, **stale)
    out["verdicts"]["H2"].update(effect=1.5, ci=[7.77, 9.99], p=0.0123, degenerate=True,
                                 degenerate_reason=DEGENERATE_REASON)
    return out


def test_terminal_lines_show_degenerate_and_exact_zero_without_ci_or_p(sink_run):
    from interventions.report.tables import stats_lines, verdict_table

    stats = _honesty_stats(analyze_run(sink_run, progress=False, report=False)[0])
    line = next(l for l in stats_lines(stats) if l.startswith("norm -> score"))
    assert f"degenerate: {DEGENERATE_REASON}" in line
    assert "7.77" not in line and "9.99" not in line and "0.012" not in line and "[" not in line
    h2 = next(detail for key, _, detail in verdict_table(stats) if key == "H2")
    assert "degenerate" in h2 and "7.77" not in h2 and "0.012" not in h2
    # a norm -> score result straight from stats/ with None CI and p does not crash the terminal
    stats["norm_score"].update(ci_low=None, ci_high=None, p=None)
    assert any("degenerate" in l for l in stats_lines(stats))


def test_report_md_shows_degenerate_exact_zero_and_pre_edit_honestly(sink_run, tmp_path):
    from interventions.report.render import render_report
    from interventions.stats.analysis import load_run

    run = tmp_path / sink_run.name
    shutil.copytree(sink_run, run, ignore=shutil.ignore_patterns("figures", "report.md"))
    stats = _honesty_stats(analyze_run(run, progress=False, report=False)[0])
    text = render_report(run, load_run(run), stats).read_text()
    pooled = next(l for l in text.splitlines() if l.startswith("| pooled slope"))
    assert f"degenerate: {DEGENERATE_REASON}" in pooled
    assert "7.77" not in text and "9.99" not in text and "0.012" not in text
    dose_rows = [l for l in text.splitlines() if "| lifetime | controls |" in l]
    assert dose_rows and all("| 0 | exact zero | – |" in l for l in dose_rows[:1])
    # the steepest layer is descriptive: no CI, no p
    steep = next(l for l in text.splitlines() if l.startswith("| steepest layer"))
    assert "| – (descriptive) | – |" in steep and "descriptive" in steep
    # layers before the edit are listed as not tested; stats.json agrees
    assert "before the edit (not tested)" in text
    pre = [r for r in stats["per_layer_effects"] if r.get("pre_edit")]
    assert pre and all(r["p"] is None and r["ci_low"] is None and r["p_adj"] is None for r in pre)


# ---------------------------------------------------------------------------------------------
# figures draw what stats/ computed
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analyzed(sink_run):
    from interventions.stats.analysis import load_run

    stats, _ = analyze_run(sink_run, progress=False, report=False)
    return load_run(sink_run), json.loads((sink_run / "stats.json").read_text())


def _intervals(rows) -> list[tuple[float, float]]:
    return sorted((round(r["ci_low"], 9), round(r["ci_high"], 9)) for r in rows
                  if r.get("ci_low") is not None and not r.get("exact_zero") and not r.get("degenerate"))


def _drawn(ax) -> list[tuple[float, float]]:
    from interventions.report.figure_style import bar_intervals

    return sorted((round(lo, 9), round(hi, 9)) for lo, hi in bar_intervals(ax))


@pytest.mark.parametrize("name, key, panels", [
    ("fig_dose", "dose_levels", {0: "lifetime", 1: "sink_score"}),
    ("fig_swap", "swap_rates", {0: None}),
    ("fig_mask", "mask_kl", {1: None}),
])
def test_figure_error_bars_are_the_stats_json_intervals(analyzed, name, key, panels):
    import matplotlib.pyplot as plt

    from interventions.report.figures import DRAW

    tables, stats = analyzed
    rows = stats["summaries"][key]
    assert _intervals(rows), f"no interval in stats.json summaries[{key!r}] to compare with"
    fig = DRAW[name](tables, stats)
    try:
        for index, measure in panels.items():
            expected = _intervals([r for r in rows if measure is None or r["measure"] == measure])
            assert _drawn(fig.axes[index]) == expected
    finally:
        plt.close(fig)


def test_scores_band_is_the_stats_json_interval(analyzed):
    import matplotlib.pyplot as plt

    from interventions.report.figures import DRAW

    tables, stats = analyzed
    fig = DRAW["fig_scores"](tables, stats)
    try:
        bands = [c for c in fig.axes[0].collections if c.get_label().startswith("secondary 95% CI")]
        assert len(bands) == 1
        verts = bands[0].get_paths()[0].vertices
        rows = [r for r in stats["summaries"]["secondary_score_by_layer"] if r["ci_low"] is not None]
        for r in rows:
            at = verts[np.isclose(verts[:, 0], r["layer"])][:, 1]
            assert np.isclose(at.min(), r["ci_low"]) and np.isclose(at.max(), r["ci_high"])
    finally:
        plt.close(fig)


def test_fig_dose_draws_one_series_per_token(analyzed):
    import matplotlib.pyplot as plt

    from interventions.report.figures import DRAW

    tables, stats = analyzed
    effects = tables["effects"]
    scale = effects[(effects["kind"] == "scale") & ~effects["is_control"].astype(bool)]
    expected = {f"{tok!r} ({ts})" for tok, ts in scale[["token", "target_set"]].drop_duplicates().itertuples(index=False)}
    controls = {f"{ts} (controls)" for ts in effects.loc[(effects["kind"] == "scale") & effects["is_control"].astype(bool),
                                                        "target_set"].unique()}
    fig = DRAW["fig_dose"](tables, stats)
    try:
        for ax in fig.axes[:2]:
            drawn = [line.get_gid() for line in ax.get_lines() if line.get_gid()]
            assert len(drawn) == len(set(drawn))
            assert set(drawn) == expected | controls
    finally:
        plt.close(fig)
    # the synthetic run's "weak" token responds and the "sinks" tokens do too, each on its own line
    assert len(expected) >= 2


def test_fig_norm_score_lines_are_the_fitted_model_through_the_fitted_rows(analyzed):
    import matplotlib.pyplot as plt

    from interventions.report.figures import DRAW
    from interventions.report.figures_fits import norm_score_points

    tables, stats = analyzed
    fit = stats["norm_score"]
    assert fit["estimable"] and fit["per_layer"]
    points = norm_score_points(tables, stats)
    assert len(points) == fit["n_rows"]  # the figure shows exactly the rows the fit used
    fig = DRAW["fig_norm_score"](tables, stats)
    try:
        lines = {line.get_gid(): line for line in fig.axes[0].get_lines() if (line.get_gid() or "").startswith("fit")}
        own = {r["layer"]: r for r in fit["per_layer"] if r["estimable"]}
        assert {f"fit-layer-{layer}" for layer in own} | {"fit-common"} == set(lines)
        for layer, row in own.items():
            x, y = lines[f"fit-layer-{layer}"].get_data()
            assert np.allclose(y, row["intercept"] + row["slope"] * np.asarray(x))
            g = points[points["layer"] == layer]
            # each layer's own OLS line: its residuals average to 0, so it runs through the middle of its points
            assert abs(float(np.mean(g["y"] - (row["intercept"] + row["slope"] * g["x"])))) < 1e-8
        # the common slope, once, through the mean of all the fit's rows
        x, y = lines["fit-common"].get_data()
        assert np.isclose((y[1] - y[0]) / (x[1] - x[0]), fit["slope"])
        assert np.isclose(y[0] + fit["slope"] * (points["x"].mean() - x[0]), points["y"].mean())
    finally:
        plt.close(fig)


def test_fig_norms_draws_secondary_key_and_value_norms_and_zero_norms(analyzed):
    import matplotlib.pyplot as plt

    from interventions.report.figures import DRAW

    tables, stats = analyzed
    fig = DRAW["fig_norms"](tables, stats)
    try:
        for ax, what in zip(fig.axes[:3], ("hidden", "key", "value")):
            assert "not recorded" not in ax.get_title()
            secondary = [line for line in ax.get_lines() if line.get_label().startswith("secondary sinks")]
            assert len(secondary) == 1, what
            assert np.allclose(secondary[0].get_ydata(), tables["clean_profile"].groupby("layer")[
                f"secondary_{what}_norm"].mean())
        value = fig.axes[2]
        assert value.get_yscale() == "linear"  # the primary value norm is exactly 0: a log axis would hide it
        primary = next(line for line in value.get_lines() if line.get_label().startswith("primary"))
        assert np.count_nonzero(np.asarray(primary.get_ydata()) == 0) == N_LAYERS - 1
    finally:
        plt.close(fig)


def test_inference_cells_never_show_a_ci_or_p_without_one():
    from interventions.report.formatting import inference_cells, inference_text

    assert inference_cells({"estimate": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p": 1.0}) == ("0", "exact zero", "–")
    value, ci, p = inference_cells({"estimate": 2.0, "ci_low": 2.0, "ci_high": 2.0, "p": 1e-9})
    assert ci.startswith("degenerate") and p == "–"
    assert inference_cells({"estimate": 0.5, "ci_low": None, "ci_high": None, "p": 0.06})[1:] == ("unbounded", "0.06")
    assert inference_cells({"estimate": 0.5, "ci_low": 0.1, "ci_high": None, "p": 0.03})[1] == "[0.1, inf]"
    assert inference_cells({"estimate": 0.2, "pre_edit": True, "ci_low": 0.1, "ci_high": 0.3, "p": 0.01}) == \
        ("0.2", "not tested (before the edit)", "–")
    assert inference_text({"estimate": 1.0, "ci_low": 0.5, "ci_high": 1.5}) == "1 [0.5, 1.5]"
