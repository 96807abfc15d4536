"""Descriptive means with trace-level intervals: the numbers behind the report's figures.

The figures draw only what this package computed, so every error bar and band in them is a row
of :func:`figure_summaries` in ``stats.json`` (key ``summaries``). Each row is a mean over tokens
(the trace is the unit: the interval is a trace-cluster bootstrap of the ratio of per-trace sums
to per-trace counts, :func:`~._resampling.cluster_bootstrap`, BCa from 5 traces, at least 2,000
draws), with the same honesty as the tests: every value exactly 0 is ``exact_zero``, every trace
with the same mean (or a single trace) is ``degenerate``, and neither gets an interval.

These are descriptions of levels (lifetime at a factor, suppression rate at a layer, KL of a
condition), not hypothesis tests: no p-values here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from interventions.spec.conditions import KINDS, kinds_with

from ._common import LEVEL, as_bool, trace_codes
from ._resampling import MIN_BOOT, cluster_bootstrap, ratio_of_sums
from .jsonable import to_jsonable


def trace_means(df: pd.DataFrame, value: str, by: list[str], *, n_boot: int = MIN_BOOT, seed: int = 0,
                level: float = LEVEL) -> list[dict]:
    """Mean of ``value`` over the rows of each ``by`` group, with a trace-cluster bootstrap interval.

    Args:
        df: one row per token (unit), columns ``trace``, ``value`` and ``by``.
        value: the column to average.
        by: grouping columns; each row of the result carries their values.
        n_boot: bootstrap draws (raised to 2,000 at least).
        seed: seed of the draws (one generator for all groups, in group order).
        level: confidence level.

    Returns:
        One dict per group: the ``by`` values, ``estimate, ci_low, ci_high, ci_method, n_units,
        n_traces, exact_zero, degenerate, degenerate_reason``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    if df.empty:
        return rows
    for key, g in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        v = g[value].astype(float).to_numpy()
        g = g[np.isfinite(v)]
        v = v[np.isfinite(v)]
        head = {**dict(zip(by, key)), "n_units": int(v.size)}
        rows.append({**head, **_mean_interval(v, g["trace"], rng=rng, n_boot=n_boot, level=level)})
    return to_jsonable(rows)


def _mean_interval(v: np.ndarray, traces: pd.Series, *, rng: np.random.Generator, n_boot: int, level: float) -> dict:
    none = {"ci_low": None, "ci_high": None, "exact_zero": False, "degenerate": False, "degenerate_reason": None}
    if v.size == 0:
        return {**none, "estimate": None, "n_traces": 0, "ci_method": "none (no rows)"}
    codes, G = trace_codes(traces)
    S = np.bincount(codes, weights=v, minlength=G)
    N = np.bincount(codes, minlength=G).astype(float)
    estimate = float(S.sum() / N.sum())
    base = {**none, "estimate": estimate, "n_traces": int(G)}
    if not np.any(v):
        return {**base, "estimate": 0.0, "exact_zero": True, "ci_method": "none (exact zero)"}
    means = S / N
    if G < 2:
        return {**base, "degenerate": True, "ci_method": "none (degenerate)",
                "degenerate_reason": "a single trace: no between-trace variation"}
    if np.ptp(means) <= 1e-12 * np.abs(means).max():
        return {**base, "degenerate": True, "ci_method": "none (degenerate)",
                "degenerate_reason": f"every one of {G} traces has the same mean {means[0]:.6g}"}

    def stat(W: np.ndarray) -> np.ndarray:
        return ratio_of_sums(W, S, N)

    r = cluster_bootstrap(stat, G, n_boot=n_boot, rng=rng, level=level)[0]
    return {**base, "ci_low": r["ci_low"], "ci_high": r["ci_high"], "ci_method": f"trace bootstrap ({r['ci_method']})"}


# --------------------------------------------------------------------------------------------
# the rows each figure needs
# --------------------------------------------------------------------------------------------

UNIT_KEYS = ["condition", "is_control", "trace", "position"]


def _per_target(effects: pd.DataFrame, fact: str) -> pd.DataFrame:
    """One row per (condition, group, trace, position) of the kinds that declare ``fact``; booleans cleaned."""
    if effects.empty or "kind" not in effects.columns:
        return pd.DataFrame()
    e = effects[effects["kind"].isin(kinds_with(fact))]
    if e.empty:
        return e
    e = e.drop_duplicates(UNIT_KEYS).copy()
    e["is_control"] = as_bool(e["is_control"])
    return e


def dose_levels(effects: pd.DataFrame, *, n_boot: int = MIN_BOOT, seed: int = 0, level: float = LEVEL) -> list[dict]:
    """Mean lifetime and sink score (one layer after the edit) per series and scale factor.

    A series is one target token of one target set (tokens are never pooled: a token that
    responds to scaling and one that cannot would average into a curve neither follows), or
    one control set (matched random positions, pooled). Factor 1 is the clean run of the same
    tokens. Rows: ``series, target_set, token, is_control, factor, measure`` + :func:`trace_means`.
    """
    e = _per_target(effects, "DOSE")
    if e.empty:
        return []
    # each dosed kind's own dose column (its DOSE) is the curve's x; the rows call it factor
    e = pd.concat([g.assign(factor=g[KINDS[kind].DOSE]) for kind, g in e.groupby("kind", sort=False)])
    e = e.assign(series=np.where(e["is_control"], e["target_set"].astype(str) + " (controls)",
                                 e["token"].map(repr) + " (" + e["target_set"].astype(str) + ")"),
                 token=np.where(e["is_control"], None, e["token"]))
    measures = {"lifetime": ("lifetime", "clean_lifetime"), "sink_score": ("ref_sink_score", "clean_ref_sink_score")}
    parts = []
    for name, (col, clean_col) in measures.items():
        if col not in e.columns:
            continue
        scaled = e[["series", "target_set", "token", "is_control", "factor", "trace", "position", col]].rename(
            columns={col: "value"})
        clean = e.drop_duplicates(["series", "trace", "position"])[
            ["series", "target_set", "token", "is_control", "trace", "position", clean_col]].rename(
            columns={clean_col: "value"}).assign(factor=1.0)
        both = pd.concat([scaled[~np.isclose(scaled["factor"].astype(float), 1.0)], clean], ignore_index=True)
        parts.append(both.assign(measure=name))
    rows = pd.concat(parts, ignore_index=True)
    rows["token"] = rows["token"].fillna("")
    return trace_means(rows, "value", ["measure", "series", "target_set", "token", "is_control", "factor"],
                       n_boot=n_boot, seed=seed, level=level)


def swap_rates(effects: pd.DataFrame, *, n_boot: int = MIN_BOOT, seed: int = 0, level: float = LEVEL) -> list[dict]:
    """Share of swapped targets that were clean sinks and are suppressed, per site and swap layer."""
    e = _per_target(effects, "SWEEPS_LAYERS")
    if e.empty:
        return []
    e = e[~e["is_control"] & (e["clean_lifetime"] > 0)]
    units = e.assign(suppressed=as_bool(e["suppressed"]).astype(float))
    return trace_means(units, "suppressed", ["site", "intervened_layer"], n_boot=n_boot, seed=seed, level=level)


def mask_kl(effects: pd.DataFrame, *, n_boot: int = MIN_BOOT, seed: int = 0, level: float = LEVEL) -> list[dict]:
    """Mean next-token KL(clean || masked) per condition of a kind that masks the targets (``MASKS_TARGET_KEYS``),
    targets and controls apart."""
    e = _per_target(effects, "MASKS_TARGET_KEYS")
    if e.empty:
        return []
    return trace_means(e, "kl", ["condition", "is_control"], n_boot=n_boot, seed=seed, level=level)


def secondary_score_by_layer(sink_layers: pd.DataFrame, *, n_boot: int = MIN_BOOT, seed: int = 0,
                             level: float = LEVEL) -> list[dict]:
    """Mean clean sink score of the secondary sinks per attention layer (the layers each sink lived)."""
    if sink_layers is None or sink_layers.empty:
        return []
    return trace_means(sink_layers, "sink_score", ["layer"], n_boot=n_boot, seed=seed, level=level)


def figure_summaries(effects: pd.DataFrame, sink_layers: pd.DataFrame, *, n_boot: int = MIN_BOOT, seed: int = 0,
                     level: float = LEVEL) -> dict:
    """Every descriptive mean the report's figures draw, for ``stats.json["summaries"]``."""
    kw = {"n_boot": n_boot, "seed": seed, "level": level}
    return {"note": "descriptive means over tokens with trace-cluster bootstrap intervals (no tests); "
                    "exact zeros and degenerate means carry no interval",
            "dose_levels": dose_levels(effects, **kw), "swap_rates": swap_rates(effects, **kw),
            "mask_kl": mask_kl(effects, **kw), "secondary_score_by_layer": secondary_score_by_layer(sink_layers, **kw)}
