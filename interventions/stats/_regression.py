"""Regression fits with trace-cluster-robust standard errors, returning plain dicts.

Cluster-robust covariance (``cov_type="cluster"``) with t reference on ``G - 1`` degrees of
freedom, the usual small-G correction; with a single trace there is nothing to cluster on
and HC1 (heteroskedasticity-robust) is used instead, which the result says in ``se_type``.
"""

from __future__ import annotations

import numpy as np
import statsmodels.api as sm

from ._common import capture_warnings


def _cov_kwargs(groups: np.ndarray) -> tuple[dict, str]:
    n_groups = len(np.unique(groups))
    if n_groups >= 2:
        return {"cov_type": "cluster", "cov_kwds": {"groups": groups}, "use_t": True}, "cluster(trace)"
    return {"cov_type": "HC1", "use_t": True}, "HC1 (one trace: not clustered)"


def coef_summary(result, index: int, *, level: float) -> dict:
    """Estimate, SE, CI and p of coefficient ``index`` of a fitted statsmodels result."""
    low, high = np.asarray(result.conf_int(alpha=1.0 - level))[index]
    return {
        "estimate": float(np.asarray(result.params)[index]),
        "se": float(np.asarray(result.bse)[index]),
        "ci_low": float(low),
        "ci_high": float(high),
        "p": float(np.asarray(result.pvalues)[index]),
    }


def contrast_summary(result, weights: np.ndarray, *, level: float, notes: list[str]) -> dict:
    """Estimate, SE, CI and p of the linear combination ``weights @ params``."""
    with capture_warnings(notes):
        test = result.t_test(np.atleast_2d(weights))
    low, high = np.asarray(test.conf_int(alpha=1.0 - level))[0]
    return {
        "estimate": float(np.asarray(test.effect).ravel()[0]),
        "se": float(np.asarray(test.sd).ravel()[0]),
        "ci_low": float(low),
        "ci_high": float(high),
        "p": float(np.asarray(test.pvalue).ravel()[0]),
    }


def ols_clustered(y: np.ndarray, X: np.ndarray, groups: np.ndarray, notes: list[str]):
    """OLS of ``y`` on ``X`` (caller adds the constant) with trace-clustered SEs.

    Returns:
        ``(result, se_type)``; warnings go to ``notes``.
    """
    kwargs, se_type = _cov_kwargs(groups)
    with capture_warnings(notes):
        result = sm.OLS(y, X).fit(**kwargs)
        _prime(result, "rsquared", "ssr")
    return result, se_type


def glm_clustered(y: np.ndarray, X: np.ndarray, groups: np.ndarray, family, notes: list[str]):
    """GLM of ``y`` on ``X`` with trace-clustered SEs; ``(result, se_type)``, warnings to notes."""
    kwargs, se_type = _cov_kwargs(groups)
    with capture_warnings(notes):
        result = sm.GLM(y, X, family=family).fit(**kwargs)
        _prime(result, "pearson_chi2")
    return result, se_type


def _prime(result, *extra: str) -> None:
    """Compute statsmodels' lazily cached statistics now, so their warnings land in ``notes``."""
    for name in ("bse", "pvalues", "tvalues", *extra):
        getattr(result, name)


def gaussian_bic(sse: float, n: int, k: int, sst: float) -> float:
    """Gaussian BIC ``n log(SSE/n) + k log n``; SSE is floored at ``1e-10 * SST`` so exact fits stay finite."""
    floor = 1e-10 * max(sst, 1e-300)
    return float(n * np.log(max(sse, floor) / n) + k * np.log(n))
