"""``intervene report`` on a detect folder draws its figures (levels, tokens, norms across layers)
into ``figures/`` and embeds them in ``report.md``, with numbers that are the folder's own."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

N_TRACES = 4


@pytest.fixture(scope="module")
def detect_folder(planted, planted_truth, tmp_path_factory):
    from interventions.detection.job import detect
    from interventions.report.detection import render_detection_report
    from interventions.testbed.planted import planted_traces

    root = tmp_path_factory.mktemp("detect_figures")
    traces = root / "traces.jsonl"
    texts = planted_traces(planted_truth, n=N_TRACES, seed=0, gated=True)
    traces.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = root / "out"
    detect(planted, traces, out, progress=False)
    render_detection_report(out)
    return out


def test_detect_report_writes_and_embeds_its_figures(detect_folder):
    from PIL import Image

    report = (detect_folder / "report.md").read_text()
    for name in ("fig_levels", "fig_tokens", "fig_norms"):
        png = detect_folder / "figures" / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 5_000, name
        width, height = Image.open(png).size
        assert width > 300 and height > 150
        assert f"](figures/{name}.png)" in report and f"*{name}: " in report
    assert "not drawn" not in report


def test_detect_figures_draw_the_folders_numbers(detect_folder):
    import matplotlib.pyplot as plt

    from interventions.detection.job import load_detection
    from interventions.report.detection_figures import draw_tokens, norm_profile
    from interventions.report.figures_clean import draw_levels

    result = load_detection(detect_folder)
    secondary = result.sinks[result.sinks.kind == "secondary"]
    assert len(secondary) > 0
    # levels: the heatmap's cells are the counts of levels.csv
    fig = draw_levels({"clean_sinks": result.sinks}, {})
    try:
        cells = {(int(round(t.get_position()[0])), int(round(t.get_position()[1]))): int(t.get_text())
                 for t in fig.axes[0].texts}
    finally:
        plt.close(fig)
    assert cells == {(r.l_start, r.lifetime): r.count for r in result.levels.itertuples()}
    # tokens: one bar per token, its length the count of tokens.csv
    fig = draw_tokens(result.tokens)
    try:
        bars = sorted(int(p.get_width()) for p in fig.axes[0].patches)
    finally:
        plt.close(fig)
    assert bars == sorted(result.tokens["count"].astype(int))
    # norms: the primary sink's hidden norm per layer is profiles.parquet at the reference position
    profile = norm_profile(detect_folder, result.sinks, result.traces)
    assert profile["trace"].nunique() == N_TRACES
    raw = pd.read_parquet(detect_folder / "profiles.parquet")
    trace0 = result.traces.iloc[0]
    at_ref = raw[(raw.trace == trace0.trace) & (raw.position == trace0.reference)].sort_values("layer")
    mine = profile[profile.trace == trace0.trace].sort_values("layer")
    assert np.allclose(mine["primary_hidden_norm"], at_ref["hidden_norm"])
    assert (mine["primary_hidden_norm"].iloc[1:] > 10 * mine["median_hidden_norm"].iloc[1:]).all()  # a sink
    n_sec = int((secondary.trace == trace0.trace).sum())
    assert (mine["n_secondary"] == n_sec).all() and mine["secondary_hidden_norm"].notna().all()
