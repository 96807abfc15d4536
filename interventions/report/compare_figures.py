"""Figures of a run comparison (:class:`interventions.studies.compare_runs.Comparison`): pure functions
``(comparison, path) -> Path``.

- ``effect_lines``: each run's (or condition's) effect against the aligned layer, with its CI
  as a band; one panel per compared condition.
- ``difference_heatmap``: difference to the reference (rows: run vs reference x condition;
  columns: aligned layer), ``*`` where the adjusted p is below 0.05, ``0`` on exact zeros.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 120
MEASURE_LABEL = {"is_sink": "change in sink fraction", "hidden_cos": "change in cos to primary sink",
                 "hidden_norm": "change in hidden-state norm", "mlp_out_norm": "change in MLP-output norm",
                 "sink_score": "change in sink score", "primary_sink_score": "change in primary sink score"}


def _axis_label(settings: dict) -> str:
    label = settings.get("axis", "layer")
    if settings.get("align") == "depth":
        label += f" (layer / (L-1), {settings.get('bins')} bins)"
    return label


def effect_lines(comparison, path: str | Path) -> Path:
    """Per run (or condition): effect by aligned layer with its CI band; one panel per condition."""
    effects, settings = comparison.effects, comparison.settings
    by_condition = settings.get("align") != "condition"
    panels = list(dict.fromkeys(effects["condition"])) if by_condition else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, cond in zip(axes[0], panels):
        rows = effects if cond is None else effects[effects["condition"] == cond]
        for i, (name, g) in enumerate(rows.groupby("series", sort=False)):
            g = g.sort_values("x")
            x, y = g["x"].to_numpy(float), g["effect"].to_numpy(float)
            # A point without a CI (exact zero, every trace agreeing) is drawn with a zero-width band.
            low = np.where(np.isfinite(g["ci_low"]), g["ci_low"], y)
            high = np.where(np.isfinite(g["ci_high"]), g["ci_high"], y)
            color = f"C{i}"
            ax.plot(x, y, marker="o", ms=3.5, lw=1.6, color=color, label=name, ls="-" if i == 0 else "--")
            ax.fill_between(x, low, high, color=color, alpha=0.18, lw=0)
        ax.axhline(0, color="0.6", lw=0.8)
        if settings.get("align") == "l_start":
            ax.axvline(0, color="0.3", lw=0.8, ls=":")
            ax.annotate("l_start", (0, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=8, color="0.3")
        ax.set_xlabel(_axis_label(settings))
        ax.set_title(cond or "conditions of one model", fontsize=9)
        ax.legend(fontsize=8, frameon=False)
    axes[0][0].set_ylabel(MEASURE_LABEL.get(settings.get("measure"), settings.get("measure", "effect")) +
                          f"\n({settings.get('group', 'targets')}, intervened - clean)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def difference_heatmap(comparison, path: str | Path) -> Path:
    """Difference to the reference, condition (and run) x aligned layer."""
    table, settings = comparison.table, comparison.settings
    many_conditions = table["condition"].nunique() > 1
    labels = []
    for (a, b), r, c, rr, rc in zip(comparison.row_sides(), table["run"], table["condition"], table["ref_run"],
                                    table["ref_condition"]):
        labels.append(f"{a} - {b}" + (f"\n{c}" if c == rc and r != rr and many_conditions else ""))
    t = table.assign(row=labels)
    rows = list(dict.fromkeys(t["row"]))
    xs = sorted(t["x"].unique())
    grid = np.full((len(rows), len(xs)), np.nan)
    marks = np.full(grid.shape, "", dtype=object)
    for _, r in t.iterrows():
        i, j = rows.index(r["row"]), xs.index(r["x"])
        grid[i, j] = r["diff"]
        if r["ci_method"] == "exact zero":
            marks[i, j] = "0"
        else:
            star = "*" if np.isfinite(r["p_adj"]) and r["p_adj"] < 0.05 else ""
            marks[i, j] = (f"{r['diff']:.2g}" if len(xs) <= 16 else "") + star
    vmax = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(xs) + 3.0), 1.6 + 0.5 * len(rows)))
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(xs)):
            if marks[i, j]:
                strong = abs(grid[i, j]) > 0.6 * vmax
                ax.text(j, i, marks[i, j], ha="center", va="center", fontsize=7.5,
                        color="white" if strong else "0.15")
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs], fontsize=8, rotation=90 if len(xs) > 24 else 0)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel(_axis_label(settings))
    cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cbar.set_label("difference", fontsize=8)
    ax.set_title(f"{settings.get('measure')} ({settings.get('group')}): difference to the reference\n"
                 f"* {settings.get('correction')}-adjusted p < 0.05;  0: exact zero (no CI)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
