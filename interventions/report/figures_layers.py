"""The figure every condition gets, whatever its kind: its per-layer effect on each per-layer measure.

It reads only ``stats.json``'s ``per_layer_effects`` (intervened minus clean, mean over targets, with
the interval the statistics computed), so a kind or a measure registered later is drawn with no change
here: one panel per measure, one line per condition.
"""

from __future__ import annotations

import pandas as pd

from .figure_style import COLORS, errorbars, points, styled

MEASURES_SHOWN = 4
"""Panels at most (the first per-layer measures of the run, in registry order)."""


def layer_effect_rows(stats: dict) -> pd.DataFrame:
    """``per_layer_effects`` as a frame with ``estimate`` (the effect), tested layers only (not before the edit)."""
    rows = pd.DataFrame(stats.get("per_layer_effects") or [])
    if rows.empty:
        return rows
    if "pre_edit" in rows.columns:
        rows = rows[~rows["pre_edit"].fillna(False).astype(bool)]
    return rows.assign(estimate=rows["effect"].astype(float)).dropna(subset=["estimate"])


@styled
def draw_layer_effects(tables: dict, stats: dict):
    import matplotlib.pyplot as plt

    rows = layer_effect_rows(stats)
    if rows.empty:
        return None
    measures = list(dict.fromkeys(rows["measure"]))[:MEASURES_SHOWN]
    conditions = list(dict.fromkeys(rows["condition"]))
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(measures), figsize=(3.6 * len(measures), 3.2), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        for i, cond in enumerate(conditions):
            r = rows[(rows["measure"] == measure) & (rows["condition"] == cond)].sort_values("layer")
            if r.empty:
                continue
            color = colors(i % 10)
            x = r["layer"].to_numpy(float) + (i - (len(conditions) - 1) / 2) * 0.08  # keep overlapping bars apart
            ax.plot(x, r["estimate"], color=color, lw=1, label=cond)
            errorbars(ax, x, r, color=color)
            points(ax, x, r, color=color, size=10)
        ax.axhline(0, color=COLORS["median"], lw=0.6)
        ax.set_title(measure)
        ax.set_xlabel("layer")
        ax.set_ylabel("intervened - clean (mean over targets)")
    axes[0][0].legend(loc="best", fontsize=6)
    fig.tight_layout()
    return fig


def caption_layer_effects(stats: dict) -> str:
    rows = layer_effect_rows(stats)
    n_cond = rows["condition"].nunique() if len(rows) else 0
    return (f"Per-layer effect of each of the {n_cond} conditions (any kind) on the run's per-layer measures: "
            "intervened minus clean, mean over targets, from the edited layer on, with the statistics' 95% "
            "intervals (hollow markers: exact zero or degenerate, no interval). Layers before the edit are left "
            "out (nothing can change there).")
