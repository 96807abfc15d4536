"""The verdict rule, and the sign-flip estimate every hypothesis verdict rests on.

The rule (:data:`VERDICT_RULE`) is written once, in :func:`judge`; a verdict component is one
measure of one hypothesis on one condition family against one comparison arm
(:mod:`interventions.stats.hypotheses` picks the rows), estimated by :func:`trace_sign_flip`
over independent units (traces, with traces that repeat the same measurement counted once).
A compound hypothesis is supported only when every component is; that AND is an
intersection-union test, so each component at level alpha keeps the compound at level alpha.
Across the families of one run a Holm adjustment is reported beside the raw verdicts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import SNAP_RTOL
from ._resampling import sign_flip_interval, sign_flip_test
from .jsonable import to_jsonable

ALPHA = 0.05
MIN_N = 5
"""Fewest target tokens for any verdict other than inconclusive."""


def min_traces_for(alpha: float) -> int:
    """Fewest traces G at which an exact two-sided sign-flip test can reach p < alpha (2 / 2^G < alpha).

    The same minimum holds for a decisive verdict in either direction: a "not supported"
    that needs fewer traces than a "supported" could be reached where the data could never
    have supported the claim.
    """
    g = 1
    while 2.0 / 2.0**g >= alpha:
        g += 1
    return g


MIN_TRACES = min_traces_for(ALPHA)
"""Fewest traces (the independent unit) for any verdict other than inconclusive (6 at alpha 0.05)."""

VERDICT_RULE = (
    "not testable if no comparison arm that can move both ways under the null is in the run (or the one asked "
    "for cannot decide the measure); inconclusive if n < {min_n} targets or < {min_traces} independent units "
    "(traces, a repeated measurement counted once) or the test is missing; "
    "not supported if the whole CI lies within the declared equivalence margin (a well-powered "
    "null, or an effect too small to matter even when p < alpha); supported if p < alpha, the CI "
    "excludes 0 and the effect has the predicted sign (for a two-sided prediction, either sign); an estimate "
    "every unit shares (degenerate, no CI) is judged on its exact p, sign and the margin; "
    "not supported if the CI excludes 0 on the opposite side of the prediction; otherwise inconclusive. A compound hypothesis is supported "
    "if all components are, not supported if any is, else not testable if any is, otherwise inconclusive."
).format(min_n=MIN_N, min_traces=MIN_TRACES)

DIRECTIONS = {"increase": 1, "decrease": -1, "nonzero": 0}


def judge(
    p: float | None, effect: float | None, ci: tuple[float | None, float | None], *, direction: str,
    alpha: float = ALPHA, n: int | None = None, n_traces: int | None = None, min_n: int = MIN_N,
    min_traces: int = MIN_TRACES, margin: float | None = None,
) -> dict:
    """Apply :data:`VERDICT_RULE` to one test.

    Args:
        p: p-value of the pre-declared test (already adjusted where it is one of many).
        effect: effect estimate.
        ci: ``(low, high)`` confidence interval of the effect.
        direction: ``"increase"``, ``"decrease"`` or ``"nonzero"`` (the prediction).
        alpha: significance level.
        n: number of target tokens.
        n_traces: number of traces.
        min_n: fewest targets for a decisive verdict.
        min_traces: fewest traces for a decisive verdict.
        margin: equivalence margin, or None for no equivalence claim.

    Returns:
        ``{"verdict": "supported" | "not supported" | "inconclusive", "reason": str}``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"judge: direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
    sign = DIRECTIONS[direction]
    if n is not None and n < min_n:
        return {"verdict": "inconclusive", "reason": f"n = {n} targets < {min_n}"}
    if n_traces is not None and n_traces < min_traces:
        return {"verdict": "inconclusive", "reason": f"{n_traces} trace(s) < {min_traces}"}
    low, high = ci if ci is not None else (None, None)
    if any(v is None or not np.isfinite(v) for v in (p, effect, low, high)):
        return {"verdict": "inconclusive", "reason": "test not estimable (missing p, effect or CI)"}
    above, below = low > 0, high < 0
    predicted = (above and effect > 0) if sign > 0 else (below and effect < 0) if sign < 0 else (above or below)
    if margin is not None and margin > 0 and -margin <= low and high <= margin:
        # Checked first: an effect whose whole CI lies inside the margin is negligible even when p < alpha
        # (two one-sided tests say it is equivalent to none); "supported" would overstate it.
        return {"verdict": "not supported", "reason": f"CI [{low:.3g}, {high:.3g}] within the equivalence margin "
                                                      f"+-{margin:g}" + (" (significant but negligible, p = "
                                                                        f"{p:.3g})" if p < alpha and predicted else "")}
    if p < alpha and predicted:
        return {"verdict": "supported", "reason": f"p = {p:.3g} < {alpha}, CI [{low:.3g}, {high:.3g}] excludes 0 "
                                                  f"in the predicted direction"}
    if (sign > 0 and below) or (sign < 0 and above):
        return {"verdict": "not supported",
                "reason": f"CI [{low:.3g}, {high:.3g}] excludes 0 opposite to the prediction"}
    if margin is not None and -margin <= low and high <= margin:   # margin 0: a CI of exactly [0, 0]
        return {"verdict": "not supported", "reason": f"CI [{low:.3g}, {high:.3g}] within the equivalence margin "
                                                      f"+-{margin:g}"}
    return {"verdict": "inconclusive", "reason": f"p = {p:.3g}, CI [{low:.3g}, {high:.3g}]: neither criterion met"}


def verdict(
    p: float | None, effect: float | None, ci: tuple[float | None, float | None], *, direction: str,
    alpha: float = ALPHA, n: int | None = None, n_traces: int | None = None, min_n: int = MIN_N,
    min_traces: int = MIN_TRACES, margin: float | None = None,
) -> str:
    """The verdict string of :func:`judge` (same arguments): supported, not supported or inconclusive."""
    return judge(p, effect, ci, direction=direction, alpha=alpha, n=n, n_traces=n_traces, min_n=min_n,
                 min_traces=min_traces, margin=margin)["verdict"]


def combine(components: list[dict]) -> dict:
    """Verdict of a compound hypothesis: all supported -> supported; any not supported -> not supported;
    else any not testable -> not testable; else inconclusive."""
    verdicts = [c["verdict"] for c in components]
    if verdicts and all(v == "supported" for v in verdicts):
        return {"verdict": "supported", "reason": "all components supported"}
    for v in ("not supported", "not testable", "inconclusive"):
        hits = [c for c in components if c["verdict"] == v]
        if hits:
            # each component's own reason, so the record says why without opening the components
            why = "; ".join(f"{c['name']}: {(c.get('reason') or v).removeprefix(v + ': ')}" for c in hits)
            return {"verdict": v, "reason": f"{v}: {why}"}
    return {"verdict": "inconclusive", "reason": "no component"}


# --------------------------------------------------------------------------------------------
# Family verdicts: one declared hypothesis on one condition family, against its comparison arm
# --------------------------------------------------------------------------------------------

EXACT_TOL = 1e-6
"""Per-unit differences below this (attention mass, layers, nats) are exact zeros in a float32 run: clean and
edited passes may sum the same numbers in another order (prefix reuse), which leaves ~1e-10. bfloat16 and
float16 runs use :func:`exact_tol_for`."""

FLIPS = 9999
"""Sign patterns of the sign-flip test: all 2^G are enumerated while 2^G <= 9999, i.e. up to G = 13 units (exact
p); beyond, 9999 random patterns (Monte Carlo, p = (1 + hits) / (1 + B), scipy's convention; the smallest p is
1e-4, far below any alpha a verdict uses)."""


def exact_tol_for(dtype: str | None) -> float:
    """The exact-null tolerance of a verdict for a run's dtype: EXACT_TOL in float32, scaled by the rounding of
    half-precision types (the ratio of their tolerance to float32's in the per-layer effects, 1e-2 / 1e-5)."""
    from ._common import snap_rtol_for

    return EXACT_TOL * snap_rtol_for(dtype) / SNAP_RTOL


def trace_sign_flip(d, *, alpha: float = ALPHA, seed: int = 0, tol: float = EXACT_TOL) -> dict:
    """Mean of per-unit values ``d`` with a sign-flip p and the CI that inverts the same test.

    The p is ``scipy.stats.permutation_test(permutation_type="samples")`` on the units' signs
    (:func:`~interventions.stats._resampling.sign_flip_test`: exact up to G = 13, Monte Carlo with
    9999 draws beyond); the CI is every shift the same test does not reject at ``alpha``
    (:func:`~interventions.stats._resampling.sign_flip_interval`, which scipy does not offer).

    Returns ``{effect, p, ci_low, ci_high, n_traces, exact_null, degenerate, p_method}``. On an exact
    null (every ``|d| < tol``) p and CI are None; on a degenerate ``d`` (every unit equal, not zero)
    the p is exact but there is no CI (it would be a point).
    """
    d = np.asarray(d, float)
    d = d[np.isfinite(d)]
    d = np.where(np.abs(d) < tol, 0.0, d)
    g = len(d)
    out = {"effect": float(d.mean()) if g else None, "n_traces": g, "p": None, "ci_low": None, "ci_high": None,
           "exact_null": False, "degenerate": False, "p_method": None}
    if g == 0:
        return out
    if np.all(d == 0):
        out.update(effect=0.0, exact_null=True)
        return out
    if g < 2:  # one unit: no test (and none is needed: the verdict rule asks for min_traces units)
        return out
    out["p"], out["p_method"] = sign_flip_test(d, rng=np.random.default_rng(seed), n_flip=FLIPS)
    if np.ptp(d) == 0:
        out["degenerate"] = True
        return out
    ci = sign_flip_interval(d, rng=np.random.default_rng(seed), n_flip=FLIPS, level=1.0 - alpha)
    out["ci_low"], out["ci_high"] = ci["ci_low"], ci["ci_high"]
    return out


def judge_traces(est: dict, *, direction: str, alpha: float = ALPHA, margin: float | None = None,
                 n: int | None = None, min_n: int = MIN_N, min_traces: int | None = None,
                 tol: float = EXACT_TOL) -> dict:
    """:data:`VERDICT_RULE` for a :func:`trace_sign_flip` estimate, with exact nulls and degenerate CIs.

    An exact null (every unit exactly 0) with enough units is "not supported": the edit changed
    nothing, so the CI is {0}, inside any margin; no p or CI is reported for it. A degenerate
    estimate (every unit the same nonzero value) is judged on its exact p, its sign and the margin
    (an effect within +-margin is negligible however many units share it).
    """
    min_traces = min_traces_for(alpha) if min_traces is None else min_traces
    g = est.get("n_traces") or 0
    if n is not None and n < min_n:
        return {"verdict": "inconclusive", "reason": f"n = {n} targets < {min_n}"}
    if g < min_traces:
        return {"verdict": "inconclusive", "reason": f"{g} independent unit(s) < {min_traces}, the fewest for which "
                                                     f"the sign-flip test can reach p < {alpha}"}
    if est.get("exact_null"):
        return {"verdict": "not supported", "reason": f"exact null: every one of {g} units changed by exactly 0 "
                                                      f"(|d| < {tol:g}); no p or CI"}
    if est.get("degenerate"):
        sign = DIRECTIONS[direction]
        eff, p = est["effect"], est["p"]
        right = (sign == 0) or (np.sign(eff) == sign)
        if margin is not None and abs(eff) <= margin:
            return {"verdict": "not supported", "reason": f"every unit moved by exactly {eff:.3g} (degenerate: no CI), "
                                                          f"within the equivalence margin +-{margin:g}"}
        if p < alpha and right:
            return {"verdict": "supported", "reason": f"every unit moved by exactly {eff:.3g} (degenerate: no CI); "
                                                      f"exact sign-flip p = {p:.3g}"}
        if p < alpha:
            return {"verdict": "not supported", "reason": f"every unit moved by exactly {eff:.3g}, opposite to "
                                                          "the prediction"}
        return {"verdict": "inconclusive", "reason": f"degenerate estimate {eff:.3g}, p = {p:.3g}"}
    return judge(est.get("p"), est.get("effect"), (est.get("ci_low"), est.get("ci_high")), direction=direction,
                 alpha=alpha, n=None, n_traces=g, min_traces=min_traces, margin=margin)


def independent_differences(target: pd.DataFrame, comparison: pd.DataFrame | None, *,
                            collapse: bool) -> tuple[pd.Series, dict]:
    """Per independent unit: target-arm mean minus comparison-arm mean, and the counts behind it.

    ``target``/``comparison`` hold ``trace``, ``value`` and ``unit`` (what the value was measured on: the hash
    of the tokens a target saw). Without ``collapse`` the unit is the trace: values are averaged per trace and,
    against a comparison arm, only traces present in both count.

    With ``collapse`` (measures fixed by the prefix a target saw), a measurement repeated in several traces
    counts once. Each target (each ``unit``) belongs to a cluster: its own trace when no other trace saw the
    same prefix, else the set of traces that share it (a templated system prompt: every trace). Each cluster's
    value is the mean of its rows, a repeated measurement's copies weighing as one: a trace
    with template sinks and a sink of its own gives one unit for its own sink, and the template sinks of all
    traces together give one more, so G copies of one measurement never count as G (nor does a shared
    measurement ride along with G independent ones).
    """
    counts = {"n": int(len(target)), "n_traces": int(target["trace"].nunique()) if len(target) else 0,
              "n_comparison_units": int(len(comparison)) if comparison is not None else 0,
              "n_distinct_targets": int(target["unit"].nunique()) if "unit" in target.columns else int(len(target))}
    collapse = collapse and "unit" in target.columns and (comparison is None or "unit" in comparison.columns)
    if collapse:
        arms = [target] + ([comparison] if comparison is not None else [])
        seen = pd.concat([a[["trace", "unit"]] for a in arms]).astype({"unit": str})
        traces_of = seen.groupby("unit")["trace"].agg(lambda t: tuple(sorted(set(t))))
        cluster = {u: (f"trace {ts[0]}" if len(ts) == 1 else "shared by " + ",".join(map(str, ts)))
                   for u, ts in traces_of.items()}

        def means(arm: pd.DataFrame) -> pd.Series:
            # each row weighs 1 / (copies of its measurement): a cluster of one trace gets that trace's plain mean
            unit = arm["unit"].astype(str)
            w = 1.0 / unit.map(traces_of.map(len)).to_numpy(float)
            a = pd.DataFrame({"cluster": unit.map(cluster).to_numpy(), "wv": w * arm["value"].to_numpy(float), "w": w})
            sums = a.groupby("cluster")[["wv", "w"]].sum()
            return (sums["wv"] / sums["w"]).astype(float)
    else:
        def means(arm: pd.DataFrame) -> pd.Series:
            return arm.groupby("trace")["value"].mean().astype(float)

    t = means(target)
    if comparison is not None:
        c = means(comparison)
        both = t.index.intersection(c.index)
        d = t.loc[both] - c.loc[both]
    else:
        d = t
    counts["n_independent"] = int(d.size)
    return d, counts


def family_component(name: str, test: str, target: pd.DataFrame, comparison: pd.DataFrame | None, *,
                     direction: str, alpha: float, margin: float | None, seed: int = 0, tol: float = EXACT_TOL,
                     collapse: bool = True) -> dict:
    """One verdict component: per-unit values of the target arm against the comparison arm (None: the clean run).

    See :func:`independent_differences` for the unit; the estimate is :func:`trace_sign_flip` of the
    differences and the verdict :func:`judge_traces` with the number of independent units.
    """
    d, counts = independent_differences(target, comparison, collapse=collapse)
    est = trace_sign_flip(d.to_numpy(float), alpha=alpha, seed=seed, tol=tol)
    j = judge_traces(est, direction=direction, alpha=alpha, margin=margin, n=counts["n"], tol=tol)
    return to_jsonable({"name": name, "test": test, "direction": direction, "margin": margin, **counts,
                        "effect": est["effect"], "ci": [est["ci_low"], est["ci_high"]],
                        "p": est["p"], "p_method": est["p_method"], "exact_null": est["exact_null"],
                        "degenerate": est["degenerate"],
                        "target_mean": float(target["value"].mean()) if len(target) else None,
                        "comparison_mean": float(comparison["value"].mean()) if comparison is not None
                        and len(comparison) else None, **j})


def untestable_component(name: str, reason: str, *, direction: str, margin: float | None) -> dict:
    """A component that has no valid comparison: "not testable" with why, no numbers."""
    return {"name": name, "test": None, "direction": direction, "margin": margin, "n": None, "n_traces": None,
            "n_independent": None, "effect": None, "ci": [None, None], "p": None, "exact_null": False,
            "degenerate": False, "verdict": "not testable", "reason": reason}


def family_report(key: str, hypothesis: str, claim: str, alpha: float, components: list[dict], *, conditions: list[str],
                  comparison: str, comparison_conditions: list[str], excluded: list[dict], details: dict,
                  notes: list[str]) -> dict:
    """The verdict record of one (hypothesis, condition family)."""
    main = components[0]
    overall = combine(components) if len(components) > 1 else {"verdict": main["verdict"], "reason": main["reason"]}
    return to_jsonable({
        "key": key, "hypothesis": hypothesis, "claim": claim,
        "test": " AND ".join(c["test"] for c in components if c["test"]), "alpha": alpha,
        "effect": main["effect"], "ci": main["ci"], "p": main["p"], "n": main["n"], "n_traces": main["n_traces"],
        "n_independent": main.get("n_independent"), "exact_zero": bool(main.get("exact_null")),
        "degenerate": bool(main.get("degenerate")),
        "degenerate_reason": "every independent unit moved by the same amount (no CI; exact p in the reason)"
        if main.get("degenerate") else None,
        "verdict": overall["verdict"], "reason": overall["reason"],
        "rule": VERDICT_RULE, "conditions": conditions, "compared_with": comparison,
        "comparison_conditions": comparison_conditions, "excluded": excluded, "components": components,
        "details": details, "notes": notes,
    })
