"""What every report figure shares: style, colours, table access, saving, and drawing a stats row.

Figures draw only what :mod:`interventions.stats` computed: error bars and bands come from
``stats.json`` rows (``estimate, ci_low, ci_high, exact_zero, degenerate``) through
:func:`errorbars`, which draws a bar only where a row has an interval and marks the others.
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

from interventions.spec.conditions import kinds_with  # noqa: E402
from interventions.stats._common import as_bool  # noqa: E402

DPI = 120
SITE_ORDER = ("block_output", "attention_output", "mlp_output")
SITE_LABEL = {"block_output": "hidden state $h^l$ (block output)", "attention_output": "attention output $o^l$",
              "mlp_output": "MLP output $f^l$"}
COLORS = {"primary": "#c0392b", "secondary": "#2471a3", "median": "#7f8c8d", "control": "#7f8c8d"}
NO_SECONDARY = "no secondary sinks in the clean run"
NO_BAR = "no bar: exact zero or degenerate (every trace the same)"

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "figure.titlesize": 11,
         "axes.spines.top": False, "axes.spines.right": False}
"""Applied to each figure through :func:`styled` (the global rcParams are left alone)."""


def styled(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def frame(tables: dict, name: str) -> pd.DataFrame:
    value = tables.get(name)
    return value if isinstance(value, pd.DataFrame) else pd.DataFrame()


def secondary_sinks(tables: dict) -> pd.DataFrame:
    """Rows of ``clean_sinks`` of kind secondary (empty frame if none)."""
    sinks = frame(tables, "clean_sinks")
    if sinks.empty or "kind" not in sinks.columns:
        return pd.DataFrame(columns=["trace", "position", "l_start", "lifetime", "mlp_out_norm", "censored"])
    return sinks[sinks["kind"] == "secondary"].copy()


def effects_with(tables: dict, fact: str) -> pd.DataFrame:
    """Rows of the effects table whose kind declares ``fact`` (:func:`~interventions.spec.conditions.kinds_with`)."""
    effects = frame(tables, "effects")
    if effects.empty or "kind" not in effects.columns:
        return pd.DataFrame()
    out = effects[effects["kind"].isin(kinds_with(fact))].copy()
    if "is_control" in out.columns:
        out["is_control"] = as_bool(out["is_control"])
    return out


def summary_rows(stats: dict, key: str) -> pd.DataFrame:
    """``stats["summaries"][key]`` as a frame (empty when the run's stats lack it)."""
    rows = (stats.get("summaries") or {}).get(key) or []
    out = pd.DataFrame(rows)
    for c in ("ci_low", "ci_high", "estimate"):
        if c in out.columns:
            out[c] = out[c].astype(float)
    return out


def n_traces(tables: dict) -> int:
    profile = frame(tables, "clean_profile")
    if len(profile):
        return int(profile["trace"].nunique())
    sinks = frame(tables, "clean_sinks")
    return int(sinks["trace"].nunique()) if len(sinks) else 0


def save(fig, out_dir: Path, name: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    tmp = out_dir / f".{name}.tmp.png"
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def has_interval(rows: pd.DataFrame) -> np.ndarray:
    """Rows with a drawable interval: both bounds finite, not an exact zero, not degenerate."""
    if rows.empty or "ci_low" not in rows.columns:
        return np.zeros(len(rows), bool)
    ok = np.isfinite(rows["ci_low"].astype(float)) & np.isfinite(rows["ci_high"].astype(float))
    for flag in ("exact_zero", "degenerate"):
        if flag in rows.columns:
            ok &= ~rows[flag].fillna(False).astype(bool)
    return ok.to_numpy()


def errorbars(ax, x, rows: pd.DataFrame, *, color, **kw):
    """Error bars of the stats rows that have an interval, at ``x`` (same order as ``rows``).

    Rows without an interval (exact zero, degenerate, too few traces) get no bar. Returns the
    ``ErrorbarContainer`` or None.
    """
    ok = has_interval(rows)
    if not ok.any():
        return None
    x = np.asarray(x, float)[ok]
    low, high = rows["ci_low"].to_numpy(float)[ok], rows["ci_high"].to_numpy(float)[ok]
    # drawn from its centre so the bar spans exactly [ci_low, ci_high] (a BCa interval need not be centred)
    return ax.errorbar(x, (low + high) / 2, yerr=(high - low) / 2, fmt="none", ecolor=color, capsize=3, lw=1.1, **kw)


def points(ax, x, rows: pd.DataFrame, *, color, marker: str = "o", zorder: float = 2.5, size: float = 20) -> None:
    """The estimates of stats rows as markers: filled where the row has an interval, hollow where it has
    none (exact zero, degenerate), so the missing bar reads as "no interval", not as a tiny one."""
    ok = has_interval(rows)
    x = np.asarray(x, float)
    y = rows["estimate"].to_numpy(float)
    ax.scatter(x[ok], y[ok], s=size, color=color, marker=marker, zorder=zorder)
    ax.scatter(x[~ok], y[~ok], s=size, facecolors="white", edgecolors=color, marker=marker, zorder=zorder)


def bar_intervals(ax) -> list[tuple[float, float]]:
    """(low, high) of every error bar drawn on ``ax`` (tests read figures back with this)."""
    out = []
    for container in ax.containers:
        if isinstance(container, matplotlib.container.ErrorbarContainer):
            for coll in container.lines[2]:
                for seg in coll.get_segments():
                    out.append((float(min(seg[0][1], seg[1][1])), float(max(seg[0][1], seg[1][1]))))
    return out


def positive(values) -> np.ndarray:
    """Values for a log axis: non-positive entries become NaN (not plotted)."""
    v = np.asarray(values, float).copy()
    v[~(v > 0)] = np.nan
    return v


def log_labels(ax) -> None:
    """Plain numbers on a log y axis; minor ticks labelled only when the axis spans under a decade."""
    low, high = ax.get_ylim()
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    narrow = low > 0 and high / low < 10
    ax.yaxis.set_minor_formatter(plain if narrow else matplotlib.ticker.NullFormatter())


def int_layers(ax) -> None:
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
