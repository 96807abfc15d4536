"""Figures of the interventions: mean-swap suppression by layer (paper Fig. 8), dose-response of
scaled MLP output, and attention masking.

Every mean and interval drawn here is a row of ``stats["summaries"]``
(:func:`interventions.stats.figure_summaries`): tokens are never pooled across target sets or
tokens, and a mean without an interval (exact zero, degenerate) is drawn without a bar.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from interventions.spec.conditions import kinds_with
from interventions.stats._common import as_bool

from .figure_style import (
    COLORS,
    NO_BAR,
    SITE_LABEL,
    SITE_ORDER,
    effects_with,
    errorbars,
    has_interval,
    int_layers,
    points,
    styled,
    summary_rows,
)


def _no_bar_note(ax, rows) -> None:
    missing = int((~has_interval(rows)).sum()) if len(rows) else 0
    if missing:
        ax.plot([], [], ls="", marker="o", mfc="white", color="#555555", label=f"{missing} point(s) with {NO_BAR}")


@styled
def draw_swap(tables: dict, stats: dict):
    """Suppression rate vs swap layer for each site, with trace-bootstrap 95% intervals."""
    rates = summary_rows(stats, "swap_rates")
    if rates.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.6, 4.0))
    sites = [s for s in SITE_ORDER if s in set(rates["site"])] + sorted(set(rates["site"]) - set(SITE_ORDER))
    markers = {"block_output": "o", "attention_output": "^", "mlp_output": "s"}
    offsets = np.linspace(-0.12, 0.12, len(sites)) if len(sites) > 1 else [0.0]
    palette = plt.get_cmap("tab10")
    for i, (off, site) in enumerate(zip(offsets, sites)):
        g = rates[rates["site"] == site].sort_values("intervened_layer")
        x = g["intervened_layer"].to_numpy(float) + off
        color = palette(i % 10)
        ax.plot(x, g["estimate"], marker=markers.get(site, "o"), ms=0, lw=1.3, color=color,
                label=f"{SITE_LABEL.get(site, site)} (n={int(g['n_units'].max())} sinks per layer)")
        points(ax, x, g, color=color, marker=markers.get(site, "o"), size=26)
        errorbars(ax, x, g, color=color)
    _no_bar_note(ax, rates)
    e = effects_with(tables, "SWEEPS_LAYERS")
    if len(e) and "clean_l_start" in e.columns:
        ls = e.loc[~e["is_control"] & (e["clean_lifetime"] > 0), "clean_l_start"]
        if ls.nunique() == 1:
            ax.axvline(float(ls.iloc[0]), color="black", ls=":", lw=1, label=f"$l_{{start}}$ = {int(ls.iloc[0])}")
    layers = np.sort(rates["intervened_layer"].unique())
    ax.set_xticks(layers if len(layers) <= 25 else layers[:: int(np.ceil(len(layers) / 25))])
    ax.set_ylim(-0.05, 1.08)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("swap layer (layer whose activation is replaced by the mean non-sink token)")
    ax.set_ylabel("future sink suppressed (% of targets)")
    n_tr = int(rates["n_traces"].max())
    ax.set_title(f"Mean swap: suppression by layer\n({n_tr} traces; mean, 95% CI by trace bootstrap)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.24), frameon=False, ncol=1)
    fig.tight_layout()
    return fig


DODGE = 0.06
"""Largest sideways offset of a dose series, in natural-log units of the factor (x 1.06)."""
DOSE_PANELS = (("lifetime", "lifetime after scaling (layers)", "Lifetime vs factor"),
               ("sink_score", "sink score one layer after the edit", "Sink score vs factor"))


@styled
def draw_dose(tables: dict, stats: dict):
    """Lifetime and sink score (read one layer after the edit) vs scale factor (log x), one series per
    token of each target set and one per control set (dashed, grey)."""
    levels = summary_rows(stats, "dose_levels")
    if levels.empty:
        return None
    levels["is_control"] = as_bool(levels["is_control"])
    series = list(dict.fromkeys(levels.sort_values(["is_control", "target_set", "series"])["series"]))
    targets = [s for s in series if not levels.loc[levels["series"] == s, "is_control"].iloc[0]]
    palette = plt.get_cmap("tab10")
    colors = {s: palette(i % 10) for i, s in enumerate(targets)}
    control_styles = ["#7f8c8d", "#34495e", "#b3b6b7", "#5d6d7e"]
    # Series that coincide (a non-sink target set and the controls both stay at 0) must stay
    # distinguishable: each series gets its own marker and a small sideways offset on the log
    # factor axis (the tick at each factor is the true factor; DODGE says how far series sit from it).
    target_markers = ["o", "^", "D", "v", "P", "X", "<", ">", "h", "*"]
    control_markers = ["s", "p", "d", "8"]
    markers, ti, ci_m = {}, 0, 0
    for name in series:
        if name in targets:
            markers[name], ti = target_markers[ti % len(target_markers)], ti + 1
        else:
            markers[name], ci_m = control_markers[ci_m % len(control_markers)], ci_m + 1
    dodge = dict(zip(series, np.exp(np.linspace(-DODGE, DODGE, len(series))) if len(series) > 1 else [1.0]))
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.1))
    all_factors = sorted(set(levels["factor"].astype(float)))
    for ax, (measure, ylabel, title) in zip(axes, DOSE_PANELS):
        rows_m = levels[levels["measure"] == measure]
        ci = 0
        for name in series:
            g = rows_m[rows_m["series"] == name].sort_values("factor")
            if g.empty:
                continue
            control = bool(g["is_control"].iloc[0])
            color = control_styles[ci % len(control_styles)] if control else colors[name]
            ci += control
            x = g["factor"].to_numpy(float) * dodge[name]
            label = f"{name}, n={int(g['n_units'].max())}"
            z = 1 if control else 2  # targets on top of the controls they may coincide with
            ax.plot(x, g["estimate"], ls=(0, (4, 2)) if control else "-", lw=1.3, color=color, label=label, gid=name,
                    zorder=z, marker=markers[name], ms=0)
            points(ax, x, g, color=color, marker=markers[name], zorder=z + 0.5, size=30 if control else 24)
            errorbars(ax, x, g, color=color)
        _no_bar_note(ax, rows_m)
        ax.axvline(1.0, color="#999999", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xticks(all_factors)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"x{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("scale factor of the edited MLP output (log scale; x1 = clean run)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} (mean, 95% CI)")
        ax.grid(alpha=0.3)
    handles: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if isinstance(h, matplotlib.lines.Line2D) and h.get_gid() in markers:  # show the series' marker
                h = matplotlib.lines.Line2D([], [], color=h.get_color(), ls=h.get_linestyle(), lw=h.get_linewidth(),
                                            marker=markers[h.get_gid()], ms=5)
            handles.setdefault(lab, h)
    if len(series) > 1:
        handles[f"series drawn side by side (up to x{np.exp(DODGE):.2f} off their factor) so equal values stay "
                "visible"] = matplotlib.lines.Line2D([], [], ls="")
    n_tr = int(levels["n_traces"].max())
    fig.suptitle(f"Dose-response of scaled MLP output ({n_tr} traces; one line per token, controls dashed)")
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=3, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    return fig


def _short(condition: str) -> str:
    """A mask condition's id without its kind's name (every condition in the mask figure is of a masking kind)."""
    kind = next((k for k in kinds_with("MASKS_TARGET_KEYS") if condition.startswith(f"{k}.")), "")
    return condition.removeprefix(f"{kind}.") if kind else condition


@styled
def draw_mask(tables: dict, stats: dict):
    """Primary sink score per layer clean vs masked (mean over traces), and KL per condition."""
    e = effects_with(tables, "MASKS_TARGET_KEYS")
    if e.empty:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.9), gridspec_kw={"width_ratios": [1.4, 1]})
    targets = e[~e["is_control"]]
    per_trace = targets.groupby(["condition", "trace", "layer"])[
        ["primary_sink_score", "clean_primary_sink_score"]].mean().reset_index()
    clean = per_trace.groupby("layer")["clean_primary_sink_score"].mean()
    ax1.plot(clean.index, clean.to_numpy(), "-", color="black", lw=2, label="clean")
    palette = plt.get_cmap("tab10")
    conditions = list(dict.fromkeys(e["condition"]))
    styles = [("--", "o"), (":", "^"), ("-.", "s"), ((0, (5, 1, 1, 1)), "D")]  # conditions that coincide stay visible
    for i, cond in enumerate(conditions):
        g = per_trace[per_trace["condition"] == cond].groupby("layer")["primary_sink_score"].mean()
        if len(g):
            ls, marker = styles[i % len(styles)]
            ax1.plot(g.index, g.to_numpy(), ls=ls, marker=marker, ms=4 + 1.5 * (len(conditions) - 1 - i), mfc="none",
                     color=palette(i % 10), label=f"masked: {_short(cond)}")
    if "masked" in targets.columns:
        masked_layers = sorted(targets.loc[as_bool(targets["masked"]), "layer"].unique())
        for layer in masked_layers:
            ax1.axvspan(layer - 0.5, layer + 0.5, color="#f5b041", alpha=0.12, lw=0)
        if masked_layers:
            ax1.plot([], [], color="#f5b041", alpha=0.4, lw=6, label="layers masked for some target")
    ax1.set_xlabel("layer")
    int_layers(ax1)
    ax1.set_ylabel("primary (BOS) sink score")
    n_t = int(len(targets[["trace", "position"]].drop_duplicates()))
    ax1.set_title(f"Primary sink score, clean vs masked\n(target forwards, mean; {n_t} targets, "
                  f"{targets['trace'].nunique()} traces)")
    ax1.grid(alpha=0.3)
    ax1.legend(loc="best", frameon=True, framealpha=0.85)

    kl = summary_rows(stats, "mask_kl")
    width = 0.38
    notes = []
    if len(kl):
        kl["is_control"] = as_bool(kl["is_control"])
        for j, is_control in enumerate((False, True)):
            g = kl[kl["is_control"] == is_control].set_index("condition").reindex(conditions).dropna(
                subset=["estimate"]).reset_index()
            if g.empty:
                continue
            xs = np.array([conditions.index(c) for c in g["condition"]], float) + (j - 0.5) * width
            color = COLORS["control"] if is_control else COLORS["secondary"]
            ax2.bar(xs, g["estimate"], width=width, color=color,
                    label=f"{'controls' if is_control else 'targets'} (n={'/'.join(str(int(n)) for n in g['n_units'])})")
            errorbars(ax2, xs, g, color="black")
        _no_bar_note(ax2, kl)
        if not kl["is_control"].any():
            notes.append("no control rows in this run")
        if np.nanmax(np.abs(kl["estimate"].to_numpy(float))) == 0:
            notes.append("KL = 0 for every token")
    if notes:
        ax2.text(0.5, 0.97, "; ".join(notes), transform=ax2.transAxes, ha="center", va="top", fontsize=8,
                 color="#555555", bbox={"boxstyle": "round", "fc": "white", "ec": "#cccccc"})
    top = ax2.get_ylim()[1]
    ax2.set_ylim(0, (top if top > 0 else 1e-3) * (1.15 if notes else 1.0))
    ax2.set_xlim(-0.7, len(conditions) - 0.3)
    ax2.set_xticks(range(len(conditions)))
    ax2.set_xticklabels([_short(c).replace(".", "\n") for c in conditions])
    ax2.set_ylabel("mean KL(clean || masked), nats")
    ax2.set_title("Next-token KL per condition (mean, 95% CI)")
    ax2.grid(alpha=0.3, axis="y")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.suptitle("Attention mask on secondary sinks")
    fig.tight_layout()
    return fig
