"""Figures of a run report: pure functions ``(tables, stats, out_dir) -> Path | None``.

Each function reads the run's tables (see :func:`interventions.analysis.load_run`) and its
``stats.json`` dict, writes one PNG into ``out_dir`` and returns its path, or returns None and
writes nothing when the run holds no data for that figure. :func:`render_figures` runs them
all and adds, for the report, a caption with the n behind each figure or a note saying why
a figure is absent.

- ``fig_norms``: hidden-state, key and value norms across layers (paper Fig. 1).
- ``fig_levels``: counts of secondary sink levels (l_start x lifetime) (paper Fig. 2).
- ``fig_scores``: primary vs secondary sink score across depth, valley and l_start range (Fig. 7 left).
- ``fig_norm_score``: log score ratio vs log l_start MLP-output norm with the fitted slope (Fig. 7 mid).
- ``fig_norm_lifetime``: lifetime vs log norm with isotonic and segmented fits (Fig. 7 right).
- ``fig_swap``: suppression rate vs swap layer per site (Fig. 8).
- ``fig_dose``: lifetime and sink score vs scale factor, targets and controls.
- ``fig_mask``: primary sink score clean vs masked per layer, and KL per condition.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .formatting import inference_text  # noqa: E402

DPI = 120
Z95 = 1.959963984540054
SITE_ORDER = ("block_output", "attention_output", "mlp_output")
SITE_LABEL = {"block_output": "hidden state $h^l$ (block output)", "attention_output": "attention output $o^l$",
              "mlp_output": "MLP output $f^l$"}
COLORS = {"primary": "#c0392b", "secondary": "#2471a3", "median": "#7f8c8d", "control": "#7f8c8d"}
NO_SECONDARY = "no secondary sinks in the clean run"
OFF_SCALE_LOG = 8.0
"""fig_norm_score: log ratios this far below the median are pinned to the axis floor (marked)."""

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "figure.titlesize": 11,
         "axes.spines.top": False, "axes.spines.right": False}
"""Applied to each figure through :func:`_styled` (the global rcParams are left alone)."""


def _styled(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _bool(series: pd.Series) -> pd.Series:
    if series.dtype == bool:
        return series
    if series.dtype == object or pd.api.types.is_string_dtype(series):
        return series.astype(str).str.strip().str.lower().isin(["true", "1", "yes", "t"])
    return series.fillna(0).astype(float) != 0


def _frame(tables: dict, name: str) -> pd.DataFrame:
    frame = tables.get(name)
    return frame if isinstance(frame, pd.DataFrame) else pd.DataFrame()


def secondary_sinks(tables: dict) -> pd.DataFrame:
    """Rows of ``clean_sinks`` of kind secondary (empty frame if none)."""
    sinks = _frame(tables, "clean_sinks")
    if sinks.empty or "kind" not in sinks.columns:
        return pd.DataFrame(columns=["trace", "position", "l_start", "lifetime", "mlp_out_norm", "censored"])
    return sinks[sinks["kind"] == "secondary"].copy()


def effects_of(tables: dict, kind: str) -> pd.DataFrame:
    effects = _frame(tables, "effects")
    if effects.empty or "kind" not in effects.columns:
        return pd.DataFrame()
    out = effects[effects["kind"] == kind].copy()
    if "is_control" in out.columns:
        out["is_control"] = _bool(out["is_control"])
    return out


def _n_traces(tables: dict) -> int:
    profile = _frame(tables, "clean_profile")
    if len(profile):
        return int(profile["trace"].nunique())
    sinks = _frame(tables, "clean_sinks")
    return int(sinks["trace"].nunique()) if len(sinks) else 0


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "n/a" if not np.isfinite(v) else f"{v:.{digits}g}"


def _save(fig, out_dir: Path, name: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    tmp = out_dir / f".{name}.tmp.png"
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def _mean_ci(values: np.ndarray, clusters: np.ndarray | None = None, *, n_boot: int = 400,
             seed: int = 0) -> tuple[float, float, float]:
    """Mean with a 95% CI: trace-cluster percentile bootstrap with >= 3 traces, else a normal interval."""
    v = np.asarray(values, float)
    ok = np.isfinite(v)
    v = v[ok]
    if v.size == 0:
        return np.nan, np.nan, np.nan
    mean = float(v.mean())
    if clusters is not None:
        c = np.asarray(clusters)[ok]
        codes, uniq = pd.factorize(c)
        if uniq.size >= 3:
            sums = np.bincount(codes, weights=v, minlength=uniq.size)
            counts = np.bincount(codes, minlength=uniq.size).astype(float)
            rng = np.random.default_rng(seed)
            w = rng.multinomial(uniq.size, np.full(uniq.size, 1 / uniq.size), size=n_boot).astype(float)
            boot = (w @ sums) / np.maximum(w @ counts, 1e-12)
            low, high = np.quantile(boot, [0.025, 0.975])
            return mean, float(low), float(high)
    if v.size < 2:
        return mean, np.nan, np.nan
    half = Z95 * v.std(ddof=1) / np.sqrt(v.size)
    return mean, mean - half, mean + half


def _wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return np.nan, np.nan
    p = k / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _positive(values) -> np.ndarray:
    """Values for a log axis: non-positive entries become NaN (not plotted)."""
    v = np.asarray(values, float).copy()
    v[~(v > 0)] = np.nan
    return v


def _log_labels(ax) -> None:
    """Plain numbers on a log y axis; minor ticks labelled only when the axis spans under a decade."""
    low, high = ax.get_ylim()
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    narrow = low > 0 and high / low < 10
    ax.yaxis.set_minor_formatter(plain if narrow else matplotlib.ticker.NullFormatter())


def _int_layers(ax) -> None:
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


# --------------------------------------------------------------------------------------------
# Fig. 1: norms across layers
# --------------------------------------------------------------------------------------------


def _secondary_hidden_norms(tables: dict) -> pd.DataFrame:
    """Clean hidden-state norm per (secondary sink, layer) from effects rows (any condition)."""
    effects = _frame(tables, "effects")
    need = {"clean_kind", "clean_hidden_norm", "trace", "position", "layer"}
    if effects.empty or not need.issubset(effects.columns):
        return pd.DataFrame(columns=["trace", "position", "layer", "clean_hidden_norm"])
    rows = effects[effects["clean_kind"] == "secondary"]
    return rows.drop_duplicates(["trace", "position", "layer"])[["trace", "position", "layer", "clean_hidden_norm"]]


@_styled
def fig_norms(tables: dict, stats: dict, out_dir: Path) -> Path | None:
    """Hidden-state, key and value norms per layer: primary sink, secondary sinks, median token (log y)."""
    profile = _frame(tables, "clean_profile")
    if profile.empty or "primary_hidden_norm" not in profile.columns:
        return None
    by_layer = profile.groupby("layer").mean(numeric_only=True).sort_index()
    layers = by_layer.index.to_numpy()
    n_tr = int(profile["trace"].nunique())
    sec_h = _secondary_hidden_norms(tables)
    n_sec = int(len(sec_h[["trace", "position"]].drop_duplicates())) if len(sec_h) else 0
    sink_layers = _frame(tables, "sink_layers")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharex=True)
    for ax, what, label in zip(axes, ("hidden", "key", "value"),
                               ("hidden state $\\|h\\|_2$", "key $\\|k\\|_2$", "value $\\|v\\|_2$")):
        ax.plot(layers, _positive(by_layer[f"primary_{what}_norm"]), "-o", ms=3, color=COLORS["primary"],
                label="primary sink (pos. 0)")
        ax.plot(layers, _positive(by_layer[f"median_{what}_norm"]), "--", color=COLORS["median"],
                label="median token")
        if what == "hidden" and len(sec_h):
            g = sec_h.groupby("layer")["clean_hidden_norm"]
            mean, lo, hi = g.mean(), g.quantile(0.1), g.quantile(0.9)
            ax.plot(mean.index, _positive(mean), "-s", ms=3, color=COLORS["secondary"],
                    label=f"secondary sinks (mean, n={n_sec})")
            ax.fill_between(mean.index, _positive(lo), _positive(hi), color=COLORS["secondary"], alpha=0.2,
                            label="secondary 10-90%")
        elif len(sink_layers):
            lo, hi = int(sink_layers["layer"].min()), int(sink_layers["layer"].max())
            ax.axvspan(lo - 0.5, hi + 0.5, color=COLORS["secondary"], alpha=0.08,
                       label="layers where secondary sinks live")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{label} (log scale)")
        title = label if what == "hidden" or not len(sink_layers) else f"{label} (secondary: not recorded)"
        if np.all(~np.isfinite(_positive(by_layer[f"primary_{what}_norm"]))):
            title += "\nprimary sink: 0 at every layer (not on log axis)"
        ax.set_title(title)
        ax.grid(alpha=0.3, which="major")
        _log_labels(ax)
        _int_layers(ax)
    handles: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    sec_text = f"{n_sec} secondary sinks" if n_sec else (
        "secondary sinks: hidden norms not recorded" if len(sink_layers) else NO_SECONDARY)
    fig.suptitle(f"Norms across layers (mean over {n_tr} traces; {sec_text})")
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(5, len(handles)), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    return _save(fig, out_dir, "fig_norms")


# --------------------------------------------------------------------------------------------
# Fig. 2: sink levels
# --------------------------------------------------------------------------------------------


@_styled
def fig_levels(tables: dict, stats: dict, out_dir: Path) -> Path | None:
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
        for (i, life) in enumerate(lives):
            for (j, start) in enumerate(starts):
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
    n_censored = int(_bool(sec["censored"]).sum()) if "censored" in sec.columns else 0
    ax.set_title(f"Secondary sink levels\n{len(sec)} sinks in {sec['trace'].nunique()} traces"
                 + (f"; {n_censored} alive at last layer" if n_censored else ""))
    fig.tight_layout()
    return _save(fig, out_dir, "fig_levels")


# --------------------------------------------------------------------------------------------
# Fig. 7: scores, norm -> score, norm -> lifetime
# --------------------------------------------------------------------------------------------


@_styled
def fig_scores(tables: dict, stats: dict, out_dir: Path) -> Path | None:
    """Primary vs secondary sink score across depth, with the valley layer and the l_start range."""
    profile = _frame(tables, "clean_profile")
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
    sl = _frame(tables, "sink_layers")
    n_sec = 0
    if len(sl):
        n_sec = int(len(sl[["trace", "position"]].drop_duplicates()))
        rows = []
        for layer, g in sl.groupby("layer"):
            m, lo, hi = _mean_ci(g["sink_score"].to_numpy(), g["trace"].to_numpy())
            rows.append((layer, m, lo, hi, len(g)))
        s = pd.DataFrame(rows, columns=["layer", "mean", "lo", "hi", "n"])
        ax.plot(s["layer"], s["mean"], "-s", ms=3, color=COLORS["secondary"],
                label=f"secondary sinks, mean (n={n_sec})")
        ax.fill_between(s["layer"], s["lo"], s["hi"], color=COLORS["secondary"], alpha=0.2,
                        label="secondary 95% CI")
    valley = comp.get("valley_layer")
    if valley is not None:
        ci = comp.get("valley_ci") or [None, None]
        ci_txt = f" (95% CI {ci[0]}-{ci[1]})" if ci and ci[0] is not None else ""
        ax.axvline(valley, color="black", ls=":", lw=1.2, label=f"valley of primary score: layer {valley}{ci_txt}")
    rng = comp.get("l_start_range")
    ls = comp.get("l_start") or {}
    if ls.get("n_sinks"):
        lo, hi = ls.get("min"), ls.get("max")
        ax.axvspan(lo - 0.5, hi + 0.5, color=COLORS["secondary"], alpha=0.08,
                   label=f"secondary $l_{{start}}$ range {lo}-{hi}")
    elif rng:
        ax.axvspan(rng[0], rng[1], color=COLORS["secondary"], alpha=0.08, label="$l_{start}$ range")
    ax.set_xlabel("layer")
    _int_layers(ax)
    ax.set_ylabel("sink score (attention mass, mean over heads)")
    ax.set_ylim(bottom=0)
    n_tr = int(profile["trace"].nunique())
    ax.set_title(f"Sink score across depth ({n_tr} traces; "
                 + (f"{n_sec} secondary sinks)" if n_sec else NO_SECONDARY + ")"))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, out_dir, "fig_scores")


def _norm_score_rows(sl: pd.DataFrame) -> pd.DataFrame:
    d = sl.dropna(subset=["mlp_out_norm", "sink_score", "primary_sink_score"])
    d = d[(d["mlp_out_norm"] > 0) & (d["sink_score"] > 0) & (d["primary_sink_score"] > 0)].copy()
    d["x"] = np.log(d["mlp_out_norm"].astype(float))
    d["y"] = np.log(d["sink_score"].astype(float) / d["primary_sink_score"].astype(float))
    return d


@_styled
def fig_norm_score(tables: dict, stats: dict, out_dir: Path) -> Path | None:
    """log(secondary / primary sink score) vs log l_start MLP-output norm, with the fitted slope."""
    sl = _frame(tables, "sink_layers")
    if sl.empty:
        return None
    d = _norm_score_rows(sl)
    if d.empty:
        return None
    fit = stats.get("norm_score") or {}
    layers = np.sort(d["layer"].unique())
    cmap = plt.get_cmap("viridis")
    norm = matplotlib.colors.Normalize(vmin=layers.min(), vmax=max(layers.max(), layers.min() + 1))
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    sc = ax.scatter(d["x"], d["y"], c=d["layer"], cmap=cmap, norm=norm, s=16, alpha=0.75, edgecolors="none")
    handles = []
    if fit.get("estimable") and fit.get("slope") is not None:
        slope = float(fit["slope"])
        label = (f"pooled slope {slope:.3g} [95% CI {_fmt(fit.get('ci_low'))}, {_fmt(fit.get('ci_high'))}]"
                 f"\n$R^2$ {_fmt(fit.get('r2'), 2)} (within layer {_fmt(fit.get('r2_within'), 2)}), "
                 f"p {_fmt(fit.get('p'), 2)}")
        per_layer_intercepts = "C(layer)" in str(fit.get("model", ""))
        if per_layer_intercepts:
            for layer, g in d.groupby("layer"):
                a = float(np.mean(g["y"] - slope * g["x"]))
                xs = np.array([g["x"].min(), g["x"].max()])
                if xs[0] == xs[1]:
                    xs = xs + np.array([-0.05, 0.05])
                ax.plot(xs, a + slope * xs, color=cmap(norm(layer)), lw=1.2)
            label += "\n(one intercept per layer, common slope)"
        else:
            xs = np.linspace(d["x"].min(), d["x"].max(), 50)
            ax.plot(xs, float(fit.get("intercept", 0.0)) + slope * xs, color="black", lw=1.4)
        handles.append(matplotlib.lines.Line2D([], [], color="black", lw=1.4, label=label))
        if fit.get("steepest_layer") is not None:
            handles.append(matplotlib.lines.Line2D([], [], ls="", label=f"steepest within layer {fit['steepest_layer']}"
                                                                        f": slope {_fmt(fit.get('steepest_slope'))}"))
    else:
        handles.append(matplotlib.lines.Line2D([], [], ls="", label=f"no fit: {fit.get('reason', 'not estimable')}"))
    off = d["y"] < d["y"].median() - OFF_SCALE_LOG
    if off.any() and off.mean() < 0.5:  # near-zero scores would squash the rest into a line: pin them to the floor
        kept = d.loc[~off, "y"]
        span = max(kept.max() - kept.min(), 0.5)
        floor = kept.min() - 0.12 * span
        ax.set_ylim(floor - 0.06 * span, kept.max() + 0.1 * span)
        sc.set_offsets(np.column_stack([d["x"], np.where(off, floor, d["y"])]))
        sc.set_paths([matplotlib.markers.MarkerStyle(marker).get_path().transformed(
            matplotlib.markers.MarkerStyle(marker).get_transform()) for marker in np.where(off, "v", "o")])
        ax.axhline(floor, color="#999999", lw=0.6, ls=":")
        handles.append(matplotlib.lines.Line2D(
            [], [], ls="", marker="v", color="#555555",
            label=f"{int(off.sum())} rows off-scale (log ratio down to {d['y'].min():.3g}; layer(s) "
                  f"{', '.join(str(int(v)) for v in sorted(d.loc[off, 'layer'].unique()))})"))
    ax.legend(handles=handles, loc="best", frameon=True, framealpha=0.85)
    cbar = fig.colorbar(sc, ax=ax, label="layer")
    cbar.locator = matplotlib.ticker.MaxNLocator(integer=True)
    cbar.update_ticks()
    ax.set_xlabel("log $\\|f^{l_{start}}\\|_2$ (MLP output norm at $l_{start}$, natural log)")
    ax.set_ylabel("log(secondary / primary sink score)")
    n_sinks = int(len(d[["trace", "position"]].drop_duplicates()))
    dropped = len(sl) - len(d)
    ax.set_title(f"Sink-score ratio vs MLP norm: {n_sinks} sinks, {len(d)} sink-layers, "
                 f"{d['trace'].nunique()} traces"
                 + (f"\n({dropped} rows with a zero score or norm not shown)" if dropped else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, "fig_norm_score")


@_styled
def fig_norm_lifetime(tables: dict, stats: dict, out_dir: Path) -> Path | None:
    """Lifetime vs log l_start MLP-output norm, with the isotonic steps and the best segmented fit."""
    sec = secondary_sinks(tables).dropna(subset=["mlp_out_norm", "lifetime"])
    sec = sec[sec["mlp_out_norm"] > 0]
    if sec.empty:
        return None
    fit = stats.get("norm_lifetime") or {}
    x = np.log(sec["mlp_out_norm"].astype(float).to_numpy())
    y = sec["lifetime"].astype(float).to_numpy()
    cens = _bool(sec["censored"]).to_numpy() if "censored" in sec.columns else np.zeros(len(sec), bool)
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
                    label=f"segmented fit, {best} breakpoint(s) (best by BIC)" if i == 0 else None)
        for bp in chosen.get("breakpoints", []):
            ax.axvline(bp, color="#e67e22", lw=0.8, ls=":")
    elif fit.get("linear"):
        lin = fit["linear"]
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, lin["intercept"] + lin["slope"] * xs, color="#e67e22", ls="--", lw=1.4,
                label=f"linear fit, slope {_fmt(lin['slope'])}")
    sp = fit.get("spearman") or {}
    if sp.get("rho") is not None:
        ax.plot([], [], ls="",
                label=f"Spearman $\\rho$ {_fmt(sp['rho'], 2)}, permutation p {_fmt(sp.get('p_perm'), 2)}")
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
    return _save(fig, out_dir, "fig_norm_lifetime")


# --------------------------------------------------------------------------------------------
# Fig. 8: mean swap
# --------------------------------------------------------------------------------------------


def swap_units(tables: dict) -> pd.DataFrame:
    """One row per swapped target that was a clean sink: site, swap layer, suppressed."""
    e = effects_of(tables, "mean_swap")
    if e.empty:
        return e
    e = e[~e["is_control"]]
    units = e.groupby(["condition", "site", "intervened_layer", "trace", "position"], sort=True).agg(
        suppressed=("suppressed", "max"), clean_lifetime=("clean_lifetime", "max"),
        clean_l_start=("clean_l_start", "max")).reset_index()
    units = units[units["clean_lifetime"] > 0]
    units["suppressed"] = _bool(units["suppressed"])
    return units


@_styled
def fig_swap(tables: dict, stats: dict, out_dir: Path) -> Path | None:
    """Suppression rate vs swap layer for each site, with Wilson 95% intervals."""
    units = swap_units(tables)
    if units.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    sites = [s for s in SITE_ORDER if s in set(units["site"])] + sorted(set(units["site"]) - set(SITE_ORDER))
    markers = {"block_output": "o", "attention_output": "^", "mlp_output": "s"}
    offsets = np.linspace(-0.12, 0.12, len(sites)) if len(sites) > 1 else [0.0]
    for off, site in zip(offsets, sites):
        g = units[units["site"] == site].groupby("intervened_layer")["suppressed"].agg(["sum", "size"])
        rate = g["sum"] / g["size"]
        ci = np.array([_wilson(int(k), int(n)) for k, n in zip(g["sum"], g["size"])])
        x = g.index.to_numpy(float) + off
        ax.errorbar(x, rate, yerr=[rate - ci[:, 0], ci[:, 1] - rate], marker=markers.get(site, "o"), ms=5,
                    capsize=3, lw=1.3, label=f"{SITE_LABEL.get(site, site)} (n={int(g['size'].sum())} swaps)")
    ls = units["clean_l_start"]
    if ls.nunique() == 1:
        ax.axvline(float(ls.iloc[0]), color="black", ls=":", lw=1, label=f"$l_{{start}}$ = {int(ls.iloc[0])}")
    layers = np.sort(units["intervened_layer"].unique())
    ax.set_xticks(layers if len(layers) <= 25 else layers[:: int(np.ceil(len(layers) / 25))])
    ax.set_ylim(-0.03, 1.05)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("swap layer (layer whose activation is replaced by the mean non-sink token)")
    ax.set_ylabel("future sink suppressed (% of targets)")
    n_sinks = int(len(units[["trace", "position"]].drop_duplicates()))
    ax.set_title(f"Mean swap: suppression by layer ({n_sinks} sinks, {units['trace'].nunique()} traces)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", frameon=True, framealpha=0.85)
    fig.tight_layout()
    return _save(fig, out_dir, "fig_swap")


# --------------------------------------------------------------------------------------------
# dose-response
# --------------------------------------------------------------------------------------------


def dose_units(tables: dict) -> pd.DataFrame:
    """One row per (condition, group, trace, position) of scale conditions, measures at ref_layer,
    with ``group``: the non-control target-set names of the condition joined by ``+``."""
    e = effects_of(tables, "scale")
    if e.empty:
        return e
    keys = ["condition", "is_control", "trace", "position"]
    first = e.drop_duplicates(keys).drop(columns=["sink_score", "clean_sink_score"], errors="ignore")
    if {"ref_sink_score", "clean_ref_sink_score"}.issubset(e.columns):  # read one layer after the edit
        units = first.rename(columns={"ref_sink_score": "sink_score", "clean_ref_sink_score": "clean_sink_score"})
    else:  # older runs: the score at ref_layer itself
        at_ref = e[e["layer"] == e["ref_layer"]][keys + ["sink_score", "clean_sink_score"]]
        units = first.merge(at_ref.drop_duplicates(keys), on=keys, how="left")
    names = units[~units["is_control"]].groupby("condition")["target_set"].agg(
        lambda s: "+".join(sorted(set(s))))
    units["group"] = units["condition"].map(names).fillna("controls")
    return units


@_styled
def fig_dose(tables: dict, stats: dict, out_dir: Path) -> Path | None:
    """Lifetime and sink score (read one layer after the edit) vs scale factor (log x); controls dashed."""
    units = dose_units(tables)
    if units.empty:
        return None
    dose = stats.get("dose_response") or {}
    groups = list(dict.fromkeys(units["group"]))
    palette = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
    measures = (("lifetime", "clean_lifetime", "lifetime after scaling (layers)"),
                ("sink_score", "clean_sink_score", "sink score one layer after the edit"))
    all_factors = sorted(set(units["factor"].dropna()) | {1.0})
    for ax, (m, clean_m, ylabel) in zip(axes, measures):
        for gi, group in enumerate(groups):
            sub = units[units["group"] == group]
            for is_control in (False, True):
                part = sub[sub["is_control"] == is_control]
                if part.empty:
                    continue
                rows = []
                clean = _mean_ci(part.drop_duplicates(["trace", "position"])[clean_m].to_numpy(float),
                                 part.drop_duplicates(["trace", "position"])["trace"].to_numpy())
                rows.append((1.0, *clean))
                for factor, g in part.groupby("factor"):
                    if np.isclose(factor, 1.0):
                        continue
                    rows.append((factor, *_mean_ci(g[m].to_numpy(float), g["trace"].to_numpy(), seed=gi)))
                r = pd.DataFrame(rows, columns=["factor", "mean", "lo", "hi"]).sort_values("factor")
                n_tok = int(len(part[["trace", "position"]].drop_duplicates()))
                label = f"{group} {'controls' if is_control else 'targets'} (n={n_tok})"
                if m == "lifetime" and not is_control:
                    slope = ((dose.get(group) or {}).get("targets") or {}).get("lifetime") or {}
                    if slope.get("slope") is not None:
                        label += f", slope {_fmt(slope['slope'])}/log-factor"
                err = np.vstack([r["mean"] - r["lo"], r["hi"] - r["mean"]])
                err = np.where(np.isfinite(err), err, 0.0)
                ax.errorbar(r["factor"] * (1.03 if is_control else 1.0), r["mean"], yerr=err, capsize=3,
                            marker="s" if is_control else "o", ms=4, lw=1.3, ls="--" if is_control else "-",
                            color=palette(gi % 10), alpha=0.75 if is_control else 1.0, label=label)
        ax.axvline(1.0, color="#999999", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xticks(all_factors)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"x{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("scale factor of the edited MLP output (log scale; x1 = clean run)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title("Lifetime vs factor (mean, 95% CI)")
    axes[1].set_title("Sink score vs factor (mean, 95% CI)")
    handles, labels = axes[0].get_legend_handles_labels()
    n_tr = int(units["trace"].nunique())
    fig.suptitle(f"Dose-response of scaled MLP output ({n_tr} traces)")
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", ncol=2, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return _save(fig, out_dir, "fig_dose")


# --------------------------------------------------------------------------------------------
# attention mask
# --------------------------------------------------------------------------------------------


def _short(condition: str) -> str:
    return condition.removeprefix("attention_mask.")


@_styled
def fig_mask(tables: dict, stats: dict, out_dir: Path) -> Path | None:
    """Primary sink score per layer clean vs masked (mean over traces), and KL per condition."""
    e = effects_of(tables, "attention_mask")
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
    for i, cond in enumerate(conditions):
        g = per_trace[per_trace["condition"] == cond].groupby("layer")["primary_sink_score"].mean()
        if len(g):
            ax1.plot(g.index, g.to_numpy(), "--o", ms=3, color=palette(i % 10), label=f"masked: {_short(cond)}")
    if "masked" in targets.columns:
        masked_layers = sorted(targets.loc[_bool(targets["masked"]), "layer"].unique())
        for layer in masked_layers:
            ax1.axvspan(layer - 0.5, layer + 0.5, color="#f5b041", alpha=0.12, lw=0)
        if masked_layers:
            ax1.plot([], [], color="#f5b041", alpha=0.4, lw=6, label="layers masked for some target")
    ax1.set_xlabel("layer")
    _int_layers(ax1)
    ax1.set_ylabel("primary (BOS) sink score")
    n_t = int(len(targets[["trace", "position"]].drop_duplicates()))
    ax1.set_title(f"Primary sink score, clean vs masked\n(target forwards; {n_t} targets, "
                  f"{targets['trace'].nunique()} traces)")
    ax1.grid(alpha=0.3)
    ax1.legend(loc="best", frameon=True, framealpha=0.85)

    units = e.groupby(["condition", "is_control", "trace", "position"])["kl"].mean().reset_index()
    width = 0.38
    for j, is_control in enumerate((False, True)):
        xs, means, errs, ns = [], [], [], []
        for i, cond in enumerate(conditions):
            g = units[(units["condition"] == cond) & (units["is_control"] == is_control)]
            if g.empty:
                continue
            m, lo, hi = _mean_ci(g["kl"].to_numpy(float), g["trace"].to_numpy())
            xs.append(i + (j - 0.5) * width)
            means.append(m)
            errs.append([m - lo if np.isfinite(lo) else 0.0, hi - m if np.isfinite(hi) else 0.0])
            ns.append(len(g))
        if xs:
            ax2.bar(xs, means, width=width, yerr=np.array(errs).T, capsize=3,
                    color=COLORS["control"] if is_control else COLORS["secondary"],
                    label=f"{'controls' if is_control else 'targets'} (n={'/'.join(map(str, ns))})")
    notes = []
    if not units["is_control"].any():
        notes.append("no control rows in this run")
    kl = units["kl"].to_numpy(float)
    if kl.size and np.nanmax(np.abs(kl)) == 0:
        notes.append("KL = 0 for every token")
    if notes:
        ax2.text(0.5, 0.97, "; ".join(notes), transform=ax2.transAxes, ha="center", va="top", fontsize=8,
                 color="#555555", bbox={"boxstyle": "round", "fc": "white", "ec": "#cccccc"})
    top = ax2.get_ylim()[1]
    ax2.set_ylim(0, (top if top > 0 else 1e-3) * (1.15 if notes else 1.0))
    ax2.set_xlim(-0.7, len(conditions) - 0.3)
    ax2.set_xticks(range(len(conditions)))
    ax2.set_xticklabels([_short(c) for c in conditions], rotation=15, ha="right")
    ax2.set_ylabel("mean KL(clean || masked), nats")
    ax2.set_title("Next-token KL per condition (mean, 95% CI)")
    ax2.grid(alpha=0.3, axis="y")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.suptitle("Attention mask on secondary sinks")
    fig.tight_layout()
    return _save(fig, out_dir, "fig_mask")


# --------------------------------------------------------------------------------------------
# all figures, with captions for the report
# --------------------------------------------------------------------------------------------

FIGURES: dict[str, Callable] = {
    "fig_norms": fig_norms,
    "fig_levels": fig_levels,
    "fig_scores": fig_scores,
    "fig_norm_score": fig_norm_score,
    "fig_norm_lifetime": fig_norm_lifetime,
    "fig_swap": fig_swap,
    "fig_dose": fig_dose,
    "fig_mask": fig_mask,
}


def caption(name: str, tables: dict, stats: dict) -> str:
    """One sentence saying what figure ``name`` shows and the n behind it."""
    n_tr = _n_traces(tables)
    sec = secondary_sinks(tables)
    n_sec = len(sec)
    if name == "fig_norms":
        return (f"Hidden-state, key and value L2 norms per layer (log scale) for the primary sink, the secondary "
                f"sinks (hidden state only, mean with 10-90% band; {n_sec} sinks) and the median token, "
                f"averaged over {n_tr} traces (paper Fig. 1).")
    if name == "fig_levels":
        return (f"Number of secondary sinks at each level (l_start, lifetime) over {n_sec} sinks in "
                f"{sec['trace'].nunique() if n_sec else 0} traces (paper Fig. 2).")
    if name == "fig_scores":
        comp = stats.get("compensation") or {}
        return (f"Mean sink score per layer of the primary sink (95% trace-bootstrap band, {n_tr} traces) and of "
                f"{n_sec} secondary sinks, with the primary score's valley (layer {comp.get('valley_layer')}) "
                f"and the secondary l_start range (paper Fig. 7 left).")
    if name == "fig_norm_score":
        ns = stats.get("norm_score") or {}
        return (f"Log ratio of secondary to primary sink score against the log MLP-output norm at l_start, one "
                f"point per sink and layer ({ns.get('n_rows', 0)} rows, {ns.get('n_sinks', 0)} sinks, "
                f"{ns.get('n_traces', 0)} traces), with the pooled fit "
                f"(slope {inference_text(ns, estimate='slope')}; paper Fig. 7 mid).")
    if name == "fig_norm_lifetime":
        nl = stats.get("norm_lifetime") or {}
        return (f"Lifetime of each secondary sink against its log MLP-output norm at l_start ({nl.get('n_sinks', 0)} "
                f"sinks, {nl.get('n_censored', 0)} censored), with the isotonic step fit and the best segmented "
                f"fit by BIC (paper Fig. 7 right).")
    if name == "fig_swap":
        units = swap_units(tables)
        n = int(len(units[["trace", "position"]].drop_duplicates())) if len(units) else 0
        return (f"Share of future secondary sinks suppressed when one layer's activation is swapped for the mean "
                f"non-sink token, per site and swap layer, with Wilson 95% intervals (tokens treated as "
                f"independent); {n} sinks in {units['trace'].nunique() if n else 0} traces (paper Fig. 8).")
    if name == "fig_dose":
        units = dose_units(tables)
        n_t = int(len(units.loc[~units["is_control"], ["trace", "position"]].drop_duplicates())) if len(units) else 0
        n_c = int(len(units.loc[units["is_control"], ["trace", "position"]].drop_duplicates())) if len(units) else 0
        return (f"Lifetime and sink score (one layer after the edited layer) against the MLP-output scale factor "
                f"(x1 = clean run), mean with 95% CI (trace bootstrap with >= 3 traces), {n_t} target and "
                f"{n_c} control tokens "
                f"in {units['trace'].nunique() if len(units) else 0} traces; controls dashed.")
    if name == "fig_mask":
        e = effects_of(tables, "attention_mask")
        n_t = int(len(e.loc[~e["is_control"], ["trace", "position"]].drop_duplicates())) if len(e) else 0
        return (f"Left: primary sink score per layer in the clean run and with attention to the targets masked "
                f"(mean over traces); right: mean next-token KL from the clean run for targets and controls per "
                f"condition, {n_t} targets in {e['trace'].nunique() if len(e) else 0} traces.")
    return name


def absent_reason(name: str, tables: dict, stats: dict) -> str:
    """Why figure ``name`` was not drawn."""
    has_sec = len(secondary_sinks(tables)) > 0
    if name in ("fig_norms", "fig_scores"):
        return "the run folder has no clean_profile table"
    if name in ("fig_levels", "fig_norm_lifetime"):
        return NO_SECONDARY if not has_sec else "no secondary sink with a positive MLP-output norm"
    if name == "fig_norm_score":
        if not len(_frame(tables, "sink_layers")):
            return NO_SECONDARY
        return "every sink-layer row has a zero sink score or norm (log undefined)"
    if name == "fig_swap":
        if effects_of(tables, "mean_swap").empty:
            return "the run has no mean_swap condition"
        return "no swapped target was a sink in the clean run (suppression needs a clean secondary sink)"
    if name == "fig_dose":
        return "the run has no scale condition"
    if name == "fig_mask":
        return "the run has no attention_mask condition"
    return "no data"


def render_figures(tables: dict, stats: dict, out_dir: Path) -> list[dict]:
    """Draw every figure into ``out_dir``.

    Returns one record per figure: ``{name, path (or None), caption, note}``; ``note`` says why
    a figure is absent or that drawing it failed (a figure never stops the report).
    """
    out = []
    for name, fn in FIGURES.items():
        rec = {"name": name, "path": None, "caption": None, "note": None}
        try:
            rec["path"] = fn(tables, stats, Path(out_dir))
            if rec["path"] is not None:
                rec["caption"] = caption(name, tables, stats)
            else:
                rec["note"] = absent_reason(name, tables, stats)
                (Path(out_dir) / f"{name}.png").unlink(missing_ok=True)  # stale from an earlier analysis
        except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the report
            plt.close("all")
            rec["path"] = None
            rec["note"] = f"drawing failed: {type(exc).__name__}: {exc}"
        out.append(rec)
    return out
