"""Figures of the observational fits: MLP-output norm -> sink-score ratio (paper Fig. 7 mid) and
norm -> lifetime (Fig. 7 right).

The points are the rows the fit used (:func:`interventions.stats.norm_score_rows`: the same window,
the same drops) and the lines are the fitted model from ``stats.json``, on the same axes and
transform, so a line that misses its points would mean a wrong fit, not a wrong drawing.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from interventions.stats._common import as_bool

from .figure_style import COLORS, frame, secondary_sinks, styled
from .formatting import fmt_num, fmt_p, inference_text


def norm_score_input(tables: dict):
    """The table the norm -> score fit reads: ``sink_window`` (fixed window, dead layers too) when the
    run wrote it, else ``sink_layers`` (the rule of :func:`interventions.stats.analysis.compute_stats`)."""
    window = frame(tables, "sink_window")
    return window if len(window) else frame(tables, "sink_layers")


def norm_score_points(tables: dict, stats: dict):
    """The fit's rows (``x`` log norm, ``y`` log ratio, ``layer``, ``alive``) or an empty frame."""
    from interventions.stats import norm_score_rows

    rows = norm_score_input(tables)
    if rows.empty:
        return rows
    ns = stats.get("norm_score") or {}
    window = ns.get("window") if "window" in ns else None
    return norm_score_rows(rows, window=window)


def fitted_lines(fit: dict, points) -> dict:
    """``{layer: (x_low, x_high, y_low, y_high)}``: the fitted model over each layer's range of x."""
    if not fit.get("estimable") or fit.get("slope") is None or points.empty:
        return {}
    slope = float(fit["slope"])
    intercepts = {row["layer"]: float(row["intercept"]) for row in fit.get("layer_intercepts") or []}
    if not intercepts and fit.get("intercept") is not None:  # stats without per-layer intercepts: one line
        intercepts = {layer: float(fit["intercept"]) for layer in points["layer"].unique()}
    lines = {}
    for layer, g in points.groupby("layer"):
        if layer not in intercepts:
            continue
        a = intercepts[layer]
        x0, x1 = float(g["x"].min()), float(g["x"].max())
        if x0 == x1:
            x0, x1 = x0 - 0.05, x1 + 0.05
        lines[layer] = (x0, x1, a + slope * x0, a + slope * x1)
    return lines


def layer_colors(layers) -> dict:
    """One distinct colour per layer: the qualitative tab10 cycle up to ten layers (neighbouring
    layers never share a hue, as they do on a sequential map), evenly spaced turbo beyond."""
    layers = list(layers)
    if len(layers) <= 10:
        palette = plt.get_cmap("tab10")
        return {layer: palette(i) for i, layer in enumerate(layers)}
    cmap = plt.get_cmap("turbo")
    return {layer: cmap(v) for layer, v in zip(layers, np.linspace(0.05, 0.95, len(layers)))}


def per_layer_lines(fit: dict, points) -> dict:
    """``{layer: (x_low, x_high, y_low, y_high, row)}``: each layer's own OLS line (``per_layer``
    slope and intercept of ``stats.json``) over that layer's range of x."""
    rows = {r["layer"]: r for r in fit.get("per_layer") or [] if r.get("estimable") and r.get("slope") is not None
            and r.get("intercept") is not None}
    lines = {}
    for layer, g in points.groupby("layer"):
        row = rows.get(layer)
        if row is None:
            continue
        x0, x1 = float(g["x"].min()), float(g["x"].max())
        if x0 == x1:
            x0, x1 = x0 - 0.05, x1 + 0.05
        b, a = float(row["slope"]), float(row["intercept"])
        lines[layer] = (x0, x1, a + b * x0, a + b * x1, row)
    return lines


@styled
def draw_norm_score(tables: dict, stats: dict):
    """log(secondary / primary sink score) vs log l_start MLP-output norm: the fit's rows, each
    layer's own fitted line (``per_layer``) and the pooled common slope as one line.

    The common slope (one intercept per layer) is drawn once, through the mean of all rows: it is
    the average within-layer slope, and per-layer lines show how far each layer is from it. Runs
    whose stats lack per-layer slopes get the common-slope model's line in each layer instead.
    """
    d = norm_score_points(tables, stats)
    if d.empty:
        return None
    fit = stats.get("norm_score") or {}
    layers = [int(v) if float(v).is_integer() else v for v in np.sort(d["layer"].unique())]
    colors = layer_colors(layers)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    alive = d["alive"].to_numpy(bool) if "alive" in d.columns else np.ones(len(d), bool)
    point_colors = [colors[v] for v in d["layer"]]
    ax.scatter(d.loc[alive, "x"], d.loc[alive, "y"], c=[c for c, a in zip(point_colors, alive) if a], s=16,
               alpha=0.85, edgecolors="none", zorder=3)
    handles = [matplotlib.lines.Line2D([], [], ls="", marker="o", color="#555555",
                                       label=f"sink alive at that layer ({int(alive.sum())} rows)")]
    if (~alive).any():
        ax.scatter(d.loc[~alive, "x"], d.loc[~alive, "y"], s=18, facecolors="none",
                   edgecolors=[c for c, a in zip(point_colors, alive) if not a], lw=0.9, zorder=3)
        handles.append(matplotlib.lines.Line2D([], [], ls="", marker="o", mfc="none", color="#555555",
                                               label=f"after the sink died ({int((~alive).sum())} rows, in the fit)"))
    own = per_layer_lines(fit, d)
    layer_handles = []
    for layer in layers:
        n_rows = int((d["layer"] == layer).sum())
        if layer in own:
            x0, x1, y0, y1, row = own[layer]
            ax.plot([x0, x1], [y0, y1], color=colors[layer], lw=1.5, gid=f"fit-layer-{layer}", zorder=2)
            label = f"layer {layer}: slope {inference_text(row, estimate='slope')} ({n_rows} rows)"
            layer_handles.append(matplotlib.lines.Line2D([], [], color=colors[layer], lw=1.5, marker="o", ms=4,
                                                         label=label))
        else:
            layer_handles.append(matplotlib.lines.Line2D([], [], ls="", marker="o", ms=4, color=colors[layer],
                                                         label=f"layer {layer} ({n_rows} rows; no slope of its own)"))
    if not own:  # stats without per-layer slopes: the common-slope model, one intercept per layer
        for layer, (x0, x1, y0, y1) in fitted_lines(fit, d).items():
            ax.plot([x0, x1], [y0, y1], color=colors[layer], lw=1.4, gid=f"fit-layer-{layer}", zorder=2)
    if fit.get("estimable") and fit.get("slope") is not None:
        slope = float(fit["slope"])
        xm, ym = float(d["x"].mean()), float(d["y"].mean())
        xs = np.array([float(d["x"].min()), float(d["x"].max())])
        ax.plot(xs, ym + slope * (xs - xm), color="black", lw=1.6, ls="--", gid="fit-common", zorder=4)
        handles.append(matplotlib.lines.Line2D(
            [], [], color="black", lw=1.6, ls="--",
            label=f"common slope {inference_text(fit, estimate='slope')}\n(one intercept per layer; drawn through "
                  f"the mean of all rows)\n$R^2$ {fmt_num(fit.get('r2'), 2)}, within layer {fmt_num(fit.get('r2_within'), 2)}"))
    else:
        handles.append(matplotlib.lines.Line2D([], [], ls="", label=f"no fit: {fit.get('reason', 'not estimable')}"))
    if fit.get("steepest_layer") is not None:
        handles.append(matplotlib.lines.Line2D([], [], ls="", label=f"steepest: layer {fit['steepest_layer']} "
                                                                    "(descriptive, no CI)"))
    ax.set_xlabel("log $\\|f^{l_{start}}\\|_2$ (MLP output norm at $l_{start}$, natural log)")
    ax.set_ylabel("log(secondary / primary sink score)")
    n_sinks = int(len(d[["trace", "position"]].drop_duplicates()))
    window = fit.get("window")
    ax.set_title(f"Sink-score ratio vs MLP norm: {n_sinks} sinks, {len(d)} sink-layers, {d['trace'].nunique()} "
                 "traces" + (f"\n(layers $l_{{start}}$+1 .. $l_{{start}}$+{window} of every sink)" if window else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()  # before the legend: the legend sits outside and must not shrink the axes
    ax.legend(handles=layer_handles + handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              title="attention layer (per-layer OLS, 95% CI)", title_fontsize=8, alignment="left")
    return fig


@styled
def draw_norm_lifetime(tables: dict, stats: dict):
    """Lifetime vs log l_start MLP-output norm, with the isotonic steps and the best segmented fit."""
    sec = secondary_sinks(tables).dropna(subset=["mlp_out_norm", "lifetime"])
    sec = sec[sec["mlp_out_norm"] > 0]
    if sec.empty:
        return None
    fit = stats.get("norm_lifetime") or {}
    x = np.log(sec["mlp_out_norm"].astype(float).to_numpy())
    y = sec["lifetime"].astype(float).to_numpy()
    cens = as_bool(sec["censored"]).to_numpy() if "censored" in sec.columns else np.zeros(len(sec), bool)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, size=y.size)
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    ax.scatter(x[~cens], y[~cens] + jitter[~cens], s=18, color=COLORS["secondary"], alpha=0.7,
               label=f"secondary sinks (n={int((~cens).sum())})")
    if cens.any():
        ax.scatter(x[cens], y[cens] + jitter[cens], s=22, facecolors="none", edgecolors=COLORS["secondary"],
                   label=f"alive at last layer (censored, n={int(cens.sum())})")
    iso = fit.get("isotonic") or {}
    if iso.get("blocks"):
        blocks = iso["blocks"]
        edges = [blocks[0]["x_low"]] + [(a["x_high"] + b["x_low"]) / 2 for a, b in zip(blocks[:-1], blocks[1:])] \
            + [blocks[-1]["x_high"]]
        xs, ys = [], []
        for b, left, right in zip(blocks, edges[:-1], edges[1:]):
            xs += [left, right]
            ys += [b["level"], b["level"]]
        ax.plot(xs, ys, color="black", lw=1.6,
                label=f"isotonic fit ({len(iso['blocks'])} blocks, {len(iso.get('plateaus', []))} plateaus)")
    seg = fit.get("segmented") or {}
    best = seg.get("best")
    chosen = next((f for f in seg.get("fits", []) if f.get("n_breakpoints") == best), None)
    if chosen:
        for i, s in enumerate(chosen["segments"]):
            xs = np.array([s["x_low"], s["x_high"]])
            ax.plot(xs, s["intercept"] + s["slope"] * xs, color="#e67e22", lw=1.4, ls="--",
                    label=f"segmented fit, {best} breakpoint(s) (best segmented fit by BIC)" if i == 0 else None)
        for i, bp in enumerate(chosen.get("breakpoints", [])):
            ax.axvline(bp, color="#e67e22", lw=0.9, ls=":", gid=f"breakpoint-{i}",
                       label=f"breakpoint at log norm {fmt_num(bp)} (norm {fmt_num(np.exp(bp))})")
    elif fit.get("linear"):
        lin = fit["linear"]
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, lin["intercept"] + lin["slope"] * xs, color="#e67e22", ls="--", lw=1.4,
                label=f"linear fit, slope {inference_text(lin, estimate='slope')}")
    sp = fit.get("spearman") or {}
    if sp.get("rho") is not None:  # written as report.md writes it (fmt_num, fmt_p)
        ax.plot([], [], ls="", label=f"Spearman $\\rho$ {fmt_num(sp['rho'])}, permutation p {fmt_p(sp.get('p_perm'))}")
    comparison = fit.get("comparison") or {}
    best_bic = comparison.get("best")
    if best_bic:
        bic = comparison.get("bic") or {}
        others = ", ".join(f"{k} {fmt_num(v, 4)}" for k, v in bic.items() if k != best_bic)
        ax.plot([], [], ls="", label=f"lowest BIC (noise floor 1/12 layer$^2$): {best_bic}"
                                     + (f" {fmt_num(bic[best_bic], 4)}\n(vs {others})" if best_bic in bic else ""))
    if not fit.get("estimable", False):
        ax.plot([], [], ls="", label=f"no fit: {fit.get('reason', 'not estimable')}")
    elif not fit.get("plateaus_estimable", True):
        ax.plot([], [], ls="", label="plateaus not estimable")
    ax.set_xlabel("log $\\|f^{l_{start}}\\|_2$ (MLP output norm at $l_{start}$, natural log)")
    ax.set_ylabel("lifetime (layers; points jittered ±0.12)")
    ax.set_title(f"Sink lifetime vs MLP norm: {len(sec)} sinks, {sec['trace'].nunique()} traces")
    ax.grid(alpha=0.3)
    fig.tight_layout()  # before the legend, which sits outside the axes
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig
