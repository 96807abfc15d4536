"""Causal effects of interventions: per-layer differences to the clean run, and the
primary-sink compensation analysis.

Inference unit: the trace. Tokens within one trace share a context and a forward pass, so
they are not independent; every CI resamples whole traces and every p-value flips signs of
whole-trace sums.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import LEVEL, as_bool, warnings_to_notes, require_columns, trace_codes
from ._resampling import bootstrap_weights, cluster_bootstrap, interval, jackknife_weights, sign_flip_test
from .jsonable import to_jsonable

EFFECT_KEYS = ["condition", "trace", "position", "is_control", "layer"]
EFFECT_COLUMNS = ["condition", "measure", "layer", "n_targets", "n_traces", "effect", "ci_low", "ci_high",
                  "ci_method", "control_effect", "did", "p", "p_adj", "correction"]
EXTRA_COLUMNS = ["n_controls", "control_ci_low", "control_ci_high", "did_ci_low", "did_ci_high", "p_did",
                 "p_method"]
CORRECTIONS = ("holm", "bh", "bonferroni", "none")


# --------------------------------------------------------------------------------------------
# 4. per-layer effects
# --------------------------------------------------------------------------------------------


@warnings_to_notes
def per_layer_effects(
    df: pd.DataFrame, measures: str | list[str], *, n_boot: int = 1000, seed: int = 0,
    correction: str = "holm", level: float = LEVEL, n_flip: int = 9999,
) -> pd.DataFrame:
    """Mean intervened-minus-clean change of each measure at each layer, with trace-level inference.

    ``effect`` is the mean over target tokens of (measure - clean_measure) at that layer;
    ``control_effect`` is the same for control tokens and ``did`` their difference (target
    minus control), the part of the change specific to the targets. ``ci_low, ci_high`` is a
    trace-cluster bootstrap CI of ``effect`` (BCa where valid, else percentile: ``ci_method``);
    ``p`` tests ``effect = 0`` with a trace-level sign-flip test and ``p_adj`` adjusts it
    across all layers and conditions of one measure (Holm by default).

    Why sign flips and not the bootstrap for p: under the null the intervention leaves each
    trace's summed change symmetric about zero, so flipping the signs of the per-trace sums
    gives the exact null distribution of the statistic (exact enumeration up to 12 traces,
    seeded Monte Carlo above). It is calibrated at any number of traces, needs no normality
    and does not depend on ``n_boot``; with fewer than 6 traces it cannot reach p < 0.05,
    which is the honest answer at that size. ``p_did`` applies the same test to per-trace
    (target mean - control mean) differences, over traces that have both.

    Args:
        df: long format, columns ``condition, trace, position, is_control, layer`` and, for each
            measure ``m``, both ``m`` (intervened) and ``clean_m``.
        measures: measure name(s).
        n_boot: bootstrap replicates for the CIs.
        seed: seed of ``np.random.default_rng`` used for bootstrap and Monte-Carlo flips.
        correction: ``"holm"``, ``"bh"`` (Benjamini-Hochberg), ``"bonferroni"`` or ``"none"``.
        level: confidence level.
        n_flip: Monte-Carlo sign flips when there are more than 12 traces.

    Returns:
        DataFrame with columns ``condition, measure, layer, n_targets, n_traces, effect, ci_low,
        ci_high, ci_method, control_effect, did, p, p_adj, correction`` then ``n_controls,
        control_ci_low, control_ci_high, did_ci_low, did_ci_high, p_did, p_method``.
    """
    measures = [measures] if isinstance(measures, str) else list(measures)
    require_columns(df, EFFECT_KEYS + [c for m in measures for c in (m, f"clean_{m}")], what="per_layer_effects")
    if correction not in CORRECTIONS:
        raise ValueError(f"per_layer_effects: correction must be one of {CORRECTIONS}, got {correction!r}")
    rng, flip_rng = np.random.default_rng(seed), flip_generator(seed)
    rows = []
    for m in measures:
        units = _unit_diffs(df, m)
        for (cond, layer), g in units.groupby(["condition", "layer"], sort=True):
            rows.append({"condition": cond, "measure": m, "layer": layer,
                         **_layer_effect(g, rng=rng, flip_rng=flip_rng, n_boot=n_boot, level=level, n_flip=n_flip)})
    out = pd.DataFrame(rows, columns=EFFECT_COLUMNS + EXTRA_COLUMNS) if rows else pd.DataFrame(
        columns=EFFECT_COLUMNS + EXTRA_COLUMNS)
    return adjust_pvalues(out, correction)


def _unit_diffs(df: pd.DataFrame, measure: str) -> pd.DataFrame:
    """One (measure - clean) value per condition x token x layer (duplicates averaged)."""
    d = df[EFFECT_KEYS + [measure, f"clean_{measure}"]].dropna(subset=[measure, f"clean_{measure}"]).copy()
    d["is_control"] = as_bool(d["is_control"])
    d["diff"] = d[measure].astype(float) - d[f"clean_{measure}"].astype(float)
    return d.groupby(EFFECT_KEYS, sort=True)["diff"].mean().reset_index()


def group_sums(g: pd.DataFrame, value: str = "diff") -> dict:
    """Per-trace sums and counts of ``value`` for targets and controls, over the union of traces."""
    codes, n = trace_codes(g["trace"])
    ctrl = g["is_control"].to_numpy(bool)
    v = g[value].to_numpy(float)
    return {
        "G": n,
        "S_t": np.bincount(codes[~ctrl], weights=v[~ctrl], minlength=n),
        "N_t": np.bincount(codes[~ctrl], minlength=n).astype(float),
        "S_c": np.bincount(codes[ctrl], weights=v[ctrl], minlength=n),
        "N_c": np.bincount(codes[ctrl], minlength=n).astype(float),
    }


def did_stat(s: dict):
    """Statistic function for the bootstrap: columns (target mean, control mean, difference)."""

    def stat(W: np.ndarray) -> np.ndarray:
        et = (W @ s["S_t"]) / (W @ s["N_t"])
        ec = (W @ s["S_c"]) / (W @ s["N_c"])
        return np.column_stack([et, ec, et - ec])

    return stat


def paired_trace_differences(s: dict) -> np.ndarray:
    """Per-trace target mean minus control mean, over traces with both."""
    both = (s["N_t"] > 0) & (s["N_c"] > 0)
    return s["S_t"][both] / s["N_t"][both] - s["S_c"][both] / s["N_c"][both]


def flip_generator(seed: int) -> np.random.Generator:
    """Generator for Monte-Carlo sign flips, separate from the bootstrap's so p never depends on n_boot."""
    return np.random.default_rng([seed, 1])


def _layer_effect(g: pd.DataFrame, *, rng: np.random.Generator, flip_rng: np.random.Generator, n_boot: int,
                  level: float, n_flip: int) -> dict:
    s = group_sums(g)
    eff, ctl, did = cluster_bootstrap(did_stat(s), s["G"], n_boot=n_boot, rng=rng, level=level)
    p, p_method = sign_flip_test(s["S_t"][s["N_t"] > 0], rng=flip_rng, n_flip=n_flip)
    p_did, _ = sign_flip_test(paired_trace_differences(s), rng=flip_rng, n_flip=n_flip)
    targets = g[~g["is_control"]]
    return {
        "n_targets": int(len(targets[["trace", "position"]].drop_duplicates())),
        "n_traces": int(targets["trace"].nunique()),
        "effect": eff["estimate"], "ci_low": eff["ci_low"], "ci_high": eff["ci_high"], "ci_method": eff["ci_method"],
        "control_effect": ctl["estimate"], "did": did["estimate"], "p": p,
        "n_controls": int(g["is_control"].sum()), "control_ci_low": ctl["ci_low"], "control_ci_high": ctl["ci_high"],
        "did_ci_low": did["ci_low"], "did_ci_high": did["ci_high"], "p_did": p_did, "p_method": p_method,
    }


def adjust_pvalues(effects: pd.DataFrame, correction: str = "holm") -> pd.DataFrame:
    """Fill ``p_adj`` by adjusting ``p`` across all layers and conditions of each measure.

    Holm controls the family-wise error rate; BH controls the false discovery rate.
    """
    out = effects.copy()
    out["p_adj"] = np.nan
    out["correction"] = correction
    for _, idx in out.groupby("measure").groups.items():
        p = out.loc[idx, "p"].astype(float)
        ok = p.notna()
        if ok.any():
            out.loc[p[ok].index, "p_adj"] = adjust(p[ok].to_numpy(), correction)
    return out


def adjust(p: np.ndarray, correction: str) -> np.ndarray:
    """Adjusted p-values: Holm step-down, Benjamini-Hochberg step-up, Bonferroni, or unchanged.

    Written out (a few lines each) because statsmodels' ``multipletests`` forces a garbage
    collection on every call, which dominates the cost of the simulation tests.
    """
    p = np.asarray(p, dtype=float)
    m = p.size
    if correction == "none" or m == 0:
        return p.copy()
    if correction == "bonferroni":
        return np.minimum(1.0, p * m)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if correction == "holm":
        steps = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif correction == "bh":
        steps = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
    else:
        raise ValueError(f"adjust: unknown correction {correction!r}; use one of {CORRECTIONS}")
    out = np.empty(m)
    out[order] = np.minimum(1.0, steps)
    return out


# --------------------------------------------------------------------------------------------
# change in primary sink score where attention to secondary sinks was masked
# --------------------------------------------------------------------------------------------

MASK_COLUMNS = ["condition", "trace", "position", "is_control", "layer", "primary_sink_score",
                "clean_primary_sink_score"]


def masked_layer_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Select the rows of the layers where attention to the target was masked.

    Precedence: a boolean ``masked`` column if present; else, per condition, the layers where
    a target was a sink in the clean run (``clean_is_sink``: attention to a secondary sink can
    only be masked where it is one), applied to the condition's targets and controls alike;
    else all rows.

    Returns:
        ``(selected rows, rule used)``.
    """
    if "masked" in rows.columns:
        return rows[as_bool(rows["masked"])], "masked column"
    if "clean_is_sink" in rows.columns:
        sink = as_bool(rows["clean_is_sink"]) & ~as_bool(rows["is_control"])
        layers = rows[sink].groupby("condition")["layer"].agg(lambda s: set(s.tolist()))
        keep = [layer in layers.get(cond, set()) for cond, layer in zip(rows["condition"], rows["layer"])]
        return rows[np.asarray(keep, bool)], "layers where a target of the condition was a clean sink"
    return rows, "all layers (no masked or clean_is_sink column)"


@warnings_to_notes
def mask_primary_change(
    rows: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0, level: float = LEVEL, n_flip: int = 9999,
    by_layer: bool = True,
) -> dict:
    """Change of the primary (BOS) sink score in masked layers when secondary sinks are masked.

    ``effect`` is the mean over target tokens of their average (primary_sink_score -
    clean_primary_sink_score) across the masked layers; a positive value means the BOS sink
    regains attention when secondary sinks are removed (the compensation claim). CI: trace
    bootstrap; p: trace-level sign flip; ``did``: target minus control change.

    Args:
        rows: effects long-format rows of attention-mask conditions with columns
            ``condition, trace, position, is_control, layer, primary_sink_score,
            clean_primary_sink_score`` (optional ``masked``, ``clean_is_sink``).
        n_boot: bootstrap replicates.
        seed: seed.
        level: confidence level.
        n_flip: Monte-Carlo sign flips beyond 12 traces.
        by_layer: also report :func:`per_layer_effects` of the masked layers.

    Returns:
        Dict with ``estimable, effect, ci_low, ci_high, ci_method, p, control_effect, did,
        did_ci_low, did_ci_high, p_did, n_targets, n_traces, layers, masked_rule, per_layer``.
    """
    require_columns(rows, MASK_COLUMNS, what="mask_primary_change")
    d = rows.copy()
    d["is_control"] = as_bool(d["is_control"])
    d, rule = masked_layer_rows(d)
    d = d.dropna(subset=["primary_sink_score", "clean_primary_sink_score"])
    d["diff"] = d["primary_sink_score"].astype(float) - d["clean_primary_sink_score"].astype(float)
    units = d.groupby(["condition", "trace", "position", "is_control"], sort=True)["diff"].mean().reset_index()
    n_targets = int((~units["is_control"]).sum())
    n_traces = int(units.loc[~units["is_control"], "trace"].nunique())
    base = {"masked_rule": rule, "n_targets": n_targets, "n_traces": n_traces,
            "layers": sorted(d["layer"].unique().tolist())}
    if n_targets == 0:
        return to_jsonable({**base, "estimable": False, "reason": "no target rows in masked layers"})
    s = group_sums(units)
    eff, ctl, did = cluster_bootstrap(did_stat(s), s["G"], n_boot=n_boot, rng=np.random.default_rng(seed), level=level)
    flip_rng = flip_generator(seed)
    p, p_method = sign_flip_test(s["S_t"][s["N_t"] > 0], rng=flip_rng, n_flip=n_flip)
    p_did, _ = sign_flip_test(paired_trace_differences(s), rng=flip_rng, n_flip=n_flip)
    per_layer = per_layer_effects(d, "primary_sink_score", n_boot=n_boot, seed=seed, level=level,
                                  n_flip=n_flip) if by_layer else None
    return to_jsonable({
        **base, "estimable": True, "reason": None, "effect": eff["estimate"], "ci_low": eff["ci_low"],
        "ci_high": eff["ci_high"], "ci_method": eff["ci_method"], "p": p, "p_method": p_method,
        "control_effect": ctl["estimate"], "did": did["estimate"], "did_ci_low": did["ci_low"],
        "did_ci_high": did["ci_high"], "p_did": p_did, "per_layer": per_layer,
    })


# --------------------------------------------------------------------------------------------
# 5. compensation
# --------------------------------------------------------------------------------------------

PROFILE_COLUMNS = ["trace", "layer", "primary_sink_score"]
SINK_COLUMNS = ["trace", "position", "l_start", "lifetime"]


@warnings_to_notes
def compensation(
    profile_df: pd.DataFrame, sinks_df: pd.DataFrame, mask_effects: pd.DataFrame | None = None, *,
    n_boot: int = 2000, seed: int = 0, level: float = LEVEL, valley_from: int | None = None,
) -> dict:
    """Does the BOS sink score dip across depth where secondary sinks start (compensation)?

    ``profile`` is the mean clean primary sink score per layer over traces with a trace
    bootstrap CI. ``valley_layer`` is the layer of its minimum, searched from the early peak
    onward (layers before the primary sink forms are not a valley), and
    ``valley_distribution`` how often each layer is the minimum across bootstrap replicates.
    ``valley_in_l_start_range`` says whether the valley lies within [min l_start - 1,
    max l_start + 1] of the secondary sinks. ``mask`` (with ``mask_effects``) is the change of
    the primary sink score in masked layers when attention to secondary sinks is masked.

    Args:
        profile_df: clean run, columns ``trace, layer, primary_sink_score``.
        sinks_df: one row per secondary sink, columns ``trace, position, l_start, lifetime``.
        mask_effects: optional attention-mask rows: either effects long format (columns
            ``condition, trace, position, is_control, layer, primary_sink_score,
            clean_primary_sink_score``) or :func:`per_layer_effects` output (``measure`` and
            ``effect`` columns; the ``primary_sink_score`` rows are reported as they are).
        n_boot: bootstrap replicates.
        seed: seed.
        level: confidence level.
        valley_from: first layer searched for the valley; default: the layer of the profile's
            maximum within the first half of the layers.

    Returns:
        Dict with ``profile, valley_layer, valley_from, valley_ci, valley_distribution,
        l_start, valley_in_l_start_range, valley_in_range_fraction, mask, notes``.
    """
    require_columns(profile_df, PROFILE_COLUMNS, what="compensation(profile_df)")
    require_columns(sinks_df, SINK_COLUMNS, what="compensation(sinks_df)")
    notes: list[str] = []
    out: dict = {"notes": notes}
    wide = profile_df.pivot_table(index="trace", columns="layer", values="primary_sink_score", aggfunc="mean")
    wide = wide.sort_index(axis=1)
    out.update(_profile_with_valley(wide, n_boot, np.random.default_rng(seed), level, valley_from))
    out["l_start"] = _l_start_summary(sinks_df)
    out.update(_valley_vs_l_start(out))
    if mask_effects is not None:
        out["mask"] = _mask_summary(mask_effects, n_boot=n_boot, seed=seed, level=level)
    return to_jsonable(out)


def _profile_with_valley(wide: pd.DataFrame, n_boot: int, rng: np.random.Generator, level: float,
                         valley_from: int | None) -> dict:
    layers = wide.columns.to_numpy()
    X = wide.to_numpy(float)
    present = np.isfinite(X)
    Xz = np.where(present, X, 0.0)
    G = X.shape[0]
    if G == 0 or layers.size == 0:
        return {"profile": [], "valley_layer": None, "estimable": False, "reason": "empty profile"}

    def stat(W: np.ndarray) -> np.ndarray:  # (replicates, layers) weighted mean per layer
        return (W @ Xz) / (W @ present)

    with np.errstate(divide="ignore", invalid="ignore"):
        mean = stat(np.ones((1, G)))[0]
        boot = stat(bootstrap_weights(G, n_boot, rng)) if G >= 2 else np.empty((0, layers.size))
        jack = stat(jackknife_weights(G)) if G >= 2 else None
    profile = []
    for j, layer in enumerate(layers):
        low, high, method = interval(boot[:, j], mean[j], None if jack is None else jack[:, j], level=level) \
            if G >= 2 else (float("nan"), float("nan"), "none")
        profile.append({"layer": layer, "mean": mean[j], "ci_low": low, "ci_high": high, "ci_method": method,
                        "n_traces": int(present[:, j].sum())})
    start = valley_from if valley_from is not None else _early_peak(layers, mean)
    valley = _valley(layers, mean, start, valley_from)
    boot_valleys = [_valley(layers, row, None, valley_from) for row in boot]
    boot_valleys = np.array([v for v in boot_valleys if v is not None])
    dist = {}
    if boot_valleys.size:
        vals, counts = np.unique(boot_valleys, return_counts=True)
        dist = {str(v): c / boot_valleys.size for v, c in zip(vals.tolist(), counts.tolist())}
    tail = (1 - level) / 2
    ci = [None, None]
    if boot_valleys.size:
        ci = np.quantile(boot_valleys, [tail, 1 - tail], method="inverted_cdf").tolist()
    return {"profile": profile, "n_traces": G, "valley_layer": valley, "valley_from": start, "valley_ci": ci,
            "valley_distribution": dist, "_boot_valleys": boot_valleys}


def _early_peak(layers: np.ndarray, mean: np.ndarray) -> int | None:
    """Layer of the profile's maximum within the first half of the layers (where the BOS sink forms)."""
    half = max(1, int(np.ceil(layers.size / 2)))
    head = mean[:half]
    if not np.isfinite(head).any():
        return None
    return layers[int(np.nanargmax(head))].item()


def _valley(layers: np.ndarray, mean: np.ndarray, start, valley_from: int | None):
    """Layer of the minimum of ``mean`` at or after ``start`` (the early peak if not given)."""
    if start is None:
        start = valley_from if valley_from is not None else _early_peak(layers, mean)
    if start is None:
        return None
    mask = (layers >= start) & np.isfinite(mean)
    if not mask.any():
        return None
    idx = np.flatnonzero(mask)
    return layers[idx[int(np.argmin(mean[idx]))]].item()


def _l_start_summary(sinks_df: pd.DataFrame) -> dict:
    s = sinks_df.dropna(subset=["l_start"])
    if s.empty:
        return {"n_sinks": 0}
    ls = s["l_start"].astype(int)
    counts = ls.value_counts().sort_index()
    return {"n_sinks": int(len(s)), "n_traces": int(s["trace"].nunique()), "min": int(ls.min()), "max": int(ls.max()),
            "median": float(ls.median()), "mode": int(counts.idxmax()),
            "counts": {str(k): int(v) for k, v in counts.items()},
            "lifetime_median": float(s["lifetime"].median()) if s["lifetime"].notna().any() else None}


def _valley_vs_l_start(out: dict) -> dict:
    boot = out.pop("_boot_valleys", np.array([]))
    ls, valley = out["l_start"], out.get("valley_layer")
    if not ls.get("n_sinks") or valley is None:
        return {"valley_in_l_start_range": None, "valley_in_range_fraction": None,
                "l_start_range": None}
    lo, hi = ls["min"] - 1, ls["max"] + 1
    frac = float(np.mean((boot >= lo) & (boot <= hi))) if boot.size else None
    return {"valley_in_l_start_range": bool(lo <= valley <= hi), "valley_in_range_fraction": frac,
            "l_start_range": [lo, hi], "valley_minus_mode_l_start": valley - ls["mode"]}


def _mask_summary(mask_effects: pd.DataFrame, *, n_boot: int, seed: int, level: float) -> dict:
    if {"measure", "effect"}.issubset(mask_effects.columns):
        rows = mask_effects[mask_effects["measure"] == "primary_sink_score"]
        return {"source": "per_layer_effects rows", "per_layer": rows.reset_index(drop=True)}
    return {"source": "effects long format", **mask_primary_change(mask_effects, n_boot=n_boot, seed=seed, level=level)}
