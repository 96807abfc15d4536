"""Causal effects of interventions: per-layer differences to the clean run, and the
primary-sink compensation analysis.

Inference unit: the trace. Tokens within one trace share a context and a forward pass, so
they are not independent; every p-value flips signs of whole-trace sums, every interval of an
effect inverts that test, and the remaining bootstraps (compensation profile) resample whole
traces. Exact zeros and degenerate estimates carry no interval and no p-value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import (
    LEVEL,
    SNAP_RTOL,
    adjust,
    as_bool,
    canonical_correction,
    require_columns,
    snap_small,
    trace_codes,
    warnings_to_notes,
)  # noqa: F401
from ._resampling import (MIN_BOOT, bootstrap_weights, interval, jackknife_weights, ratio_of_sums, sign_flip_interval,
                          sign_flip_test)
from .jsonable import to_jsonable

EFFECT_KEYS = ["condition", "trace", "position", "is_control", "layer"]
EFFECT_COLUMNS = ["condition", "measure", "layer", "n_targets", "n_traces", "effect", "ci_low", "ci_high",
                  "ci_method", "control_effect", "did", "p", "p_adj", "correction"]
EXTRA_COLUMNS = ["n_controls", "control_ci_low", "control_ci_high", "did_ci_low", "did_ci_high", "p_did",
                 "p_did_adj", "p_method", "exact_zero", "degenerate", "degenerate_reason", "pre_edit", "in_family"]

# --------------------------------------------------------------------------------------------
# trace-level location test: exact zero, degenerate, or sign-flip p with an inverted interval
# --------------------------------------------------------------------------------------------


def trace_mean_test(sums: np.ndarray, counts: np.ndarray | None = None, *, rng: np.random.Generator,
                    n_flip: int = 9999, level: float = LEVEL) -> dict:
    """Mean change per token from per-trace ``sums`` over ``counts`` tokens, with trace-level inference.

    - every value exactly 0 (after :func:`snap_small`): ``exact_zero``, estimate 0, no CI or p;
    - every trace has the same mean and it is not 0: ``degenerate`` (zero between-trace
      variance: any interval would collapse to a point), no CI or p;
    - otherwise ``p`` from the two-sided sign-flip test of the per-trace sums
      (``scipy.stats.permutation_test``) and the interval by inverting that test
      (:func:`~._resampling.sign_flip_interval`).

    Returns:
        ``{estimate, ci_low, ci_high, ci_method, p, p_method, n_traces, exact_zero, degenerate,
        degenerate_reason}``.
    """
    S = np.asarray(sums, float)
    N = np.ones_like(S) if counts is None else np.asarray(counts, float)
    keep = np.isfinite(S) & (N > 0)
    S, N = S[keep], N[keep]
    base = {"n_traces": int(S.size), "exact_zero": False, "degenerate": False, "degenerate_reason": None,
            "ci_low": None, "ci_high": None, "p": None}
    if S.size == 0:
        return {**base, "estimate": None, "ci_method": "none", "p_method": "none"}
    estimate = float(S.sum() / N.sum())
    if not np.any(S):
        return {**base, "estimate": 0.0, "exact_zero": True, "ci_method": "none (exact zero)",
                "p_method": "none (exact zero)"}
    means = S / N
    if np.ptp(means) <= 1e-12 * np.abs(means).max():
        return {**base, "estimate": estimate, "degenerate": True, "ci_method": "none (degenerate)",
                "p_method": "none (degenerate)",
                "degenerate_reason": f"every one of {S.size} trace(s) has the same mean change {means[0]:.6g}: "
                                     "zero between-trace variance"}
    p, p_method = sign_flip_test(S, rng=rng, n_flip=n_flip)
    ci = sign_flip_interval(S, N, rng=rng, n_flip=n_flip, level=level)
    return {**base, "estimate": estimate, "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
            "ci_method": ci["ci_method"], "p": p, "p_method": p_method}


# --------------------------------------------------------------------------------------------
# 4. per-layer effects
# --------------------------------------------------------------------------------------------


@warnings_to_notes
def per_layer_effects(
    df: pd.DataFrame, measures: str | list[str], *, n_boot: int | None = None, seed: int = 0,
    correction: str = "holm", level: float = LEVEL, n_flip: int = 9999, snap_rtol: float = SNAP_RTOL,
) -> pd.DataFrame:
    """Mean intervened-minus-clean change of each measure at each layer, with trace-level inference.

    ``effect`` is the mean over target tokens of (measure - clean_measure) at that layer;
    ``control_effect`` the same for control tokens; ``did`` the mean over traces with both of
    (target mean - control mean), the part of the change specific to the targets.

    Inference (:func:`trace_mean_test`): ``p`` is a two-sided trace-level sign-flip test of
    ``effect = 0`` (scipy ``permutation_test``; exact enumeration while ``2**G <= n_flip``,
    seeded Monte Carlo above) and ``ci_low, ci_high`` invert that same test, so the interval
    excludes 0 exactly when p < 1 - level. Under the null the intervention leaves each trace's
    summed change symmetric about zero, so the flips give the exact null at any number of
    traces; with fewer than 6 traces p cannot reach 0.05 and the interval is unbounded
    (``None``), which is the honest answer at that size. ``p_did`` and ``did_ci_*`` apply the
    same test to the per-trace (target mean - control mean) differences.

    Exact nulls are exact: per-token changes within ``snap_rtol`` (:data:`SNAP_RTOL`) are set to
    0, a layer whose changes are all 0 gets ``exact_zero`` and no CI or p, and a layer whose
    traces all show the same nonzero change is ``degenerate`` (no CI or p). Layers before the
    condition's first edited layer (``intervened_layer``, when that column is present) are
    ``pre_edit`` and untested. ``p_adj`` adjusts ``p`` across the tested rows
    (``in_family``: at or after the edit, not exact zero, not degenerate) of all conditions and
    layers of one measure; ``p_did_adj`` does the same for ``p_did``, as its own family.

    Args:
        df: long format, columns ``condition, trace, position, is_control, layer`` (optional
            ``intervened_layer``) and, for each measure ``m``, both ``m`` and ``clean_m``.
        measures: measure name(s).
        n_boot: ignored (kept for callers of the bootstrap version); intervals come from test inversion.
        seed: seed of the Monte-Carlo sign flips.
        correction: ``"holm"``, ``"bh"`` (Benjamini-Hochberg; ``"fdr_bh"`` is the same), ``"bonferroni"``
            or ``"none"`` (statsmodels ``multipletests``, through :func:`._common.adjust`).
        level: confidence level.
        n_flip: sign-flip resamples; exact enumeration when ``2**G <= n_flip``.
        snap_rtol: exact-null tolerance (``snap_rtol_for(dtype)`` gives the run's).

    Returns:
        DataFrame with columns ``condition, measure, layer, n_targets, n_traces, effect, ci_low,
        ci_high, ci_method, control_effect, did, p, p_adj, correction`` then ``n_controls,
        control_ci_low, control_ci_high, did_ci_low, did_ci_high, p_did, p_did_adj, p_method,
        exact_zero, degenerate, degenerate_reason, pre_edit, in_family``. Untested values are
        NaN (``None`` in JSON).
    """
    measures = [measures] if isinstance(measures, str) else list(measures)
    require_columns(df, EFFECT_KEYS + [c for m in measures for c in (m, f"clean_{m}")], what="per_layer_effects")
    correction = canonical_correction(correction)
    first_edit = (df.groupby("condition")["intervened_layer"].min().to_dict()
                  if "intervened_layer" in df.columns else {})
    flip_rng = flip_generator(seed)
    rows = []
    for m in measures:
        units = _unit_diffs(df, m, snap_rtol)
        for (cond, layer), g in units.groupby(["condition", "layer"], sort=True):
            edit = first_edit.get(cond)
            pre = bool(edit is not None and np.isfinite(edit) and layer < edit)
            rows.append({"condition": cond, "measure": m, "layer": layer,
                         **_layer_effect(g, flip_rng=flip_rng, level=level, n_flip=n_flip, pre_edit=pre)})
    cols = EFFECT_COLUMNS + EXTRA_COLUMNS
    out = pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
    return adjust_pvalues(out, correction)


def _unit_diffs(df: pd.DataFrame, measure: str, snap_rtol: float = SNAP_RTOL) -> pd.DataFrame:
    """One (measure - clean) value per condition x token x layer (duplicates averaged), tiny ones snapped to 0."""
    d = df[EFFECT_KEYS + [measure, f"clean_{measure}"]].dropna(subset=[measure, f"clean_{measure}"]).copy()
    d["is_control"] = as_bool(d["is_control"])
    value, clean = d[measure].astype(float).to_numpy(), d[f"clean_{measure}"].astype(float).to_numpy()
    d["diff"] = snap_small(value - clean, value, clean, rtol=snap_rtol)
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
        et = ratio_of_sums(W, s["S_t"], s["N_t"])
        ec = ratio_of_sums(W, s["S_c"], s["N_c"])
        return np.column_stack([et, ec, et - ec])

    return stat


def paired_trace_differences(s: dict) -> np.ndarray:
    """Per-trace target mean minus control mean, over traces with both."""
    both = (s["N_t"] > 0) & (s["N_c"] > 0)
    return s["S_t"][both] / s["N_t"][both] - s["S_c"][both] / s["N_c"][both]


def flip_generator(seed: int) -> np.random.Generator:
    """Generator for Monte-Carlo sign flips, separate from the bootstrap's so p never depends on n_boot."""
    return np.random.default_rng([seed, 1])


def _layer_effect(g: pd.DataFrame, *, flip_rng: np.random.Generator, level: float, n_flip: int,
                  pre_edit: bool = False) -> dict:
    s = group_sums(g)
    has_t, has_c = s["N_t"] > 0, s["N_c"] > 0
    eff = trace_mean_test(s["S_t"][has_t], s["N_t"][has_t], rng=flip_rng, n_flip=n_flip, level=level)
    ctl = trace_mean_test(s["S_c"][has_c], s["N_c"][has_c], rng=flip_rng, n_flip=n_flip, level=level)
    did = trace_mean_test(paired_trace_differences(s), rng=flip_rng, n_flip=n_flip, level=level)
    targets = g[~g["is_control"]]
    if pre_edit:  # layers no edit can reach: report the change, test nothing
        for r in (eff, ctl, did):
            r.update(p=None, ci_low=None, ci_high=None)
            if not r["exact_zero"]:
                r["ci_method"] = r["p_method"] = "none (before the edit)"
    nan = float("nan")
    val = lambda x: nan if x is None else x  # noqa: E731  (NaN in the frame, None in JSON)
    return {
        "n_targets": int(len(targets[["trace", "position"]].drop_duplicates())),
        "n_traces": int(targets["trace"].nunique()),
        "effect": val(eff["estimate"]), "ci_low": val(eff["ci_low"]), "ci_high": val(eff["ci_high"]),
        "ci_method": eff["ci_method"], "control_effect": val(ctl["estimate"]), "did": val(did["estimate"]),
        "p": val(eff["p"]), "n_controls": int(g["is_control"].sum()), "control_ci_low": val(ctl["ci_low"]),
        "control_ci_high": val(ctl["ci_high"]), "did_ci_low": val(did["ci_low"]), "did_ci_high": val(did["ci_high"]),
        "p_did": val(did["p"]), "p_method": eff["p_method"], "exact_zero": eff["exact_zero"],
        "degenerate": eff["degenerate"], "degenerate_reason": eff["degenerate_reason"], "pre_edit": pre_edit,
        "in_family": bool(not pre_edit and eff["p"] is not None),
    }


def adjust_pvalues(effects: pd.DataFrame, correction: str = "holm") -> pd.DataFrame:
    """Fill ``p_adj`` (and ``p_did_adj``) by adjusting across the tested rows of each measure.

    The family of a measure is every (condition, layer) row with a p-value that is not
    ``pre_edit`` (layers before the edit cannot change and are not hypotheses); exact zeros
    and degenerate rows have no p and are outside it. Holm controls the family-wise error
    rate; BH the false discovery rate. ``p_did`` is adjusted the same way, as its own family.
    """
    correction = canonical_correction(correction)
    out = effects.copy()
    out["correction"] = correction
    pre = as_bool(out["pre_edit"]) if "pre_edit" in out.columns else pd.Series(False, index=out.index)
    for src, dst in (("p", "p_adj"), ("p_did", "p_did_adj")):
        out[dst] = np.nan
        if src not in out.columns:
            continue
        for _, idx in out.groupby("measure").groups.items():
            p = out.loc[idx, src].astype(float)
            ok = p.notna() & ~pre.loc[idx]
            if ok.any():
                out.loc[p[ok].index, dst] = adjust(p[ok].to_numpy(), correction)
    if "in_family" in out.columns:
        out["in_family"] = out["p_adj"].notna()
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
    rows: pd.DataFrame, *, n_boot: int | None = None, seed: int = 0, level: float = LEVEL, n_flip: int = 9999,
    by_layer: bool = True, snap_rtol: float = SNAP_RTOL,
) -> dict:
    """Change of the primary (BOS) sink score in masked layers when secondary sinks are masked.

    ``effect`` is the mean over target tokens of their average (primary_sink_score -
    clean_primary_sink_score) across the masked layers; a positive value means the BOS sink
    regains attention when secondary sinks are removed (the compensation claim). p: trace-level
    sign flip; CI: its inversion (:func:`trace_mean_test`, with its exact-zero and degenerate
    cases); ``did``: mean over traces of the target minus control change, tested the same way.

    Args:
        rows: effects long-format rows of attention-mask conditions with columns
            ``condition, trace, position, is_control, layer, primary_sink_score,
            clean_primary_sink_score`` (optional ``masked``, ``clean_is_sink``).
        n_boot: ignored (intervals come from test inversion).
        seed: seed.
        level: confidence level.
        n_flip: sign-flip resamples (exact enumeration when ``2**G <= n_flip``).
        by_layer: also report :func:`per_layer_effects` of the masked layers.
        snap_rtol: exact-null tolerance (:data:`SNAP_RTOL`).

    Returns:
        Dict with ``estimable, effect, ci_low, ci_high, ci_method, p, exact_zero, degenerate,
        degenerate_reason, control_effect, control_ci_low, control_ci_high, did, did_ci_low,
        did_ci_high, p_did, did_exact_zero, did_degenerate, n_targets, n_traces, layers,
        masked_rule, per_layer``.
    """
    require_columns(rows, MASK_COLUMNS, what="mask_primary_change")
    d = rows.copy()
    d["is_control"] = as_bool(d["is_control"])
    d, rule = masked_layer_rows(d)
    d = d.dropna(subset=["primary_sink_score", "clean_primary_sink_score"])
    value, clean = d["primary_sink_score"].astype(float).to_numpy(), d["clean_primary_sink_score"].astype(float).to_numpy()
    d["diff"] = snap_small(value - clean, value, clean, rtol=snap_rtol)
    units = d.groupby(["condition", "trace", "position", "is_control"], sort=True)["diff"].mean().reset_index()
    n_targets = int((~units["is_control"]).sum())
    n_traces = int(units.loc[~units["is_control"], "trace"].nunique())
    base = {"masked_rule": rule, "n_targets": n_targets, "n_traces": n_traces,
            "layers": sorted(d["layer"].unique().tolist())}
    if n_targets == 0:
        return to_jsonable({**base, "estimable": False, "reason": "no target rows in masked layers"})
    s = group_sums(units)
    flip_rng = flip_generator(seed)
    has_t, has_c = s["N_t"] > 0, s["N_c"] > 0
    eff = trace_mean_test(s["S_t"][has_t], s["N_t"][has_t], rng=flip_rng, n_flip=n_flip, level=level)
    ctl = trace_mean_test(s["S_c"][has_c], s["N_c"][has_c], rng=flip_rng, n_flip=n_flip, level=level)
    did = trace_mean_test(paired_trace_differences(s), rng=flip_rng, n_flip=n_flip, level=level)
    per_layer = per_layer_effects(d, "primary_sink_score", seed=seed, level=level, n_flip=n_flip,
                                  snap_rtol=snap_rtol) if by_layer else None
    return to_jsonable({
        **base, "estimable": True, "reason": None, "effect": eff["estimate"], "ci_low": eff["ci_low"],
        "ci_high": eff["ci_high"], "ci_method": eff["ci_method"], "p": eff["p"], "p_method": eff["p_method"],
        "exact_zero": eff["exact_zero"], "degenerate": eff["degenerate"], "degenerate_reason": eff["degenerate_reason"],
        "control_effect": ctl["estimate"] if has_c.any() else None, "control_ci_low": ctl["ci_low"],
        "control_ci_high": ctl["ci_high"], "did": did["estimate"], "did_ci_low": did["ci_low"],
        "did_ci_high": did["ci_high"], "p_did": did["p"], "did_exact_zero": did["exact_zero"],
        "did_degenerate": did["degenerate"], "per_layer": per_layer,
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
        return ratio_of_sums(W, Xz, present)

    with np.errstate(divide="ignore", invalid="ignore"):
        mean = stat(np.ones((1, G)))[0]
        boot = stat(bootstrap_weights(G, max(n_boot, MIN_BOOT), rng)) if G >= 2 else np.empty((0, layers.size))
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
