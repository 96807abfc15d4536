"""Pre-declared hypothesis tests H1-H4 and the single rule that turns a test into a verdict.

The rule (:data:`VERDICT_RULE`) is written once, in :func:`judge`; every hypothesis function
computes one or more components (effect, CI, p, n, predicted direction, equivalence margin)
and passes them through it. A compound hypothesis is supported only when every component is;
that AND is an intersection-union test, so each component at level alpha keeps the compound
at level alpha with no multiplicity correction. Each hypothesis is one pre-declared test, so
its p-values are not adjusted further (per-layer screens use ``p_adj`` from effects instead).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

from ._common import LEVEL, as_bool, require_columns, trace_codes, warnings_to_notes
from ._regression import coef_summary, glm_clustered
from ._resampling import cluster_bootstrap, sign_flip_test
from .effects import did_stat, flip_generator, group_sums, mask_primary_change, paired_trace_differences
from .fits import dose_response
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

MARGINS = {
    "h1_rate_change": 0.10,
    "h2_lifetime_slope": 0.5,
    "h3_rate": 0.05,
    "h3_trend": 0.05,
    "h4_primary_change": 0.01,
    "h4_kl": 0.01,
}
"""Declared equivalence margins: an effect whose whole CI lies inside +-margin counts as a
well-powered null. Units: H1 sink-rate change (fraction of tokens); H2 layers of lifetime per
unit log(factor); H3 suppression rate (fraction) and log-odds per layer; H4 primary sink
score (attention mass) and KL in nats."""

VERDICT_RULE = (
    "inconclusive if n < {min_n} targets or < {min_traces} traces or the test is missing; "
    "not supported if the whole CI lies within the declared equivalence margin (a well-powered "
    "null, or an effect too small to matter even when p < alpha); supported if p < alpha, the CI "
    "excludes 0 and the effect has the predicted sign (for a two-sided prediction, either sign); "
    "not supported if the CI excludes 0 on the opposite side of the prediction; otherwise inconclusive. A compound hypothesis is supported "
    "if all components are, not supported if any is, otherwise inconclusive."
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
    """Verdict of a compound hypothesis: all supported -> supported; any not supported -> not supported."""
    verdicts = [c["verdict"] for c in components]
    if verdicts and all(v == "supported" for v in verdicts):
        return {"verdict": "supported", "reason": "all components supported"}
    failing = [c["name"] for c in components if c["verdict"] == "not supported"]
    if failing:
        return {"verdict": "not supported", "reason": f"not supported: {', '.join(failing)}"}
    open_ = [c["name"] for c in components if c["verdict"] == "inconclusive"]
    return {"verdict": "inconclusive", "reason": f"inconclusive: {', '.join(open_)}"}


def _component(name: str, test: str, est: dict, *, direction: str, alpha: float, margin: float | None,
               min_n: int, min_traces: int) -> dict:
    """A component record: the test's numbers plus its verdict under the rule."""
    ci = (est.get("ci_low"), est.get("ci_high"))
    if est.get("exact_null"):
        j = judge_traces({"n_traces": est.get("n_traces"), "exact_null": True}, direction=direction, alpha=alpha,
                         margin=margin, n=est.get("n"), min_n=min_n, min_traces=min_traces)
        return {"name": name, "test": test, "direction": direction, "margin": margin, "effect": 0.0,
                "ci": [None, None], "p": None, "n": est.get("n"), "n_traces": est.get("n_traces"),
                "exact_null": True, **j}
    j = judge(est.get("p"), est.get("effect"), ci, direction=direction, alpha=alpha, n=est.get("n"),
              n_traces=est.get("n_traces"), min_n=min_n, min_traces=min_traces, margin=margin)
    if j["reason"].startswith("test not estimable") and est.get("reason"):
        j["reason"] = f"test not estimable: {est['reason']}"
    return {"name": name, "test": test, "direction": direction, "margin": margin, "effect": est.get("effect"),
            "ci": list(ci), "p": est.get("p"), "n": est.get("n"), "n_traces": est.get("n_traces"), **j}


def _report(hypothesis: str, alpha: float, components: list[dict], details: dict, notes: list[str]) -> dict:
    """The returned dict: headline numbers from the first component, verdict over all."""
    main = components[0]
    overall = combine(components) if len(components) > 1 else {"verdict": main["verdict"], "reason": main["reason"]}
    return to_jsonable({
        "hypothesis": hypothesis, "test": " AND ".join(c["test"] for c in components), "alpha": alpha,
        "effect": main["effect"], "ci": main["ci"], "p": main["p"], "n": main["n"], "n_traces": main["n_traces"],
        "verdict": overall["verdict"], "reason": overall["reason"], "rule": VERDICT_RULE,
        "components": components, "details": details, "notes": notes,
    })


def _kind_rows(df: pd.DataFrame, kind: str, needed: list[str], what: str) -> pd.DataFrame:
    """Rows of one intervention kind (all rows when there is no ``kind`` column), booleans cleaned."""
    require_columns(df, needed, what=what)
    d = df[df["kind"] == kind].copy() if "kind" in df.columns else df.copy()
    for col in ("is_control", "is_sink", "clean_is_sink", "suppressed"):
        if col in d.columns:
            d[col] = as_bool(d[col])
    return d


def _rate_test(units: pd.DataFrame, value: str, *, seed: int, n_boot: int, level: float) -> dict:
    """Mean of ``value`` over targets, minus controls when there are any, with trace inference.

    With controls: effect = target mean - control mean, CI = trace bootstrap of that
    difference, p = sign flip of per-trace (target - control) means. Without: effect =
    target mean, p = sign flip of per-trace target sums.
    """
    s = group_sums(units.assign(diff=units[value].astype(float)))
    eff, ctl, did = cluster_bootstrap(did_stat(s), s["G"], n_boot=n_boot, rng=np.random.default_rng(seed), level=level)
    rng = flip_generator(seed)
    targets = units[~units["is_control"]]
    base = {"n": int(len(targets)), "n_traces": int(targets["trace"].nunique()),
            "target_mean": eff["estimate"], "control_mean": ctl["estimate"] if s["N_c"].sum() else None}
    vs_controls = bool(s["N_c"].sum() > 0)
    paired = paired_trace_differences(s) if vs_controls else s["S_t"][s["N_t"] > 0]
    if len(paired) and np.all(np.abs(np.asarray(paired, float)) < EXACT_TOL):
        # every trace exactly 0: no p or CI (a bootstrap of zeros would print CI [0, 0])
        return {**base, "effect": 0.0, "ci_low": None, "ci_high": None, "p": None, "exact_null": True,
                "vs_controls": vs_controls, "ci_method": None}
    p, _ = sign_flip_test(paired, rng=rng)
    if vs_controls:
        return {**base, "effect": did["estimate"], "ci_low": did["ci_low"], "ci_high": did["ci_high"], "p": p,
                "vs_controls": True, "ci_method": did["ci_method"]}
    return {**base, "effect": eff["estimate"], "ci_low": eff["ci_low"], "ci_high": eff["ci_high"], "p": p,
            "vs_controls": False, "ci_method": eff["ci_method"]}


# --------------------------------------------------------------------------------------------
# H1: zeroing the l_start MLP output prevents the sink
# --------------------------------------------------------------------------------------------

H1_COLUMNS = ["condition", "trace", "position", "is_control", "layer", "is_sink", "clean_is_sink", "lifetime",
              "clean_lifetime"]


@warnings_to_notes
def h1_zero_prevents(
    effects_df: pd.DataFrame, *, alpha: float = ALPHA, margin: float = MARGINS["h1_rate_change"],
    n_boot: int = 2000, seed: int = 0, level: float = LEVEL, min_n: int = MIN_N, min_traces: int = MIN_TRACES,
) -> dict:
    """H1: zeroing the MLP output at l_start stops secondary sinks from forming.

    ``effect`` is the change in the fraction of tokens that are sinks (zeroed run minus clean
    run) among targets that were sinks in the clean run, minus the same change among
    control tokens that were clean sinks (placebo), when there are any; predicted negative.
    The test is the clustered analogue of McNemar's paired test: per-trace sums of each
    token's change (still a sink - was a sink) are sign-flipped; the exact unclustered McNemar
    p is in ``details``.

    Args:
        effects_df: long-format effects rows (kind ``zero`` is used).
        alpha: significance level.
        margin: equivalence margin on the sink-rate change.
        n_boot: bootstrap replicates for the CI.
        seed: seed.
        level: confidence level.
        min_n: fewest clean-sink targets.
        min_traces: fewest traces.

    Returns:
        ``{hypothesis, test, alpha, effect, ci, p, n, verdict, rule, ...}``.
    """
    d = _kind_rows(effects_df, "zero", H1_COLUMNS, "h1_zero_prevents")
    notes: list[str] = []
    units = d.groupby(["condition", "trace", "position", "is_control"], sort=True).agg(
        was=("clean_lifetime", "max"), now=("lifetime", "max"), was_any=("clean_is_sink", "max"),
        now_any=("is_sink", "max")).reset_index()
    units["was"] = (units["was"].fillna(0) > 0) | units["was_any"].astype(bool)
    units["now"] = (units["now"].fillna(0) > 0) | units["now_any"].astype(bool)
    units["change"] = units["now"].astype(float) - units["was"].astype(float)
    sinks = units[units["was"]]
    targets = sinks[~sinks["is_control"]]
    if sinks["is_control"].any():
        test = "sink-rate change, targets vs placebo controls (trace-clustered paired sign flip)"
    else:
        test = "sink-rate change among clean-sink targets (trace-clustered McNemar-style sign flip)"
        notes.append("no control tokens that were clean sinks: the null is 'no change in sink status'")
    est = _rate_test(sinks, "change", seed=seed, n_boot=n_boot, level=level)
    comp = _component("sink rate drops", test, est, direction="decrease", alpha=alpha, margin=margin,
                      min_n=min_n, min_traces=min_traces)
    lost, gained = int((targets["change"] < 0).sum()), int((targets["change"] > 0).sum())
    p_mcnemar = float(stats.binomtest(lost, lost + gained, 0.5).pvalue) if lost + gained else 1.0
    ctrl = units[units["is_control"]]
    details = {
        "n_clean_sink_targets": int(len(targets)), "n_prevented": lost,
        "target_rate_after": float(targets["now"].mean()) if len(targets) else None,
        "control_rate_before": float(ctrl["was"].mean()) if len(ctrl) else None,
        "control_rate_after": float(ctrl["now"].mean()) if len(ctrl) else None,
        "p_mcnemar_exact_unclustered": p_mcnemar, "conditions": sorted(units["condition"].astype(str).unique()),
    }
    return _report("H1: zeroing the l_start MLP output prevents the secondary sink", alpha, [comp], details, notes)


# --------------------------------------------------------------------------------------------
# H2: scaling the MLP output norm creates sinks whose lifetime grows with the norm
# --------------------------------------------------------------------------------------------


def _dose_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Dose-response rows (one per token x factor) from effects rows or from dose_response input.

    With ``clean_lifetime`` present and no factor-1 rows, the clean run is added as factor 1.
    """
    d = _kind_rows(df, "scale", ["trace", "position", "is_control", "factor", "lifetime"], "h2_scaling_grows")
    d = d.assign(token=d["token"] if "token" in d.columns else "",
                 sink_score=d["sink_score"] if "sink_score" in d.columns else np.nan)
    keys = ["trace", "position", "is_control"]
    out = d.groupby(keys + ["factor"], sort=True).agg(
        lifetime=("lifetime", "max"), sink_score=("sink_score", "mean"), token=("token", "first")).reset_index()
    if "clean_lifetime" in d.columns and not np.isclose(out["factor"], 1.0).any():
        clean = d.assign(clean_sink_score=d["clean_sink_score"] if "clean_sink_score" in d.columns else np.nan)
        clean = clean.groupby(keys, sort=True).agg(
            lifetime=("clean_lifetime", "max"), sink_score=("clean_sink_score", "mean"),
            token=("token", "first")).reset_index().assign(factor=1.0)
        out = pd.concat([out, clean[out.columns]], ignore_index=True)
    return out


@warnings_to_notes
def h2_scaling_grows(
    dose_df: pd.DataFrame, *, alpha: float = ALPHA, margin: float = MARGINS["h2_lifetime_slope"],
    n_perm: int = 999, seed: int = 0, level: float = LEVEL, min_n: int = MIN_N, min_traces: int = MIN_TRACES,
) -> dict:
    """H2: scaling the MLP output up makes tokens sinks whose lifetime grows with the factor.

    Two components, both required: the within-token slope of lifetime on log(factor) is
    positive for targets, and it is larger for targets than for controls (slope difference).
    Slopes and their CIs come from :func:`dose_response` (trace-clustered).

    Args:
        dose_df: :func:`dose_response` input, or long-format effects rows (kind ``scale``;
            the clean run is added as factor 1 from ``clean_lifetime``).
        alpha: significance level.
        margin: equivalence margin on the slope (layers per unit log factor).
        n_perm: permutations for the reported Page trend test.
        seed: seed.
        level: confidence level.
        min_n: fewest targets.
        min_traces: fewest traces.

    Returns:
        ``{hypothesis, test, alpha, effect, ci, p, n, verdict, rule, ...}``.
    """
    d = _dose_frame(dose_df)
    d["is_control"] = as_bool(d["is_control"])
    dr = dose_response(d, measures=("lifetime",), n_perm=n_perm, seed=seed, level=level)
    tgt = dr["targets"].get("lifetime", {}) if dr.get("estimable") else {}
    diff = dr["difference"].get("lifetime", {}) if dr.get("estimable") else {}
    est_a = {"effect": tgt.get("slope"), "ci_low": tgt.get("ci_low"), "ci_high": tgt.get("ci_high"),
             "p": tgt.get("p"), "n": tgt.get("n_units", dr.get("n_targets")), "n_traces": tgt.get("n_traces"),
             "reason": dr.get("reason") or tgt.get("reason")}
    est_b = {"effect": diff.get("slope_difference"), "ci_low": diff.get("ci_low"), "ci_high": diff.get("ci_high"),
             "p": diff.get("p"), "n": est_a["n"], "n_traces": est_a["n_traces"], "reason": diff.get("reason")}
    kw = {"alpha": alpha, "margin": margin, "min_n": min_n, "min_traces": min_traces}
    components = [
        _component("target lifetime slope > 0", "within-token OLS slope of lifetime on log(factor), "
                   "trace-clustered t", est_a, direction="increase", **kw),
        _component("target slope > control slope", "difference of within-token slopes (targets - controls), "
                   "trace-clustered t", est_b, direction="increase", **kw),
    ]
    details = {"factors": dr.get("factors"), "dose_response": dr}
    return _report("H2: scaling the MLP output norm creates sinks whose lifetime grows with the norm", alpha,
                   components, details, list(dr.get("notes", [])))


# --------------------------------------------------------------------------------------------
# H3: mean-swapping suppresses future sinks, more so at later layers
# --------------------------------------------------------------------------------------------

H3_COLUMNS = ["condition", "trace", "position", "is_control", "intervened_layer", "suppressed"]


@warnings_to_notes
def h3_swap_suppresses(
    effects_df: pd.DataFrame, *, alpha: float = ALPHA, margin_rate: float = MARGINS["h3_rate"],
    margin_trend: float = MARGINS["h3_trend"], n_boot: int = 2000, seed: int = 0, level: float = LEVEL,
    min_n: int = MIN_N, min_traces: int = MIN_TRACES,
) -> dict:
    """H3: swapping a future sink's activation for the mean non-sink token suppresses the sink,
    and the later the swap layer the more often.

    Components, both required: the suppression rate is above zero (above the control rate
    when controls exist; trace-level sign flip), and the log-odds of suppression rise with
    the swap layer (logistic regression of suppressed on intervened_layer over targets,
    trace-clustered CI; effect in log-odds per layer).

    Args:
        effects_df: long-format effects rows (kind ``mean_swap``).
        alpha: significance level.
        margin_rate: equivalence margin on the rate.
        margin_trend: equivalence margin on the log-odds slope.
        n_boot: bootstrap replicates.
        seed: seed.
        level: confidence level.
        min_n: fewest targets.
        min_traces: fewest traces.

    Returns:
        ``{hypothesis, test, alpha, effect, ci, p, n, verdict, rule, ...}``.
    """
    d = _kind_rows(effects_df, "mean_swap", H3_COLUMNS, "h3_swap_suppresses")
    notes: list[str] = []
    units = d.groupby(["condition", "trace", "position", "is_control", "intervened_layer"], sort=True).agg(
        suppressed=("suppressed", "max")).reset_index()
    units["suppressed"] = units["suppressed"].astype(float)
    est_a = _rate_test(units, "suppressed", seed=seed, n_boot=n_boot, level=level)
    test_a = "suppression rate" + (" minus control rate" if est_a["vs_controls"] else "") + \
             " (trace-level sign flip, trace bootstrap CI)"
    targets = units[~units["is_control"]]
    est_b = _logistic_trend(targets, level, notes)
    kw = {"alpha": alpha, "min_n": min_n, "min_traces": min_traces}
    components = [
        _component("suppression rate > 0", test_a, est_a, direction="increase", margin=margin_rate, **kw),
        _component("suppression rises with swap layer", "logistic regression of suppressed on swap layer, "
                   "trace-clustered t", est_b, direction="increase", margin=margin_trend, **kw),
    ]
    by_layer = targets.groupby("intervened_layer")["suppressed"].agg(["mean", "size"]).reset_index()
    details = {"rate_by_swap_layer": by_layer.rename(columns={"mean": "rate", "size": "n"}),
               "target_rate": est_a["target_mean"], "control_rate": est_a["control_mean"]}
    return _report("H3: mean-swapping suppresses future sinks, more at later layers", alpha, components, details, notes)


def _logistic_trend(targets: pd.DataFrame, level: float, notes: list[str]) -> dict:
    """Slope (log-odds per layer) of suppressed on swap layer, or a reason it is not estimable."""
    base = {"n": int(len(targets)), "n_traces": int(targets["trace"].nunique())}
    t = targets.dropna(subset=["intervened_layer"])
    if t["suppressed"].nunique() < 2 or t["intervened_layer"].nunique() < 2:
        return {**base, "reason": "needs both outcomes and >= 2 swap layers"}
    groups, _ = trace_codes(t["trace"])
    X = sm.add_constant(t["intervened_layer"].to_numpy(float), has_constant="add")
    fit_notes: list[str] = []
    try:
        res, _ = glm_clustered(t["suppressed"].to_numpy(float), X, groups, sm.families.Binomial(), fit_notes)
        s = coef_summary(res, 1, level=level)
    except (np.linalg.LinAlgError, ValueError) as exc:
        notes.append(f"logistic trend failed: {type(exc).__name__}: {exc}")
        return {**base, "reason": "logistic fit failed"}
    notes.extend(fit_notes)
    if any("separation" in n.lower() for n in fit_notes) or not np.isfinite(s["se"]):
        return {**base, "reason": "perfect separation: the slope is not finite"}
    return {**base, "effect": s["estimate"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "p": s["p"]}


# --------------------------------------------------------------------------------------------
# H4: masking attention to secondary sinks changes the primary sink and the predictions
# --------------------------------------------------------------------------------------------

H4_COLUMNS = ["condition", "trace", "position", "is_control", "layer", "primary_sink_score",
              "clean_primary_sink_score", "kl"]


@warnings_to_notes
def h4_mask_changes(
    effects_df: pd.DataFrame, *, alpha: float = ALPHA, margin_primary: float = MARGINS["h4_primary_change"],
    margin_kl: float = MARGINS["h4_kl"], n_boot: int = 2000, seed: int = 0, level: float = LEVEL,
    min_n: int = MIN_N, min_traces: int = MIN_TRACES, by_layer: bool = True,
) -> dict:
    """H4: masking attention to secondary sinks changes the primary sink score and the
    next-token predictions.

    Components, both required: the primary sink score in the masked layers changes (either
    sign; :func:`mask_primary_change`) *more than when matched control tokens are masked the
    same way* (difference in differences, trace-level paired sign flip), and the mean KL
    divergence of next-token predictions from the clean run is larger for targets than for
    controls (trace-level paired sign flip of target minus control mean KL).

    Controls are required because masking *any* key raises every other key's share, the
    primary sink's included (softmax renormalisation): a change against the clean run alone
    cannot be attributed to secondary sinks. Only targets that were secondary sinks in the
    clean run count (``clean_kind == "secondary"``, when that column is present).

    Args:
        effects_df: long-format effects rows (kind ``attention_mask``).
        alpha: significance level.
        margin_primary: equivalence margin on the primary-score change.
        margin_kl: equivalence margin on the KL difference (nats).
        n_boot: bootstrap replicates.
        seed: seed.
        level: confidence level.
        min_n: fewest targets.
        min_traces: fewest traces.
        by_layer: include the per-layer primary-score effects in ``details``.

    Returns:
        ``{hypothesis, test, alpha, effect, ci, p, n, verdict, rule, ...}``.
    """
    d = _kind_rows(effects_df, "attention_mask", H4_COLUMNS, "h4_mask_changes")
    notes: list[str] = []
    if "clean_kind" in d.columns:
        sink_target = ~d["is_control"] & (d["clean_kind"] == "secondary")
        dropped = int((~d["is_control"] & ~sink_target).groupby([d["trace"], d["position"]]).any().sum())
        if dropped:
            notes.append(f"{dropped} masked targets were not secondary sinks in the clean run and are left out")
        d = d[d["is_control"] | sink_target]
    primary = mask_primary_change(d, n_boot=n_boot, seed=seed, level=level, by_layer=by_layer)
    if primary.get("estimable") and primary.get("control_effect") is not None:
        est_a = {"effect": primary["did"], "ci_low": primary["did_ci_low"], "ci_high": primary["did_ci_high"],
                 "p": primary["p_did"], "n": primary.get("n_targets"), "n_traces": primary.get("n_traces")}
    else:
        est_a = {"n": primary.get("n_targets"), "n_traces": primary.get("n_traces"),
                 "reason": primary.get("reason") or "no control tokens: masking any key raises the primary share "
                 "(renormalisation), so the change cannot be attributed to secondary sinks without controls"}
    kl_units = d.dropna(subset=["kl"]).groupby(["condition", "trace", "position", "is_control"], sort=True).agg(
        kl=("kl", "mean")).reset_index()
    if kl_units["is_control"].any():
        est_b = _rate_test(kl_units, "kl", seed=seed + 1, n_boot=n_boot, level=level)
    else:
        est_b = {"n": int(len(kl_units)), "n_traces": int(kl_units["trace"].nunique()),
                 "reason": "no control tokens: KL cannot be compared with controls"}
    kw = {"alpha": alpha, "min_n": min_n, "min_traces": min_traces}
    components = [
        _component("primary sink score changes in masked layers beyond controls", "target minus control change "
                   "of the primary sink score over masked layers (trace-level paired sign flip, trace bootstrap CI)",
                   est_a, direction="nonzero",
                   margin=margin_primary, **kw),
        _component("target KL > control KL", "target minus control mean KL (trace-level paired sign flip)", est_b,
                   direction="increase", margin=margin_kl, **kw),
    ]
    details = {"primary_change": primary, "target_mean_kl": est_b.get("target_mean"),
               "control_mean_kl": est_b.get("control_mean")}
    return _report("H4: masking attention to secondary sinks changes the primary sink score and predictions",
                   alpha, components, details, notes)


# --------------------------------------------------------------------------------------------
# Family verdicts: one declared hypothesis on one condition family, against its comparison arm
# --------------------------------------------------------------------------------------------

EXACT_TOL = 1e-6
"""Per-trace differences below this (attention mass, layers, nats) are exact zeros: clean and
edited passes may sum the same numbers in another order (prefix reuse), which leaves ~1e-10."""

_FLIP_ENUM_MAX = 16
_FLIP_DRAWS = 20_000


def _flip_matrix(g: int, seed: int) -> np.ndarray:
    """Sign vectors of the sign-flip test: all 2^g when g <= 16, else 20,000 random ones."""
    if g <= _FLIP_ENUM_MAX:
        codes = np.arange(2**g)[:, None] >> np.arange(g)[None, :]
        return np.where(codes & 1, -1.0, 1.0)
    return np.random.default_rng(seed).choice([-1.0, 1.0], size=(_FLIP_DRAWS, g))


def _flip_p(d: np.ndarray, flips: np.ndarray) -> float:
    """Two-sided sign-flip p of mean(d) = 0 (the observed sign vector is among the flips)."""
    obs = abs(d.mean())
    null = np.abs(flips @ d) / len(d)
    return float(np.mean(null >= obs - 1e-12 * max(1.0, obs)))


def trace_sign_flip(d, *, alpha: float = ALPHA, seed: int = 0) -> dict:
    """Mean of per-trace values ``d`` with an exact sign-flip p and its test-inversion CI.

    ``scipy.stats.permutation_test(permutation_type="samples")`` gives the same p (tested);
    it is hand-written here because the CI is the set of shifts mu the same test does not
    reject (inverting it needs the p at many mu with one fixed set of sign vectors), and
    because a zero-variance ``d`` must be reported as degenerate rather than as a CI.

    Returns ``{effect, p, ci_low, ci_high, n_traces, exact_null, degenerate}``; on an exact
    null (every |d| < EXACT_TOL) p and CI are None; on a degenerate d (every trace equal,
    not zero) the p is exact but the CI is None (it would be a point).
    """
    d = np.asarray(d, float)
    d = np.where(np.abs(d) < EXACT_TOL, 0.0, d)
    g = len(d)
    out = {"effect": float(d.mean()) if g else None, "n_traces": g, "p": None, "ci_low": None, "ci_high": None,
           "exact_null": False, "degenerate": False}
    if g == 0:
        return out
    if np.all(d == 0):
        out.update(effect=0.0, exact_null=True)
        return out
    flips = _flip_matrix(g, seed)
    out["p"] = _flip_p(d, flips)
    if np.ptp(d) == 0:
        out["degenerate"] = True
        return out
    est = d.mean()

    def accepted(mu: float) -> bool:
        return _flip_p(d - mu, flips) > alpha

    span = np.ptp(d) + abs(est) + 1.0
    bounds = []
    for far in (est - span, est + span):
        if accepted(far):  # too few traces: the test cannot reject anything, the CI is unbounded
            bounds.append(None)
            continue
        lo, hi = far, est
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if accepted(mid) else (mid, hi)
        bounds.append(float(hi))
    out["ci_low"], out["ci_high"] = bounds
    return out


def judge_traces(est: dict, *, direction: str, alpha: float = ALPHA, margin: float | None = None,
                 n: int | None = None, min_n: int = MIN_N, min_traces: int | None = None) -> dict:
    """:data:`VERDICT_RULE` for a :func:`trace_sign_flip` estimate, with exact nulls and degenerate CIs.

    An exact null (every trace exactly 0) with enough traces is "not supported": the edit
    changed nothing, so the CI is {0}, inside any margin; no p or CI is reported for it. A
    degenerate estimate (every trace the same nonzero value) is judged on its exact p and sign.
    """
    min_traces = min_traces_for(alpha) if min_traces is None else min_traces
    g = est.get("n_traces") or 0
    if n is not None and n < min_n:
        return {"verdict": "inconclusive", "reason": f"n = {n} targets < {min_n}"}
    if g < min_traces:
        return {"verdict": "inconclusive", "reason": f"{g} trace(s) < {min_traces}, the fewest for which the "
                                                     f"sign-flip test can reach p < {alpha}"}
    if est.get("exact_null"):
        return {"verdict": "not supported", "reason": f"exact null: every one of {g} traces changed by exactly 0 "
                                                      f"(|d| < {EXACT_TOL:g}); no p or CI"}
    if est.get("degenerate"):
        sign = DIRECTIONS[direction]
        eff, p = est["effect"], est["p"]
        right = (sign == 0) or (np.sign(eff) == sign)
        if p < alpha and right:
            return {"verdict": "supported", "reason": f"every trace moved by exactly {eff:.3g} (degenerate: no CI); "
                                                      f"exact sign-flip p = {p:.3g}"}
        if p < alpha:
            return {"verdict": "not supported", "reason": f"every trace moved by exactly {eff:.3g}, opposite to "
                                                          "the prediction"}
        return {"verdict": "inconclusive", "reason": f"degenerate estimate {eff:.3g}, p = {p:.3g}"}
    return judge(est.get("p"), est.get("effect"), (est.get("ci_low"), est.get("ci_high")), direction=direction,
                 alpha=alpha, n=None, n_traces=g, min_traces=min_traces, margin=margin)


def family_component(name: str, test: str, target: pd.Series, comparison: pd.Series | None, *, direction: str,
                     alpha: float, margin: float | None, n: int, seed: int = 0) -> dict:
    """One verdict component from per-trace values of the target arm and (optionally) the comparison arm.

    The unit is the trace: ``d_g = target_g - comparison_g`` over traces present in both arms
    (``d_g = target_g`` against the clean run).
    """
    if comparison is not None:
        both = target.index.intersection(comparison.index)
        d = (target.loc[both] - comparison.loc[both]).to_numpy(float)
    else:
        d = target.to_numpy(float)
    est = trace_sign_flip(d, alpha=alpha, seed=seed)
    j = judge_traces(est, direction=direction, alpha=alpha, margin=margin, n=n)
    return to_jsonable({"name": name, "test": test, "direction": direction, "margin": margin, "n": n,
                        "n_traces": est["n_traces"], "effect": est["effect"], "ci": [est["ci_low"], est["ci_high"]],
                        "p": est["p"], "exact_null": est["exact_null"], "degenerate": est["degenerate"],
                        "target_mean": float(target.mean()) if len(target) else None,
                        "comparison_mean": float(comparison.mean()) if comparison is not None and len(comparison)
                        else None, **j})


def family_report(key: str, hypothesis: str, claim: str, alpha: float, components: list[dict], *, conditions: list[str],
                  comparison: str, comparison_conditions: list[str], excluded: list[dict], details: dict,
                  notes: list[str]) -> dict:
    """The verdict record of one (hypothesis, condition family)."""
    main = components[0]
    overall = combine(components) if len(components) > 1 else {"verdict": main["verdict"], "reason": main["reason"]}
    return to_jsonable({
        "key": key, "hypothesis": hypothesis, "claim": claim, "test": " AND ".join(c["test"] for c in components),
        "alpha": alpha, "effect": main["effect"], "ci": main["ci"], "p": main["p"], "n": main["n"],
        "n_traces": main["n_traces"], "verdict": overall["verdict"], "reason": overall["reason"],
        "rule": VERDICT_RULE, "conditions": conditions, "compared_with": comparison,
        "comparison_conditions": comparison_conditions, "excluded": excluded, "components": components,
        "details": details, "notes": notes,
    })
