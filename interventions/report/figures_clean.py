"""Figures of the clean run: norms across layers (paper Fig. 1), sink levels (Fig. 2), sink scores
across depth with the primary sink's valley (Fig. 7 left).

Each ``draw_*`` takes the run's tables and its stats dict and returns a matplotlib Figure, or
None when the run holds no data for it.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from interventions.stats._common import as_bool

from .figure_style import (
    COLORS,
    NO_SECONDARY,
    frame,
    has_interval,
    int_layers,
    log_labels,
    positive,
    secondary_sinks,
    styled,
    summary_rows,
)

NORM_PANELS = (("hidden", "hidden state $\\|h\\|_2$"), ("key", "key $\\|k\\|_2$"), ("value", "value $\\|v\\|_2$"))


def _secondary_hidden_from_effects(tables: dict) -> pd.Series:
    """Older runs (no ``secondary_*_norm`` in clean_profile): clean hidden norm of secondary sinks that
    were targets of some condition, mean per layer."""
    effects = frame(tables, "effects")
    need = {"clean_kind", "clean_hidden_norm", "trace", "position", "layer"}
    if effects.empty or not need.issubset(effects.columns):
        return pd.Series(dtype=float)
    rows = effects[effects["clean_kind"] == "secondary"].drop_duplicates(["trace", "position", "layer"])
    return rows.groupby("layer")["clean_hidden_norm"].mean()


@styled
def draw_norms(tables: dict, stats: dict):
    """Hidden-state, key and value norms per layer: primary sink, secondary sinks, median token.

    The y axis is logarithmic when every plotted value is positive, linear otherwise (a norm of
    exactly 0, like the planted primary sink's value, must be visible, not dropped by a log axis).
    Means over traces (secondary: over the traces that have secondary sinks, weighted by their
    number); descriptive, no intervals.
    """
    profile = frame(tables, "clean_profile")
    if profile.empty or "primary_hidden_norm" not in profile.columns:
        return None
    by_layer = profile.groupby("layer").mean(numeric_only=True).sort_index()
    layers = by_layer.index.to_numpy()
    n_tr = int(profile["trace"].nunique())
    recorded = "secondary_hidden_norm" in profile.columns
    secondary: dict[str, pd.Series] = {}
    if recorded:
        with_sec = profile[profile["n_secondary"] > 0]
        for what, _ in NORM_PANELS:
            w = with_sec["n_secondary"].astype(float)
            num = (with_sec[f"secondary_{what}_norm"] * w).groupby(with_sec["layer"]).sum()
            den = w.groupby(with_sec["layer"]).sum()
            if len(den):
                secondary[what] = (num / den).sort_index()
        n_sec = int(profile.drop_duplicates("trace")["n_secondary"].sum())
    else:
        hidden = _secondary_hidden_from_effects(tables)
        if len(hidden):
            secondary["hidden"] = hidden
        n_sec = len(secondary_sinks(tables))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharex=True)
    for ax, (what, label) in zip(axes, NORM_PANELS):
        series = {"primary sink (pos. 0)": (layers, by_layer[f"primary_{what}_norm"].to_numpy(float), "-o",
                                            COLORS["primary"]),
                  "median token": (layers, by_layer[f"median_{what}_norm"].to_numpy(float), "--", COLORS["median"])}
        if what in secondary:
            s = secondary[what]
            series[f"secondary sinks (mean, n={n_sec})"] = (s.index.to_numpy(), s.to_numpy(float), "-s",
                                                             COLORS["secondary"])
        values = np.concatenate([v for _, v, _, _ in series.values()])
        log = bool(np.all(values[np.isfinite(values)] > 0))
        for name, (x, y, style, color) in series.items():
            ax.plot(x, positive(y) if log else y, style, ms=3, color=color, label=name)
        title = label
        if not log:
            zeros = [name.split(" (")[0] for name, (_, y, _, _) in series.items() if np.any(y == 0)]
            title += f"\n(linear: {', '.join(zeros)} = 0 at some layer)" if zeros else ""
        else:
            ax.set_yscale("log")
        if what not in secondary and n_sec:
            title += "\n(secondary: not recorded by this run)"
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{label}" + (" (log scale)" if log else ""))
        ax.set_title(title)
        ax.grid(alpha=0.3, which="major")
        if log:
            log_labels(ax)
        int_layers(ax)
    handles: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    sec_text = f"{n_sec} secondary sinks" if n_sec else NO_SECONDARY
    fig.suptitle(f"Norms across layers (mean over {n_tr} traces; {sec_text})")
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(5, len(handles)), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    return fig


@styled
def draw_levels(tables: dict, stats: dict):
    """Heatmap of secondary sink levels: count per (l_start, lifetime)."""
    sec = secondary_sinks(tables).dropna(subset=["l_start", "lifetime"])
    if sec.empty:
        return None
    counts = sec.groupby(["lifetime", "l_start"]).size().unstack(fill_value=0)
    starts = np.arange(int(sec["l_start"].min()), int(sec["l_start"].max()) + 1)
    lives = np.arange(int(sec["lifetime"].min()), int(sec["lifetime"].max()) + 1)
    counts = counts.reindex(index=lives, columns=starts, fill_value=0)
    fig, ax = plt.subplots(figsize=(max(3.6, 0.55 * len(starts) + 2.2), max(2.8, 0.32 * len(lives) + 1.6)))
    data = np.ma.masked_equal(counts.to_numpy(), 0)
    vmax = counts.to_numpy().max()
    im = ax.imshow(data, origin="lower", aspect="auto", cmap="Blues", vmin=0, vmax=vmax,
                   extent=(starts[0] - 0.5, starts[-1] + 0.5, lives[0] - 0.5, lives[-1] + 0.5))
    if counts.size <= 400:
        for i, life in enumerate(lives):
            for j, start in enumerate(starts):
                c = counts.iat[i, j]
                if c:
                    ax.text(start, life, str(c), ha="center", va="center", fontsize=8,
                            color="white" if c > 0.6 * vmax else "black")
    ax.set_xlabel("$l_{start}$ (first sink layer)")
    ax.set_ylabel("lifetime (layers)")
    ax.set_xticks(starts if len(starts) <= 20 else starts[:: int(np.ceil(len(starts) / 20))])
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    cbar = fig.colorbar(im, ax=ax, label="number of sinks")
    cbar.locator = matplotlib.ticker.MaxNLocator(integer=True)
    cbar.update_ticks()
    n_censored = int(as_bool(sec["censored"]).sum()) if "censored" in sec.columns else 0
    ax.set_title(f"Secondary sink levels\n{len(sec)} sinks in {sec['trace'].nunique()} traces"
                 + (f"; {n_censored} alive at last layer" if n_censored else ""))
    fig.tight_layout()
    return fig


@styled
def draw_scores(tables: dict, stats: dict):
    """Primary vs secondary sink score across depth, with the valley layer and the first attention
    layer(s) reading a secondary sink (l_start + 1).

    Bands are the stats' intervals: the primary profile's from ``compensation.profile``, the
    secondary sinks' from ``summaries.secondary_score_by_layer``.
    """
    profile = frame(tables, "clean_profile")
    if profile.empty or "primary_sink_score" not in profile.columns:
        return None
    comp = stats.get("compensation") or {}
    prof = pd.DataFrame(comp.get("profile") or [])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    if len(prof) and {"layer", "mean"}.issubset(prof.columns):
        prof = prof.sort_values("layer")
        ax.plot(prof["layer"], prof["mean"], "-o", ms=3, color=COLORS["primary"], label="primary (BOS) sink, mean")
        if {"ci_low", "ci_high"}.issubset(prof.columns) and prof["ci_low"].notna().any():
            ax.fill_between(prof["layer"], prof["ci_low"].astype(float), prof["ci_high"].astype(float),
                            color=COLORS["primary"], alpha=0.2, label="primary 95% CI (trace bootstrap)")
    else:
        g = profile.groupby("layer")["primary_sink_score"].mean()
        ax.plot(g.index, g.to_numpy(), "-o", ms=3, color=COLORS["primary"], label="primary (BOS) sink, mean")
    sec = summary_rows(stats, "secondary_score_by_layer")
    sl = frame(tables, "sink_layers")
    n_sec = int(len(sl[["trace", "position"]].drop_duplicates())) if len(sl) else 0
    if len(sec):
        sec = sec.sort_values("layer")
        ax.plot(sec["layer"], sec["estimate"], "-s", ms=3, color=COLORS["secondary"],
                label=f"secondary sinks, mean (n={n_sec})")
        ok = has_interval(sec)
        if ok.any():
            ax.fill_between(sec["layer"], np.where(ok, sec["ci_low"], np.nan), np.where(ok, sec["ci_high"], np.nan),
                            color=COLORS["secondary"], alpha=0.2, label="secondary 95% CI (trace bootstrap)")
        if not ok.all():
            ax.plot([], [], ls="", label=f"secondary: {int((~ok).sum())} layer(s) without a band (exact zero or degenerate)")
    valley = comp.get("valley_layer")
    if valley is not None:
        ci = comp.get("valley_ci") or [None, None]
        ci_txt = f" (95% range {ci[0]}-{ci[1]})" if ci and ci[0] is not None else ""
        ax.axvline(valley, color="black", ls=":", lw=1.2, label=f"valley of primary score: layer {valley}{ci_txt}")
    ls = comp.get("l_start") or {}
    if ls.get("n_sinks"):
        # l_start is a hidden-state layer (the output of layer l_start); the first attention layer
        # that reads it as a key is l_start + 1, so on this axis of reading layers the band is shifted
        lo, hi = ls.get("min"), ls.get("max")
        span = f"{lo + 1}" if lo == hi else f"{lo + 1}-{hi + 1}"
        starts = f"{lo}" if lo == hi else f"{lo}-{hi}"
        ax.axvspan(lo + 0.5, hi + 1.5, color=COLORS["secondary"], alpha=0.12, gid="l_start-band",
                   label=f"first layer reading a secondary sink: {span} ($l_{{start}}$ {starts}, + 1)")
    ax.set_xlabel("layer (attention layer reading the key)")
    int_layers(ax)
    ax.set_ylabel("sink score (attention mass, mean over heads)")
    ax.set_ylim(bottom=0)
    n_tr = int(profile["trace"].nunique())
    ax.set_title(f"Sink score across depth ({n_tr} traces; "
                 + (f"{n_sec} secondary sinks)" if n_sec else NO_SECONDARY + ")"))
    ax.grid(alpha=0.3)
    fig.tight_layout()  # before the legend: it sits below the axes and must not shrink them
    ax.legend(loc="upper left", bbox_to_anchor=(-0.1, -0.16), frameon=False, ncol=2)
    return fig
