"""Observational fits of the paper's Sec. 5 claims: MLP-output norm -> sink score, lifetime,
and the dose-response of lifetime to scaled MLP norms.

Each function takes a pandas DataFrame, never raises on too little data (it returns
``estimable: False`` and a ``reason``), seeds every random draw, collects statsmodels
warnings into ``notes`` and returns JSON-ready dicts (see :func:`to_jsonable`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from scipy.optimize import isotonic_regression

from ._common import LEVEL, as_bool, capture_warnings, require_columns, snap_small, trace_codes, warnings_to_notes
from ._isotonic import isotonic_blocks, isotonic_sse
from ._regression import coef_summary, contrast_summary, gaussian_bic, glm_clustered, ols_clustered
from ._segmented import fit_segmented
from .jsonable import to_jsonable

NORM_SCORE_COLUMNS = ["trace", "position", "layer", "mlp_out_norm", "sink_score", "primary_sink_score"]
LIFETIME_COLUMNS = ["trace", "position", "mlp_out_norm", "lifetime", "censored"]

LIFETIME_NOISE_VAR = 1.0 / 12.0
"""Noise floor of every lifetime BIC, per sink (layers^2): lifetimes are whole numbers of layers,
so the data resolve nothing finer than the variance of rounding to an integer, 1/12. Each BIC
uses ``SSE >= n / 12``; without it a step function that fits exact step data has SSE 0 and BIC
minus infinity, and "isotonic beats linear" would hold by construction."""
DOSE_COLUMNS = ["trace", "position", "token", "is_control", "factor", "lifetime", "sink_score"]

MIN_SINKS = 3
"""Fewest distinct sinks (trace, position) for any slope to be reported."""


# --------------------------------------------------------------------------------------------
# 1. norm -> sink-score ratio
# --------------------------------------------------------------------------------------------


NORM_SCORE_WINDOW = 4
LACK_OF_FIT_BOOT = 999
"""Wild cluster bootstrap draws of the log-linear lack-of-fit check (p resolution 1/1000)."""
MIN_LOF_TRACES = 5
"""Fewest traces for the lack-of-fit bootstrap: its draws flip whole traces' residuals, so with fewer
traces there are too few distinct draws (Webb weights give 6^G) for a p-value to mean much."""
WEBB_BELOW = 12
"""Below this many traces the bootstrap uses Webb's six-point weights instead of Rademacher signs
(Rademacher has only 2^G distinct draws; MacKinnon & Webb 2017 recommend Webb for few clusters)."""
"""Attention layers after l_start in the norm -> score fit: l_start + 1 .. l_start + NORM_SCORE_WINDOW."""


@warnings_to_notes
def fit_norm_score(
    df: pd.DataFrame, *, by_layer: bool = True, layer_effects: bool = True, mixed: bool = True,
    level: float = LEVEL, window: int | None = NORM_SCORE_WINDOW, lack_of_fit: bool = True,
    n_boot: int = LACK_OF_FIT_BOOT, seed: int = 0,
) -> dict:
    """Log-linear fit of the secondary/primary sink-score ratio on the l_start MLP-output norm.

    ``slope`` is the change in log(sink_score / primary_sink_score) per unit change in
    log(mlp_out_norm), i.e. the elasticity of the sink-score ratio with respect to the norm,
    estimated by OLS with layer fixed effects and CR2 trace-cluster standard errors with
    Bell-McCaffrey degrees of freedom (honest at 8 traces; see ``_regression``).

    Design: every sink contributes the same ``window`` attention layers after its l_start,
    ``l_start + 1 .. l_start + window``, dead or alive (rows with ``alive`` False are layers
    after the sink stopped being aligned: the ratio is small there, and leaving them out would
    keep only long-lived, high-norm sinks at late layers, a survivor selection that biases the
    slope). ``layer`` is the *attention* layer that reads the sink's key: a state aligned at
    layer l (output of layer l) is a key of the attention in layer l + 1, the convention of
    ``sink_layers.parquet`` and of :attr:`Sink.peak_sink_score`. Input without ``alive`` (only
    the layers a sink lived) is fitted as given within the window, with a note on the
    selection; ``window=None`` uses every row.

    ``mixed`` repeats the slope with a random intercept per trace as a check (a fit that did
    not converge is ``degenerate``: no CI or p); ``per_layer`` gives the slope within each
    layer, and ``steepest_layer`` the layer where it is largest, a description (the argmax
    of noisy slopes), with no CI and no test.

    ``lack_of_fit`` tests the log-linear form itself against a monotone (isotonic) fit of the
    same rows, with a wild cluster bootstrap over traces (see :func:`log_linear_lack_of_fit`).

    Args:
        df: one row per secondary sink x attention layer, columns ``trace, position, layer,
            mlp_out_norm, sink_score, primary_sink_score`` and, for the window, ``l_start``
            (optional ``alive``).
        by_layer: also fit each layer separately.
        layer_effects: include one intercept per layer in the pooled fit (compares sinks
            within a layer, so depth differences in the ratio do not masquerade as a norm effect).
        mixed: run the MixedLM check (needs >= 3 traces).
        level: confidence level.
        window: attention layers after l_start per sink; None for all rows.
        lack_of_fit: run the log-linear vs isotonic lack-of-fit check.
        n_boot: bootstrap draws of the lack-of-fit check.
        seed: seed of the lack-of-fit bootstrap.

    Returns:
        Dict with ``estimable, reason, slope, se, df, ci_low, ci_high, p, degenerate,
        degenerate_reason, r2, r2_within, n_rows, n_sinks, n_traces, n_dead_rows, window,
        se_type, model, mixed, per_layer, steepest_layer, steepest_slope, steepest_note,
        lack_of_fit, notes``.
    """
    require_columns(df, NORM_SCORE_COLUMNS, what="fit_norm_score")
    notes: list[str] = []
    df, window_info = _window_rows(df, window, notes)
    d = _log_ratio_rows(df, notes)
    base = {"n_rows": int(len(d)), "n_sinks": _n_units(d), "n_traces": int(d["trace"].nunique()),
            **window_info, "notes": notes}
    reason = _norm_too_little(d)
    if reason:
        lof = {"run": False, "estimable": False, "reason": reason, "verdict": f"not estimable: {reason}",
               "statistic": None, "p": None} if lack_of_fit else {"run": False, "note": "not requested"}
        return to_jsonable({**base, "estimable": False, "reason": reason, "lack_of_fit": lof})
    fe = layer_effects and d["layer"].nunique() > 1
    X = _design(d, fe)
    groups, _ = trace_codes(d["trace"])
    res, se_type = ols_clustered(d["y"].to_numpy(), X, groups, notes)
    out = {**base, "estimable": True, "reason": None, **_slope_fields(res, level), "se_type": se_type}
    out["r2"] = float(res.rsquared)
    out["r2_within"] = _within_r2(d, res) if fe else float(res.rsquared)
    out["model"] = "log_ratio ~ log_norm" + (" + C(layer)" if fe else "")
    out["layer_intercepts"] = _layer_intercepts(d, res, fe)
    out["mixed"] = _mixed_check(d, X, groups, level) if mixed else {"run": False, "note": "not requested"}
    if by_layer:
        out["per_layer"] = _per_layer_slopes(d, level, notes)
        out.update(_steepest(out["per_layer"]))
    out["lack_of_fit"] = log_linear_lack_of_fit(d, X, groups, n_boot=n_boot, seed=seed, alpha=1.0 - level) \
        if lack_of_fit else {"run": False, "note": "not requested"}
    return to_jsonable(out)


def _layer_intercepts(d: pd.DataFrame, res, fe: bool) -> list[dict]:
    """The fitted model's intercept in each layer: log ratio = intercept[layer] + slope * log norm.

    With layer effects the first layer (sorted) is the baseline and each other layer adds its
    dummy's coefficient (``pd.get_dummies`` orders categories, as in :func:`_design`).
    """
    params = np.asarray(res.params, dtype=float)
    layers = sorted(d["layer"].unique().tolist())
    if not fe:
        return [{"layer": layer, "intercept": float(params[0])} for layer in layers]
    return [{"layer": layer, "intercept": float(params[0] + (params[1 + i] if i else 0.0))}
            for i, layer in enumerate(layers)]


def norm_score_rows(df: pd.DataFrame, *, window: int | None = NORM_SCORE_WINDOW) -> pd.DataFrame:
    """The rows :func:`fit_norm_score` fits, with ``x`` = log norm and ``y`` = log ratio (for drawing the fit).

    Same window and the same drops as the fit; ``alive`` is kept when the input has it.
    """
    notes: list[str] = []
    d, _ = _window_rows(df, window, notes)
    keep = d[NORM_SCORE_COLUMNS + [c for c in ("alive", "l_start") if c in d.columns]]
    rows = _log_ratio_rows(keep, notes)
    extra = keep.dropna(subset=NORM_SCORE_COLUMNS)
    ok = (extra["mlp_out_norm"] > 0) & (extra["sink_score"] > 0) & (extra["primary_sink_score"] > 0)
    extra = extra[ok].reset_index(drop=True)
    for c in ("alive", "l_start"):
        if c in extra.columns:
            rows[c] = as_bool(extra[c]).to_numpy() if c == "alive" else extra[c].to_numpy()
    return rows


def _window_rows(df: pd.DataFrame, window: int | None, notes: list[str]) -> tuple[pd.DataFrame, dict]:
    """Rows of the fixed window ``l_start + 1 .. l_start + window`` and a description of the design."""
    has_alive = "alive" in df.columns
    info = {"window": window, "n_dead_rows": int((~as_bool(df["alive"])).sum()) if has_alive else None}
    if window is None:
        if not has_alive:
            notes.append("rows only for layers where each sink is alive: late layers keep only long-lived sinks "
                         "(survivor selection)")
        return df, info
    if "l_start" not in df.columns:
        notes.append("no l_start column: the fixed window cannot be applied; every row is used (only layers where "
                     "each sink is alive, a survivor selection)")
        info["window"] = None
        return df, info
    offset = df["layer"].astype(float) - df["l_start"].astype(float)
    d = df[(offset >= 1) & (offset <= window)]
    if has_alive:
        info["n_dead_rows"] = int((~as_bool(d["alive"])).sum())
    else:
        notes.append(f"rows only while each sink is alive: sinks that died within the {window}-layer window lack "
                     "their later layers (survivor selection); runs that write `alive` rows avoid this")
    return d, info
def _log_ratio_rows(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Rows with positive norm and scores, plus ``x = log norm`` and ``y = log ratio``."""
    d = df[NORM_SCORE_COLUMNS].dropna()
    ok = (d["mlp_out_norm"] > 0) & (d["sink_score"] > 0) & (d["primary_sink_score"] > 0)
    if (~ok).any():
        notes.append(f"dropped {int((~ok).sum())} row(s) with non-positive norm or score (log undefined)")
    if len(d) < len(df):
        notes.append(f"dropped {len(df) - len(d)} row(s) with missing values")
    d = d[ok].copy()
    d["x"] = np.log(d["mlp_out_norm"].astype(float))
    d["y"] = np.log(d["sink_score"].astype(float) / d["primary_sink_score"].astype(float))
    return d.reset_index(drop=True)


def _n_units(d: pd.DataFrame) -> int:
    return int(len(d[["trace", "position"]].drop_duplicates())) if len(d) else 0


def _norm_too_little(d: pd.DataFrame) -> str | None:
    n_sinks = _n_units(d)
    if n_sinks < MIN_SINKS:
        return f"{n_sinks} secondary sink(s); need >= {MIN_SINKS}"
    if d["x"].nunique() < 2:
        return "a single distinct mlp_out_norm; the slope is not identified"
    return None


def _design(d: pd.DataFrame, layer_effects: bool) -> np.ndarray:
    """Columns: constant, log-norm, then one dummy per layer after the first (if requested)."""
    cols = [np.ones(len(d)), d["x"].to_numpy()]
    if layer_effects:
        dummies = pd.get_dummies(d["layer"], drop_first=True, dtype=float)
        cols.extend(dummies[c].to_numpy() for c in dummies.columns)
    return np.column_stack(cols)


def _slope_fields(res, level: float) -> dict:
    s = coef_summary(res, 1, level=level)
    return {"slope": s["estimate"], "se": s["se"], "df": s["df"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
            "p": s["p"], "degenerate": s["degenerate"], "degenerate_reason": s["degenerate_reason"],
            "intercept": float(np.asarray(res.params)[0])}


def _within_r2(d: pd.DataFrame, res) -> float:
    """Share of the within-layer variance of the log ratio explained by the log norm."""
    within = d["y"] - d.groupby("layer")["y"].transform("mean")
    sst = float(np.sum(within**2))
    return float(1.0 - res.ssr / sst) if sst > 0 else float("nan")


def _mixed_check(d: pd.DataFrame, X: np.ndarray, groups: np.ndarray, level: float) -> dict:
    """Slope from a linear mixed model with a random intercept per trace.

    A fit that fails or does not converge is ``degenerate``: its slope is shown, with no CI or p.
    """
    n_traces = len(np.unique(groups))
    if n_traces < 3:
        return {"run": False, "note": f"{n_traces} trace(s); the mixed model needs >= 3"}
    notes: list[str] = []
    try:
        with capture_warnings(notes):
            res = sm.MixedLM(d["y"].to_numpy(), X, groups=groups).fit(reml=True)
            est = float(np.asarray(res.params)[1])
            se = float(np.asarray(res.bse)[1])
    except (np.linalg.LinAlgError, ValueError, IndexError) as exc:
        return {"run": True, "converged": False, "degenerate": True, "slope": None, "ci_low": None, "ci_high": None,
                "p": None, "degenerate_reason": f"{type(exc).__name__}: {exc}", "notes": notes}
    converged = bool(getattr(res, "converged", True)) and not any("converge" in n.lower() for n in notes)
    out = {"run": True, "converged": converged, "slope": est,
           "trace_variance": float(np.asarray(res.cov_re).ravel()[0]), "notes": notes}
    if not converged or not np.isfinite(se) or se <= 0:
        why = "the mixed model did not converge" if not converged else "non-finite or zero standard error"
        return {**out, "degenerate": True, "degenerate_reason": why, "se": None, "ci_low": None, "ci_high": None,
                "p": None}
    q = stats.norm.ppf(0.5 + level / 2)
    return {**out, "degenerate": False, "degenerate_reason": None, "se": se, "ci_low": est - q * se,
            "ci_high": est + q * se, "p": float(2 * stats.norm.sf(abs(est / se)))}


def _per_layer_slopes(d: pd.DataFrame, level: float, notes: list[str]) -> list[dict]:
    """Slope of the log ratio on log norm within each layer (no pooling across layers)."""
    rows = []
    for layer, g in d.groupby("layer", sort=True):
        row = {"layer": layer, "n_sinks": _n_units(g), "n_traces": int(g["trace"].nunique())}
        reason = _norm_too_little(g)
        if reason:
            rows.append({**row, "estimable": False, "reason": reason})
            continue
        groups, _ = trace_codes(g["trace"])
        res, se_type = ols_clustered(g["y"].to_numpy(), _design(g, False), groups, notes)
        rows.append({**row, "estimable": True, **_slope_fields(res, level), "r2": float(res.rsquared),
                     "se_type": se_type})
    return rows


def _steepest(per_layer: list[dict]) -> dict:
    fitted = [r for r in per_layer if r.get("estimable") and np.isfinite(r["slope"])]
    if not fitted:
        return {"steepest_layer": None, "steepest_slope": None, "steepest_note": STEEPEST_NOTE}
    best = max(fitted, key=lambda r: r["slope"])
    return {"steepest_layer": best["layer"], "steepest_slope": best["slope"], "steepest_note": STEEPEST_NOTE}


STEEPEST_NOTE = ("descriptive: the layer with the largest per-layer slope estimate; the argmax of noisy "
                 "estimates is biased upwards and carries no CI or test")


LOF_NOT_REJECTED = "log-linear not rejected"
LOF_REJECTED = "log-linear rejected (monotone non-linear fits better)"
_WEBB = np.array([-np.sqrt(1.5), -1.0, -np.sqrt(0.5), np.sqrt(0.5), 1.0, np.sqrt(1.5)])


def log_linear_lack_of_fit(d: pd.DataFrame, X: np.ndarray, groups: np.ndarray, *, n_boot: int = LACK_OF_FIT_BOOT,
                           seed: int = 0, alpha: float = 1.0 - LEVEL) -> dict:
    """Does a monotone fit of the log score ratio on log norm beat the log-linear one? (paper Sec. 5, Fig. 7 mid)

    Statistic: ``(SSE_linear - SSE_isotonic) / SSE_linear``, the share of the log-linear fit's
    residual sum of squares that the best monotone step function of log norm removes, on the
    same rows and design. Null distribution: a wild cluster bootstrap under the fitted log-linear
    model, ``y* = X b + w_g e`` with one weight ``w_g`` per trace (Rademacher signs, or Webb's
    six-point weights below ``WEBB_BELOW`` traces), so the rows of one trace (its sinks and their
    window layers) keep their joint residual pattern: the trace is the unit. Each draw refits
    both models and recomputes the statistic; ``p = (1 + #{stat* >= stat}) / (1 + B)``, seeded.

    Layer effects: the isotonic fit is made on the linear fit's *partial residuals*
    ``y - (layer effects) = intercept + slope * x + e``, i.e. the layer intercepts are held at
    their log-linear values and only the shape of the norm effect is free. Why this and not a
    joint (backfitted) layer + isotonic fit: the fitted line is then itself one admissible
    monotone function, so the alternative nests the null exactly and the statistic lies in
    [0, 1) and measures the shape of the norm effect only; backfitting would be iterative inside
    every bootstrap draw (cost x B, and the check runs in every run's stats step). Both models
    are recomputed the same way in every draw, so the test stays calibrated; only power could
    differ slightly. The monotone direction follows the sign of the fitted slope (a
    non-decreasing fit does not nest a falling line, and would then test the sign, not the shape).

    What a rejection means: the pooled model (one slope, one intercept per layer) misses a
    shape that one monotone function of log norm shared by all layers captures. A slope that
    differs between layers (see ``per_layer``) or rows after a sink died inside the window can
    produce such a shape too, so a rejection says "not log-linear in this pooled design", not
    which of these causes it.

    Args:
        d: the fitted rows, with ``x`` (log norm) and ``y`` (log ratio), as :func:`fit_norm_score` builds them.
        X: the log-linear design (constant, x, layer dummies), as :func:`_design` builds it.
        groups: trace codes of the rows.
        n_boot: bootstrap draws.
        seed: seed of the bootstrap weights.
        alpha: level at which the log-linear form is rejected.

    Returns:
        ``{run, estimable, reason, verdict, statistic, p, B, n_rows, n_traces, n_distinct_norms,
        isotonic_blocks, direction, weights, sse_linear, sse_isotonic, alpha, method}``; when not
        estimable, ``statistic`` and ``p`` are None and ``verdict`` is ``"not estimable: <why>"``.
    """
    x, y = d["x"].to_numpy(float), d["y"].to_numpy(float)
    groups = np.asarray(groups)
    n_traces = int(len(np.unique(groups)))
    ux, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    out = {"run": True, "n_rows": int(y.size), "n_traces": n_traces, "n_distinct_norms": int(ux.size),
           "B": int(n_boot), "alpha": round(float(alpha), 12), "statistic": None, "p": None, "isotonic_blocks": None,
           "method": ("(SSE_linear - SSE_isotonic) / SSE_linear, isotonic on the linear fit's partial residuals "
                      "(layer effects held), wild cluster bootstrap under the log-linear fit, one weight per trace")}
    why = None
    if n_traces < MIN_LOF_TRACES:
        why = f"{n_traces} trace(s); the trace bootstrap needs >= {MIN_LOF_TRACES}"
    elif ux.size < 3:
        why = f"{ux.size} distinct mlp_out_norm value(s); a monotone fit differs from a line only with >= 3"
    elif n_boot < 19:
        why = f"B = {n_boot} bootstrap draws; need >= 19 for a p-value below 0.05"
    if why is None:
        pinv = np.linalg.pinv(X)
        fitted = X @ (pinv @ y)
        resid = y - fitted
        scale = max(float(np.sqrt(np.mean(y**2))), np.finfo(float).tiny)
        if float(np.sqrt(np.mean(resid**2))) <= 1e-9 * scale:
            why = "the log-linear fit has zero residuals (zero variance): no p-value on a degenerate estimate"
    if why is not None:
        return {**out, "estimable": False, "reason": why, "verdict": f"not estimable: {why}", "direction": None,
                "weights": None, "sse_linear": None, "sse_isotonic": None}
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    lof = _LackOfFit(X, pinv, order, starts, inverse, counts.astype(float))
    stat, sse_lin, sse_iso, blocks, increasing = lof.statistics(y[:, None], with_blocks=True)
    weights = "webb" if n_traces < WEBB_BELOW else "rademacher"
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, n_boot, 256):
        size = min(256, n_boot - start)
        w = rng.choice(_WEBB, size=(n_traces, size)) if weights == "webb" else \
            rng.choice(np.array([-1.0, 1.0]), size=(n_traces, size))
        draws.append(lof.statistics(fitted[:, None] + resid[:, None] * w[groups])[0])
    boot = np.concatenate(draws)
    hits = int(np.sum(boot >= stat[0] - 1e-12 * max(1.0, abs(stat[0]))))
    p = (1 + hits) / (1 + n_boot)
    return {**out, "estimable": True, "reason": None, "statistic": float(stat[0]), "p": float(p),
            "verdict": LOF_REJECTED if p < alpha else LOF_NOT_REJECTED, "isotonic_blocks": int(blocks),
            "direction": "non-decreasing" if increasing[0] else "non-increasing", "weights": weights,
            "sse_linear": float(sse_lin[0]), "sse_isotonic": float(sse_iso[0])}


def log_linear_check(norm_score: dict) -> dict | None:
    """The lack-of-fit result of a :func:`fit_norm_score` result in short, for a verdict record; None without a fit.

    It describes the clean run's norm -> score relation (is it log-linear?) beside H2's
    lifetime verdict and never enters that verdict.
    """
    lof = (norm_score or {}).get("lack_of_fit") or {}
    if not (norm_score or {}).get("estimable") or not lof.get("run"):
        return None
    keys = ("verdict", "statistic", "p", "B", "n_rows", "n_traces", "isotonic_blocks", "direction", "weights")
    return {**{k: lof.get(k) for k in keys}, "source": "stats.json norm_score.lack_of_fit",
            "note": "is the clean run's norm -> sink-score ratio relation log-linear (isotonic lack-of-fit test)? "
                    "Context for H2; it does not enter this verdict"}


class _LackOfFit:
    """The lack-of-fit statistic for many response columns at once on one fixed design."""

    def __init__(self, X, pinv, order, starts, inverse, counts):
        self.X, self.pinv, self.order, self.starts = X, pinv, order, starts
        self.inverse, self.counts = inverse, counts
        self.layer_cols = np.arange(2, X.shape[1])

    def statistics(self, Y: np.ndarray, with_blocks: bool = False):
        """Per column of ``Y``: (statistic, SSE_linear, SSE_isotonic, blocks of the first column, increasing)."""
        beta = self.pinv @ Y
        sse_lin = np.sum((Y - self.X @ beta) ** 2, axis=0)
        partial = Y - self.X[:, self.layer_cols] @ beta[self.layer_cols] if self.layer_cols.size else Y
        # rows tied in log norm (one sink's window layers) share a fitted value: fit the tie means, weighted
        means = np.add.reduceat(partial[self.order], self.starts, axis=0) / self.counts[:, None]
        increasing = beta[1] >= 0
        fits = np.empty_like(means)
        blocks = None
        for j in range(Y.shape[1]):
            fit = isotonic_regression(means[:, j], weights=self.counts, increasing=bool(increasing[j]))
            fits[:, j] = fit.x
            if with_blocks and j == 0:
                levels = fit.x
                blocks = 1 + int(np.sum(np.abs(np.diff(levels)) > 1e-12 * max(1.0, float(np.max(np.abs(levels))))))
        sse_iso = np.sum((partial - fits[self.inverse]) ** 2, axis=0)
        return (sse_lin - sse_iso) / sse_lin, sse_lin, sse_iso, blocks, increasing


# --------------------------------------------------------------------------------------------
# 2. norm -> lifetime
# --------------------------------------------------------------------------------------------


@warnings_to_notes
def fit_norm_lifetime(
    df: pd.DataFrame, *, n_perm: int = 9999, seed: int = 0, min_plateau_n: int = 3,
    max_breakpoints: int = 2, min_segment_n: int = 3, level: float = LEVEL,
) -> dict:
    """Monotone and piecewise fits of sink lifetime (layers) on the log l_start MLP-output norm.

    ``spearman`` is the rank correlation of lifetime with norm (does a larger norm mean a
    longer life?) with a seeded permutation p-value. ``isotonic`` is the best non-decreasing
    step function of log-norm; its constant blocks are the plateaus (sink levels).
    ``segmented`` fits straight-line pieces with 0, 1 or 2 breakpoints, chosen by BIC, and
    ``comparison`` puts the linear, segmented and isotonic fits on one BIC scale, each with the
    noise floor :data:`LIFETIME_NOISE_VAR` on its residual variance.
    ``poisson`` is the change in log expected lifetime per unit log-norm (a count model check).

    Args:
        df: one row per secondary sink, columns ``trace, position, mlp_out_norm, lifetime,
            censored`` (``censored``: the sink was still alive at the last layer).
        n_perm: permutations for the Spearman p-value.
        seed: seed of the permutation generator.
        min_plateau_n: fewest sinks in an isotonic block for it to count as a plateau.
        max_breakpoints: most breakpoints tried by the segmented fit.
        min_segment_n: fewest sinks per segment.
        level: confidence level.

    Returns:
        Dict with ``estimable, reason, n_sinks, n_traces, n_censored, n_distinct_lifetimes,
        spearman, linear, plateaus_estimable, plateaus_reason, isotonic, segmented,
        comparison, poisson, notes``.
    """
    require_columns(df, LIFETIME_COLUMNS, what="fit_norm_lifetime")
    notes: list[str] = []
    d = _lifetime_rows(df, notes)
    out = {"n_sinks": int(len(d)), "n_traces": int(d["trace"].nunique()), "n_censored": int(d["censored"].sum()),
           "n_distinct_lifetimes": int(d["lifetime"].nunique()), "notes": notes}
    reason = _lifetime_too_little(d)
    if reason:
        return to_jsonable({**out, "estimable": False, "reason": reason, "plateaus_estimable": False,
                            "plateaus_reason": reason})
    x, y = d["x"].to_numpy(), d["lifetime"].to_numpy(float)
    groups, _ = trace_codes(d["trace"])
    out.update(estimable=True, reason=None)
    out["spearman"] = spearman_permutation(x, y, n_perm=n_perm, rng=np.random.default_rng(seed))
    out["linear"] = _linear_lifetime(x, y, groups, level, notes)
    out.update(_plateau_fits(x, y, min_plateau_n, max_breakpoints, min_segment_n))
    out["comparison"] = _bic_table(out)
    out["poisson"] = _poisson_lifetime(d, groups, level, notes)
    if out["n_censored"]:
        notes.append(
            f"{out['n_censored']} of {len(d)} lifetimes are right-censored (alive at the last layer): they "
            "are lower bounds, so fits that include them understate growth at high norm; "
            "poisson.uncensored_only gives the slope without them"
        )
    return to_jsonable(out)


def _lifetime_rows(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    d = df[LIFETIME_COLUMNS].dropna(subset=["mlp_out_norm", "lifetime"]).copy()
    d["censored"] = as_bool(d["censored"].fillna(False))
    bad = d["mlp_out_norm"] <= 0
    if bad.any():
        notes.append(f"dropped {int(bad.sum())} row(s) with non-positive mlp_out_norm")
    d = d[~bad]
    dup = d.duplicated(["trace", "position"])
    if dup.any():
        notes.append(f"{int(dup.sum())} duplicate (trace, position) row(s) dropped; one row per sink expected")
        d = d[~dup]
    d["x"] = np.log(d["mlp_out_norm"].astype(float))
    return d.reset_index(drop=True)


def _lifetime_too_little(d: pd.DataFrame) -> str | None:
    if len(d) < MIN_SINKS:
        return f"{len(d)} sink(s); need >= {MIN_SINKS}"
    if d["x"].nunique() < 2:
        return "a single distinct mlp_out_norm; nothing to relate lifetime to"
    if d["lifetime"].nunique() < 2:
        return (f"every sink has the same lifetime ({d['lifetime'].iloc[0]:g} layers); "
                "there is no lifetime variation for the norm to explain")
    return None


def spearman_permutation(x: np.ndarray, y: np.ndarray, *, n_perm: int, rng: np.random.Generator) -> dict:
    """Spearman's rho with a two-sided permutation p-value (y permuted against x).

    Permuting treats sinks as exchangeable; sinks from one trace are not independent, so
    read the p-value as descriptive when few traces contribute many sinks.
    """
    if np.ptp(y) == 0 or np.ptp(x) == 0:
        return {"rho": None, "p_perm": None, "p_asymptotic": None, "n_perm": n_perm,
                "note": "constant lifetime or norm: rank correlation undefined"}
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    zx, zy = (rx - rx.mean()) / rx.std(), (ry - ry.mean()) / ry.std()
    rho = float(np.mean(zx * zy))
    hits, done = 0, 0
    while done < n_perm:
        size = min(2000, n_perm - done)
        idx = rng.permuted(np.tile(np.arange(zy.size), (size, 1)), axis=1)
        null = zy[idx] @ zx / zy.size
        hits += int(np.sum(np.abs(null) >= abs(rho) - 1e-12))
        done += size
    p_asym = float(stats.spearmanr(x, y).pvalue)
    return {"rho": rho, "p_perm": (1 + hits) / (n_perm + 1), "p_asymptotic": p_asym, "n_perm": n_perm}


def _linear_lifetime(x: np.ndarray, y: np.ndarray, groups: np.ndarray, level: float, notes: list[str]) -> dict:
    """Straight-line lifetime ~ log-norm with trace-clustered CI and its Gaussian BIC."""
    res, se_type = ols_clustered(y, sm.add_constant(x, has_constant="add"), groups, notes)
    s = coef_summary(res, 1, level=level)
    sst = float(np.sum((y - y.mean()) ** 2))
    return {"slope": s["estimate"], "se": s["se"], "df": s["df"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
            "p": s["p"], "degenerate": s["degenerate"], "degenerate_reason": s["degenerate_reason"],
            "intercept": float(res.params[0]), "r2": float(1.0 - res.ssr / sst), "se_type": se_type,
            "bic": gaussian_bic(float(res.ssr), y.size, 3, sst, floor=y.size * LIFETIME_NOISE_VAR)}


def _plateau_fits(x: np.ndarray, y: np.ndarray, min_plateau_n: int, max_bp: int, min_seg: int) -> dict:
    """Isotonic plateaus and segmented fit, or a plain statement that plateaus are not estimable."""
    n_levels = len(np.unique(y))
    if n_levels < 3:
        reason = (f"lifetimes take {n_levels} distinct value(s); plateaus need >= 3 "
                  "(two values are one step, not plateaus separated by regimes)")
        return {"plateaus_estimable": False, "plateaus_reason": reason, "isotonic": None, "segmented": None}
    blocks = isotonic_blocks(x, y)
    plateaus = [b for b in blocks if b["n"] >= min_plateau_n]
    boundaries = [(a["x_high"] + b["x_low"]) / 2 for a, b in zip(blocks[:-1], blocks[1:])]
    sst = float(np.sum((y - y.mean()) ** 2))
    iso = {"blocks": blocks, "plateaus": plateaus, "boundaries_log_norm": boundaries,
           "levels": [b["level"] for b in blocks], "min_plateau_n": min_plateau_n,
           "bic": gaussian_bic(isotonic_sse(x, y, blocks), y.size, len(blocks) + 1, sst,
                               floor=y.size * LIFETIME_NOISE_VAR),
           "bic_note": "isotonic df = number of blocks (Meyer & Woodroofe 2000) + 1 for the variance"}
    seg = fit_segmented(x, y, max_breakpoints=max_bp, min_segment_n=min_seg, sse_floor=y.size * LIFETIME_NOISE_VAR)
    return {"plateaus_estimable": True, "plateaus_reason": None, "isotonic": iso, "segmented": seg}


def _bic_table(out: dict) -> dict:
    """BIC of every fitted shape and the lowest-BIC one (lower is better; >10 apart is decisive)."""
    bics = {"linear": out["linear"]["bic"]}
    if out.get("segmented"):
        for f in out["segmented"]["fits"]:
            if f["n_breakpoints"] > 0:
                bics[f"segmented_{f['n_breakpoints']}"] = f["bic"]
    if out.get("isotonic"):
        bics["isotonic"] = out["isotonic"]["bic"]
    finite = {k: v for k, v in bics.items() if np.isfinite(v)}
    return {"bic": bics, "best": min(finite, key=finite.get) if finite else None,
            "noise_floor_var": LIFETIME_NOISE_VAR,
            "note": "Gaussian BIC with residual variance floored at 1/12 layer^2 (integer lifetimes); lower is better"}


def _poisson_lifetime(d: pd.DataFrame, groups: np.ndarray, level: float, notes: list[str]) -> dict:
    """Poisson GLM of lifetime on log-norm (clustered CI), plus the same without censored sinks."""
    out = _poisson_fit(d["x"].to_numpy(), d["lifetime"].to_numpy(float), groups, level, notes)
    keep = ~d["censored"].to_numpy()
    if (~keep).any():
        sub = d[keep]
        if len(sub) >= MIN_SINKS and sub["x"].nunique() >= 2:
            g, _ = trace_codes(sub["trace"])
            out["uncensored_only"] = _poisson_fit(sub["x"].to_numpy(), sub["lifetime"].to_numpy(float), g, level, notes)
        else:
            out["uncensored_only"] = {"estimable": False, "reason": "too few uncensored sinks"}
    return out


def _poisson_fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray, level: float, notes: list[str]) -> dict:
    try:
        res, se_type = glm_clustered(y, sm.add_constant(x, has_constant="add"), groups, sm.families.Poisson(), notes)
        s = coef_summary(res, 1, level=level)
    except (np.linalg.LinAlgError, ValueError) as exc:
        return {"estimable": False, "reason": f"{type(exc).__name__}: {exc}"}
    dispersion = float(res.pearson_chi2 / res.df_resid) if res.df_resid > 0 else float("nan")
    return {"estimable": True, "slope": s["estimate"], "se": s["se"], "df": s["df"], "ci_low": s["ci_low"],
            "ci_high": s["ci_high"], "p": s["p"], "degenerate": s["degenerate"],
            "degenerate_reason": s["degenerate_reason"], "rate_ratio_per_log_norm": float(np.exp(s["estimate"])),
            "dispersion": dispersion, "se_type": se_type, "n": int(y.size)}


# --------------------------------------------------------------------------------------------
# 3. dose-response of scaled MLP norms
# --------------------------------------------------------------------------------------------


@warnings_to_notes
def dose_response(
    df: pd.DataFrame, *, measures: tuple[str, ...] = ("lifetime", "sink_score"), n_perm: int = 9999,
    seed: int = 0, level: float = LEVEL,
) -> dict:
    """Within-target dose-response of sink lifetime and score to the MLP-output scale factor.

    ``slope`` is the average change of the measure per unit log(factor) within one token
    (each target is compared only with itself across factors; the CI is robust to traces).
    ``difference`` is the target slope minus the control slope. ``trend`` is Page's L test
    for an increasing ordering across factors within each token, with a seeded permutation
    p-value (rows permuted within token), and ``mean_spearman`` the average per-token rank
    correlation with the factor.

    Args:
        df: rows of scale conditions, columns ``trace, position, token, is_control, factor,
            lifetime, sink_score`` (lifetime 0 = not a sink). Add factor-1 rows (the clean run)
            to anchor the slope at the unscaled norm.
        measures: columns to analyse.
        n_perm: permutations for Page's test.
        seed: seed for the permutations.
        level: confidence level.

    Returns:
        ``{estimable, reason, factors, n_targets, n_controls, n_traces, targets: {measure: {...}},
        controls: {...}, difference: {...}, notes}``.
    """
    require_columns(df, DOSE_COLUMNS, what="dose_response")
    notes: list[str] = []
    d = _dose_rows(df, measures, notes)
    factors = sorted(d["factor"].unique().tolist())
    n_t = int(d.loc[~d["is_control"], "unit"].nunique())
    n_c = int(d.loc[d["is_control"], "unit"].nunique())
    out = {"factors": factors, "n_targets": n_t, "n_controls": n_c, "n_traces": int(d["trace"].nunique()),
           "notes": notes, "targets": {}, "controls": {}, "difference": {}}
    if len(factors) < 2 or n_t + n_c < 2:
        reason = "need >= 2 distinct factors and >= 2 tokens"
        return to_jsonable({**out, "estimable": False, "reason": reason})
    out.update(estimable=True, reason=None)
    rng = np.random.default_rng(seed)
    for m in measures:
        slopes = _within_slopes(d, m, level, notes)
        for group, is_control in (("targets", False), ("controls", True)):
            sub = d[d["is_control"] == is_control]
            if len(sub) == 0:
                out[group][m] = {"estimable": False, "reason": "no rows"}
                continue
            out[group][m] = {**slopes.get(group, {"estimable": False, "reason": "no within-token variation"}),
                             "trend": page_trend(sub, m, n_perm=n_perm, rng=rng)}
        out["difference"][m] = slopes.get("difference", {"estimable": False, "reason": "needs targets and controls"})
    return to_jsonable(out)


def _dose_rows(df: pd.DataFrame, measures: tuple[str, ...], notes: list[str]) -> pd.DataFrame:
    d = df.copy()
    d["is_control"] = as_bool(d["is_control"])
    bad = ~(d["factor"] > 0)
    if bad.any():
        notes.append(f"dropped {int(bad.sum())} row(s) with factor <= 0 or missing (log undefined)")
        d = d[~bad]
    d["unit"] = d["trace"].astype(str) + "\x1f" + d["position"].astype(str)
    agg = {m: (m, "mean") for m in measures}
    n_before = len(d)
    d = d.groupby(["trace", "position", "unit", "is_control", "factor"], sort=True).agg(**agg).reset_index()
    if len(d) < n_before:
        notes.append("several rows per (token, factor) were averaged")
    d["x"] = np.log(d["factor"].astype(float))
    return d


def _within_slopes(d: pd.DataFrame, measure: str, level: float, notes: list[str]) -> dict:
    """Fixed-effects (within-token) slopes for targets and controls in one CR2-clustered model.

    The token intercepts are explicit dummies (not demeaned away) so that the CR2 leverage
    adjustment sees them. A group whose measure does not change within any token (every
    within-token deviation within ``SNAP_RTOL`` of the measure's scale) has slope exactly
    0: ``exact_zero``, no CI and no p.
    """
    sub = d.dropna(subset=[measure]).copy()
    sub["xd"] = sub["x"] - sub.groupby("unit")["x"].transform("mean")
    sub = sub[sub.groupby("unit")["xd"].transform(lambda s: np.ptp(s.to_numpy()) > 0)]
    y = sub[measure].to_numpy(float)
    yd = y - sub.groupby("unit")[measure].transform("mean").to_numpy(float)
    yd = snap_small(yd, y, y)
    present = [g for g, c in (("targets", False), ("controls", True)) if (sub["is_control"] == c).any()]
    if not present:
        return {}
    is_ctrl = sub["is_control"].to_numpy(bool)
    cols = [np.where(is_ctrl == (g == "controls"), sub["xd"], 0.0) for g in present]
    dummies = pd.get_dummies(sub["unit"], dtype=float).to_numpy()
    groups, _ = trace_codes(sub["trace"])
    res, se_type = ols_clustered(y, np.column_stack([*cols, dummies]), groups, notes)
    out = {}
    zero = {}
    for i, g in enumerate(present):
        mask = is_ctrl == (g == "controls")
        zero[g] = not np.any(yd[mask])
        counts = {"n_units": int(sub.loc[mask, "unit"].nunique()), "n_traces": int(sub.loc[mask, "trace"].nunique()),
                  "se_type": se_type}
        if zero[g]:
            out[g] = {"estimable": True, **_EXACT_ZERO, "slope": 0.0, **counts}
            continue
        s = coef_summary(res, i, level=level)
        out[g] = {"estimable": True, "slope": s["estimate"], "se": s["se"], "df": s["df"], "ci_low": s["ci_low"],
                  "ci_high": s["ci_high"], "p": s["p"], "exact_zero": False, "degenerate": s["degenerate"],
                  "degenerate_reason": s["degenerate_reason"], **counts}
    if len(present) == 2:
        if all(zero.values()):
            out["difference"] = {"estimable": True, **_EXACT_ZERO, "slope_difference": 0.0, "se_type": se_type}
        else:
            c = np.zeros(res.params.size)
            c[:2] = [1.0, -1.0]
            s = contrast_summary(res, c, level=level, notes=notes)
            out["difference"] = {"estimable": True, "slope_difference": s["estimate"], "se": s["se"], "df": s["df"],
                                 "ci_low": s["ci_low"], "ci_high": s["ci_high"], "p": s["p"], "exact_zero": False,
                                 "degenerate": s["degenerate"], "degenerate_reason": s["degenerate_reason"],
                                 "se_type": se_type}
    return out


_EXACT_ZERO = {"se": None, "df": None, "ci_low": None, "ci_high": None, "p": None, "exact_zero": True,
               "degenerate": False, "degenerate_reason": None,
               "note": "the measure does not change with the factor within any token (exact zero: no CI, no p)"}


def page_trend(sub: pd.DataFrame, measure: str, *, n_perm: int, rng: np.random.Generator) -> dict:
    """Page's L for an increasing trend across factors within tokens, permutation p (one-sided).

    Only tokens observed at every factor enter (Page's test needs complete blocks). Within a
    token the responses are ranked (ties averaged); the null permutes each token's responses
    across factors independently.
    """
    wide = sub.pivot_table(index="unit", columns="factor", values=measure, aggfunc="mean").sort_index(axis=1)
    complete = wide.dropna()
    k = wide.shape[1]
    if len(complete) < 2 or k < 2:
        return {"estimable": False, "reason": "fewer than 2 tokens observed at every factor",
                "n_complete": len(complete)}
    R = stats.rankdata(complete.to_numpy(float), axis=1)
    weights = np.arange(1, k + 1, dtype=float)
    L = float(R.sum(axis=0) @ weights)
    hits, done = 0, 0
    while done < n_perm:
        size = min(max(1, 200_000 // R.size), n_perm - done)
        perm = rng.permuted(np.broadcast_to(R, (size, *R.shape)), axis=2)
        hits += int(np.sum(perm.sum(axis=1) @ weights >= L - 1e-9))
        done += size
    rhos = []
    for row in complete.to_numpy(float):
        if np.ptp(row) > 0:
            rhos.append(stats.spearmanr(weights, row).statistic)
    return {"estimable": True, "L": L, "p_perm": (1 + hits) / (n_perm + 1), "n_complete": int(len(complete)),
            "n_perm": n_perm, "mean_spearman": float(np.mean(rhos)) if rhos else None,
            "n_nonconstant": len(rhos)}
