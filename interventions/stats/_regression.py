"""Regression fits with small-sample trace-cluster inference (CR2 + Bell-McCaffrey), as plain dicts.

Why CR2 with Bell-McCaffrey degrees of freedom and not statsmodels' ``cov_type="cluster"``
(CR1) with t(G - 1): with 8 to 30 traces CR1 is biased downwards and t(G - 1) does not
repair it when clusters differ in size or leverage, so nominal 95% intervals cover far less
(Imbens & Kolesar 2016; Pustejovsky & Tipton 2018). CR2 (Bell & McCaffrey 2002) rescales each
trace's residuals by ``(I - H_gg)^(-1/2)``, which makes the variance unbiased under iid
errors, and the Bell-McCaffrey (Satterthwaite) degrees of freedom of each coefficient adapt
the t reference to how much the estimate leans on few traces.

Why hand-written: statsmodels offers CR1 only; the maintained implementations are
``clubSandwich`` (R) and, in Python, ``pyfixest`` (CRV3 and a wild cluster bootstrap; a heavy
dependency tree) and ``wildboottest`` (needs numba and returns p-values, no intervals). The
code below is the textbook formula (Imbens & Kolesar 2016, Sec. 3-4), checked in
``tests/test_stats.py`` against three library results it must reproduce exactly: with one
observation per cluster it is statsmodels' HC2; for a two-group mean difference with
singleton clusters its df are scipy's Welch-Satterthwaite df; for a mean of balanced clusters
it is the one-sample t-test on cluster means with G - 1 df.

GLMs use the same formula on the IRLS working model at convergence (``W^(1/2) X`` and the
working residuals), as clubSandwich does. With a single trace there is nothing to cluster on
and each row is its own cluster (HC2), which ``se_type`` says.

Degenerate estimates (a non-finite SE, a SE of zero, or a cluster-robust SE that has
collapsed to below ``COLLAPSE_RTOL`` of the model-based SE, as when every trace's score sum
cancels) get ``degenerate: True`` and no CI or p: a zero variance is an absence of evidence,
not infinite evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm
from scipy import stats

from ._common import capture_warnings

COLLAPSE_RTOL = 1e-6
"""A cluster-robust SE below this fraction of the model-based SE has collapsed (degenerate)."""


@dataclass
class ClusteredFit:
    """A fitted model with CR2 covariance and Bell-McCaffrey degrees of freedom.

    Attribute access falls through to the statsmodels result (``rsquared``, ``ssr``,
    ``df_resid``, ``pearson_chi2``...), except the inference attributes defined here.
    """

    result: object
    params: np.ndarray
    cov: np.ndarray
    model_se: np.ndarray
    se_type: str
    _gmat: list  # per cluster: (rows, A_g X_g), for the Bell-McCaffrey df of any contrast
    _bread: np.ndarray
    _x: np.ndarray

    def __getattr__(self, name):
        return getattr(self.result, name)

    @property
    def bse(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))

    def df(self, weights: np.ndarray) -> float:
        """Bell-McCaffrey degrees of freedom of the contrast ``weights @ params``."""
        return bm_df(self._x, self._bread, self._gmat, np.asarray(weights, float))


def cr2_parts(X: np.ndarray, resid: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """CR2 sandwich covariance of OLS on ``X`` with residuals ``resid``, clustered by ``groups``.

    Returns:
        ``(cov, bread, gmat)``: the covariance ``M (sum_g X_g' A_g e_g e_g' A_g X_g) M`` with
        ``M = (X'X)^-1`` and ``A_g = (I - H_gg)^(-1/2)`` (symmetric pseudo-inverse root), the
        bread ``M``, and per cluster ``(row indices, A_g X_g)`` for :func:`bm_df`.
    """
    bread = np.linalg.pinv(X.T @ X)
    meat = np.zeros((X.shape[1], X.shape[1]))
    gmat = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        Xg = X[rows]
        Hgg = Xg @ bread @ Xg.T
        Ag = _inv_sqrt_psd(np.eye(rows.size) - Hgg)
        AXg = Ag @ Xg
        u = AXg.T @ resid[rows]
        meat += np.outer(u, u)
        gmat.append((rows, AXg))
    return bread @ meat @ bread, bread, gmat


def _inv_sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric pseudo-inverse square root (eigenvalues below 1e-12 treated as zero)."""
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    keep = vals > 1e-12
    inv = np.zeros_like(vals)
    inv[keep] = 1.0 / np.sqrt(vals[keep])
    return (vecs * inv) @ vecs.T


def bm_df(X: np.ndarray, bread: np.ndarray, gmat: list, c: np.ndarray) -> float:
    """Bell-McCaffrey degrees of freedom ``(sum lambda)^2 / sum lambda^2`` of contrast ``c``.

    ``lambda`` are the eigenvalues of ``G'G``, where column g of ``G`` is ``(I - H)`` applied to
    the vector holding ``A_g X_g M c`` in cluster g's rows and zero elsewhere (iid working
    model; Imbens & Kolesar 2016, eq. 11). ``G'G`` is G x G, so no n x n matrix is formed.
    """
    n = X.shape[0]
    cols = []
    Mc = bread @ c
    for rows, AXg in gmat:
        v = np.zeros(n)
        v[rows] = AXg @ Mc
        cols.append(v - X @ (bread @ (X.T @ v)))
    G = np.column_stack(cols)
    lam = np.linalg.eigvalsh(G.T @ G)
    denom = float(np.sum(lam**2))
    return float(np.sum(lam) ** 2 / denom) if denom > 0 else float("nan")


def _effective_groups(groups: np.ndarray) -> tuple[np.ndarray, str]:
    if len(np.unique(groups)) >= 2:
        return np.asarray(groups), "CR2(trace), Bell-McCaffrey df"
    return np.arange(len(groups)), "HC2 (one trace: not clustered), Bell-McCaffrey df"


def ols_clustered(y: np.ndarray, X: np.ndarray, groups: np.ndarray, notes: list[str]):
    """OLS of ``y`` on ``X`` (caller adds the constant) with CR2 trace-clustered inference.

    Returns:
        ``(fit, se_type)`` with ``fit`` a :class:`ClusteredFit`; warnings go to ``notes``.
    """
    X = np.asarray(X, float)
    with capture_warnings(notes):
        result = sm.OLS(np.asarray(y, float), X).fit()
        _prime(result, "rsquared", "ssr")
    g, se_type = _effective_groups(groups)
    cov, bread, gmat = cr2_parts(X, np.asarray(result.resid, float), g)
    return ClusteredFit(result, np.asarray(result.params, float), cov, np.asarray(result.bse, float), se_type,
                        gmat, bread, X), se_type


def glm_clustered(y: np.ndarray, X: np.ndarray, groups: np.ndarray, family, notes: list[str]):
    """GLM of ``y`` on ``X`` with CR2 inference on the IRLS working model; ``(fit, se_type)``.

    At convergence the GLM is the weighted least-squares fit of the working response on
    ``X`` with the IRLS weights, so CR2 and Bell-McCaffrey df are taken on ``W^(1/2) X`` and
    ``W^(1/2)`` times the working residuals (clubSandwich's approach for ``glm``).
    """
    X = np.asarray(X, float)
    with capture_warnings(notes):
        result = sm.GLM(np.asarray(y, float), X, family=family).fit()
        _prime(result, "pearson_chi2")
        w = np.asarray(result.model.family.weights(result.fittedvalues), float)
    sw = np.sqrt(np.clip(w, 0.0, None))
    Xw = X * sw[:, None]
    g, se_type = _effective_groups(groups)
    cov, bread, gmat = cr2_parts(Xw, sw * np.asarray(result.resid_working, float), g)
    return ClusteredFit(result, np.asarray(result.params, float), cov, np.asarray(result.bse, float), se_type,
                        gmat, bread, Xw), se_type


def _prime(result, *extra: str) -> None:
    """Compute statsmodels' lazily cached statistics now, so their warnings land in ``notes``."""
    for name in ("bse", "tvalues", *extra):
        getattr(result, name)


def degenerate_reason(estimate: float, se: float, model_se: float, df: float) -> str | None:
    """Why an estimate has no usable inference, or None."""
    if not np.isfinite(estimate):
        return "estimate is not finite"
    if not np.isfinite(se):
        return "standard error is not finite"
    if se == 0.0:
        return "zero variance: the cluster-robust standard error is exactly 0"
    if np.isfinite(model_se) and model_se > 0 and se < COLLAPSE_RTOL * model_se:
        return (f"collapsed sandwich variance: cluster-robust SE {se:.3g} is below {COLLAPSE_RTOL:g} x the "
                f"model-based SE {model_se:.3g} (the traces' score sums cancel)")
    if not np.isfinite(df) or df <= 0:
        return "Bell-McCaffrey degrees of freedom not finite"
    return None


def t_inference(estimate: float, se: float, df: float, *, level: float, model_se: float = float("nan")) -> dict:
    """``estimate, se, df, ci_low, ci_high, p, degenerate, degenerate_reason`` from a t(df) reference.

    A degenerate estimate keeps its ``estimate`` and gets ``None`` for CI and p.
    """
    reason = degenerate_reason(estimate, se, model_se, df)
    if reason:
        return {"estimate": float(estimate), "se": float(se) if np.isfinite(se) else None,
                "df": float(df) if np.isfinite(df) else None, "ci_low": None, "ci_high": None, "p": None,
                "degenerate": True, "degenerate_reason": reason}
    q = stats.t.ppf(0.5 + level / 2.0, df)
    t = estimate / se
    return {"estimate": float(estimate), "se": float(se), "df": float(df), "ci_low": float(estimate - q * se),
            "ci_high": float(estimate + q * se), "p": float(2.0 * stats.t.sf(abs(t), df)), "degenerate": False,
            "degenerate_reason": None}


def coef_summary(fit: ClusteredFit, index: int, *, level: float) -> dict:
    """Estimate, CR2 SE, Bell-McCaffrey df, CI and p of coefficient ``index`` (``None`` when degenerate)."""
    c = np.zeros(fit.params.size)
    c[index] = 1.0
    return t_inference(float(fit.params[index]), float(fit.bse[index]), fit.df(c), level=level,
                       model_se=float(fit.model_se[index]))


def contrast_summary(fit: ClusteredFit, weights: np.ndarray, *, level: float, notes: list[str] | None = None) -> dict:
    """Estimate, CR2 SE, Bell-McCaffrey df, CI and p of the linear combination ``weights @ params``."""
    c = np.asarray(weights, float).ravel()
    model_cov = np.asarray(fit.result.cov_params(), float)
    model_se = float(np.sqrt(max(c @ model_cov @ c, 0.0)))
    se = float(np.sqrt(max(c @ fit.cov @ c, 0.0)))
    return t_inference(float(c @ fit.params), se, fit.df(c), level=level, model_se=model_se)


def gaussian_bic(sse: float, n: int, k: int, sst: float, *, floor: float = 0.0) -> float:
    """Gaussian BIC ``n log(max(SSE, floor)/n) + k log n``.

    ``floor`` is the noise floor on the residual sum of squares; :data:`SSE_FLOOR_RTOL` x SST
    is always applied too, so an exact fit gives a finite BIC.
    """
    floor = max(floor, SSE_FLOOR_RTOL * max(sst, 1e-300))
    return float(n * np.log(max(sse, floor) / n) + k * np.log(n))


SSE_FLOOR_RTOL = 1e-10
"""Smallest SSE any BIC uses, as a fraction of the total sum of squares (numerical floor)."""
