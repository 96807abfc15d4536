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

from .figure_style import COLORS, as_bool, fmt, frame, secondary_sinks, styled
from .formatting import inference_text


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


@styled
def draw_norm_score(tables: dict, stats: dict):
    """log(secondary / primary sink score) vs log l_start MLP-output norm: the fit's rows and fitted lines."""
    d = norm_score_points(tables, stats)
    if d.empty:
        return None
    fit = stats.get("norm_score") or {}
    layers = np.sort(d["layer"].unique())
    cmap = plt.get_cmap("viridis")
    norm = matplotlib.colors.Normalize(vmin=layers.min(), vmax=max(layers.max(), layers.min() + 1))
    fig, ax = plt.subplots(figsize=(6.6, 4.2))
    alive = d["alive"].to_numpy(bool) if "alive" in d.columns else np.ones(len(d), bool)
    sc = ax.scatter(d.loc[alive, "x"], d.loc[alive, "y"], c=d.loc[alive, "layer"], cmap=cmap, norm=norm, s=16,
                    alpha=0.8, edgecolors="none")
    handles = [matplotlib.lines.Line2D([], [], ls="", marker="o", color="#555555",
                                       label=f"sink alive at that layer ({int(alive.sum())} rows)")]
    if (~alive).any():
        ax.scatter(d.loc[~alive, "x"], d.loc[~alive, "y"], s=18, facecolors="none",
                   edgecolors=cmap(norm(d.loc[~alive, "layer"].to_numpy())), lw=0.9)
        handles.append(matplotlib.lines.Line2D([], [], ls="", marker="o", mfc="none", color="#555555",
                                               label=f"after the sink died ({int((~alive).sum())} rows, in the fit)"))
    lines = fitted_lines(fit, d)
    for layer, (x0, x1, y0, y1) in lines.items():
        ax.plot([x0, x1], [y0, y1], color=cmap(norm(layer)), lw=1.4, gid=f"fit-layer-{layer}")
    if lines:
        label = (f"fitted model: common slope {inference_text(fit, estimate='slope')}"
                 f"\n$R^2$ {fmt(fit.get('r2'), 2)} (within layer {fmt(fit.get('r2_within'), 2)}); "
                 + ("one intercept per layer" if len(lines) > 1 else "one intercept"))
        handles.append(matplotlib.lines.Line2D([], [], color="black", lw=1.4, label=label))
        if fit.get("steepest_layer") is not None:
            handles.append(matplotlib.lines.Line2D(
                [], [], ls="", label=f"steepest layer {fit['steepest_layer']} (descriptive, no CI): "
                                     f"slope {fmt(fit.get('steepest_slope'))}"))
    else:
        handles.append(matplotlib.lines.Line2D([], [], ls="", label=f"no fit: {fit.get('reason', 'not estimable')}"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False)
    cbar = fig.colorbar(sc, ax=ax, label="attention layer")
    cbar.locator = matplotlib.ticker.MaxNLocator(integer=True)
    cbar.update_ticks()
    ax.set_xlabel("log $\\|f^{l_{start}}\\|_2$ (MLP output norm at $l_{start}$, natural log)")
    ax.set_ylabel("log(secondary / primary sink score)")
    n_sinks = int(len(d[["trace", "position"]].drop_duplicates()))
    window = fit.get("window")
    ax.set_title(f"Sink-score ratio vs MLP norm: {n_sinks} sinks, {len(d)} sink-layers, {d['trace'].nunique()} "
                 "traces" + (f"\n(layers $l_{{start}}$+1 .. $l_{{start}}$+{window} of every sink)" if window else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
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
                    label=f"segmented fit, {best} breakpoint(s) (best segmented by BIC)" if i == 0 else None)
        for bp in chosen.get("breakpoints", []):
            ax.axvline(bp, color="#e67e22", lw=0.8, ls=":")
    elif fit.get("linear"):
        lin = fit["linear"]
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, lin["intercept"] + lin["slope"] * xs, color="#e67e22", ls="--", lw=1.4,
                label=f"linear fit, slope {inference_text(lin, estimate='slope')}")
    sp = fit.get("spearman") or {}
    if sp.get("rho") is not None:
        ax.plot([], [], ls="",
                label=f"Spearman $\\rho$ {fmt(sp['rho'], 2)}, permutation p {fmt(sp.get('p_perm'), 2)}")
    best_bic = (fit.get("comparison") or {}).get("best")
    if best_bic:
        ax.plot([], [], ls="", label=f"lowest BIC (noise floor 1/12 layer$^2$): {best_bic}")
    if not fit.get("estimable", False):
        ax.plot([], [], ls="", label=f"no fit: {fit.get('reason', 'not estimable')}")
    elif not fit.get("plateaus_estimable", True):
        ax.plot([], [], ls="", label="plateaus not estimable")
    ax.set_xlabel("log $\\|f^{l_{start}}\\|_2$ (MLP output norm at $l_{start}$, natural log)")
    ax.set_ylabel("lifetime (layers; points jittered ±0.12)")
    ax.set_title(f"Sink lifetime vs MLP norm: {len(sec)} sinks, {sec['trace'].nunique()} traces")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", frameon=True, framealpha=0.85)
    fig.tight_layout()
    return fig
