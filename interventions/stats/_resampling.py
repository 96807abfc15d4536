"""Seeded resampling: trace-cluster bootstrap (BCa or percentile) and trace-level sign flips
(scipy's ``permutation_test``; intervals by test inversion).

Every statistic here is written as a function of a weight matrix ``W`` of shape
``(replicates, n_clusters)``: row ``b`` says how many times each trace enters replicate ``b``.
The observed statistic uses a row of ones, the bootstrap uses multinomial counts and the
jackknife uses ``1 - I``; one vectorised function therefore serves all three.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy import stats

MIN_CLUSTERS_BCA = 5
"""BCa needs a jackknife acceleration; from fewer traces it is too unstable, so percentile is used."""

MIN_BOOT = 2000
"""Fewest bootstrap replicates: a request for fewer is raised to this (tail quantiles need it)."""

StatFn = Callable[[np.ndarray], np.ndarray]


def bootstrap_weights(n_clusters: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Multinomial resample counts, shape ``(n_boot, n_clusters)``: traces drawn with replacement."""
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot).astype(float)


def jackknife_weights(n_clusters: int) -> np.ndarray:
    """Leave-one-trace-out weights, shape ``(n_clusters, n_clusters)``."""
    return 1.0 - np.eye(n_clusters)


def ratio_of_sums(W: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-token mean of each replicate: ``(W @ sums) / (W @ counts)`` (NaN where a replicate holds no token)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (W @ sums) / (W @ counts)


def interval(
    boot: np.ndarray, observed: float, jack: np.ndarray | list[np.ndarray] | None, *, level: float = 0.95
) -> tuple[float, float, str]:
    """Bootstrap confidence interval: BCa where valid, else percentile.

    ``jack`` holds the jackknife values: one array when one set of clusters is resampled, or a
    list with one array per independently resampled sample (a difference between two runs whose
    traces are drawn separately); the acceleration is then the multi-sample one (Efron &
    Tibshirani 1993, ch. 14; the form ``scipy.stats.bootstrap`` uses).

    BCa is valid when every sample has at least ``MIN_CLUSTERS_BCA`` finite jackknife values,
    they have nonzero spread, the bias correction is finite (the observed value lies strictly
    inside the bootstrap distribution) and the adjusted quantile levels are well defined.

    Returns:
        ``(low, high, method)`` with method ``"bca"``, ``"percentile"`` or ``"none"``
        (fewer than two finite replicates).
    """
    boot = np.asarray(boot, dtype=float)
    boot = boot[np.isfinite(boot)]
    if boot.size < 2 or not np.isfinite(observed):
        return float("nan"), float("nan"), "none"
    tail = (1.0 - level) / 2.0
    levels = np.array([tail, 1.0 - tail])
    method = "percentile"
    bca = _bca_levels(boot, observed, jack, levels)
    if bca is not None:
        levels, method = bca, "bca"
    low, high = np.quantile(boot, levels)
    return float(low), float(high), method


def _bca_levels(
    boot: np.ndarray, observed: float, jack: np.ndarray | list[np.ndarray] | None, levels: np.ndarray
) -> np.ndarray | None:
    """BCa-adjusted quantile levels (Efron 1987), or None where BCa is not valid."""
    if jack is None:
        return None
    samples = [np.asarray(j, dtype=float) for j in jack] if isinstance(jack, (list, tuple)) else \
        [np.asarray(jack, dtype=float)]
    if any(j.size < MIN_CLUSTERS_BCA or not np.all(np.isfinite(j)) for j in samples):
        return None
    below = (np.sum(boot < observed) + 0.5 * np.sum(boot == observed)) / boot.size
    if not 0.0 < below < 1.0 or np.ptp(boot) == 0:
        return None
    z0 = stats.norm.ppf(below)
    # Sample j's influence values are (n_j - 1)(mean - jack_j) and enter as U / n_j; one sample's
    # factor (n - 1) / n cancels in the ratio, so it is left out there (the one-sample formula).
    scales = [1.0] if len(samples) == 1 else [(j.size - 1) / j.size for j in samples]
    devs = [c * (j.mean() - j) for c, j in zip(scales, samples)]
    denom = 6.0 * sum(np.sum(d**2) for d in devs) ** 1.5
    if denom <= 0:
        return None
    accel = sum(np.sum(d**3) for d in devs) / denom
    z = stats.norm.ppf(levels)
    shrink = 1.0 - accel * (z0 + z)
    if np.any(shrink <= 0):
        return None
    adjusted = stats.norm.cdf(z0 + (z0 + z) / shrink)
    if not np.all(np.isfinite(adjusted)):
        return None
    return adjusted


def cluster_bootstrap(
    stat: StatFn, n_clusters: int, *, n_boot: int, rng: np.random.Generator, level: float = 0.95
) -> list[dict]:
    """Trace-cluster bootstrap of a vector statistic ``stat(W) -> (replicates, k)``.

    ``n_boot`` below :data:`MIN_BOOT` is raised to it.

    Returns:
        One dict per statistic column: ``estimate, ci_low, ci_high, ci_method``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = _columns(stat(np.ones((1, n_clusters))))[0]
        if n_clusters < 2:
            return [_ci_row(v, float("nan"), float("nan"), "none") for v in observed]
        boot = _columns(stat(bootstrap_weights(n_clusters, max(n_boot, MIN_BOOT), rng)))
        jack = _columns(stat(jackknife_weights(n_clusters)))
    out = []
    for j, value in enumerate(observed):
        low, high, method = interval(boot[:, j], value, jack[:, j], level=level)
        out.append(_ci_row(value, low, high, method))
    return out


def _columns(values: np.ndarray) -> np.ndarray:
    """Statistic output as ``(replicates, k)``: a 1-D output is one statistic per replicate."""
    values = np.asarray(values, dtype=float)
    return values[:, None] if values.ndim == 1 else values


def _ci_row(value: float, low: float, high: float, method: str) -> dict:
    return {"estimate": float(value), "ci_low": low, "ci_high": high, "ci_method": method}


@lru_cache(maxsize=None)
def _all_signs(n: int) -> np.ndarray:
    """Every sign pattern of length ``n`` as rows of +-1, shape ``(2**n, n)``; row 0 is all +1."""
    idx = np.arange(2**n)[:, None]
    return (1 - 2 * ((idx >> np.arange(n)) & 1)).astype(float)


def _sum_statistic(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(x, axis=axis)


def sign_flip_test(
    cluster_values: np.ndarray, *, rng: np.random.Generator, n_flip: int = 9999
) -> tuple[float, str]:
    """Two-sided sign-flip test that the cluster values are centred on zero.

    ``scipy.stats.permutation_test`` with ``permutation_type="samples"`` on one sample flips
    the sign of each trace's value; the statistic is the sum. Under the null each trace's
    value is symmetric about zero and traces are independent, so the flips give the exact
    null distribution at any number of traces, with no normality assumption. scipy
    enumerates all ``2**G`` patterns when that is at most ``n_flip`` (exact, up to G = 13 at
    the default) and draws ``n_flip`` patterns from ``rng`` above. The smallest attainable p
    is ``2 / 2**G``, so with fewer than 6 traces it can never reach 0.05.

    Returns:
        ``(p, method)`` with method ``"exact"``, ``"monte_carlo"`` or ``"none"`` (no traces).
    """
    v = np.asarray(cluster_values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), "none"
    exact = 2**v.size <= n_flip
    if not np.any(v):
        return 1.0, "exact" if exact else "monte_carlo"
    res = stats.permutation_test((v,), _sum_statistic, permutation_type="samples", vectorized=True,
                                 n_resamples=n_flip, alternative="two-sided", rng=rng)
    return float(min(1.0, res.pvalue)), "exact" if exact else "monte_carlo"


def _flip_matrix(n: int, *, rng: np.random.Generator, n_flip: int) -> tuple[np.ndarray, bool]:
    """All sign patterns (exact) when ``2**n <= n_flip`` else the identity plus ``n_flip`` random rows."""
    if 2**n <= n_flip:
        return _all_signs(n), True
    draws = rng.choice(np.array([-1.0, 1.0]), size=(n_flip, n))
    return np.vstack([np.ones((1, n)), draws]), False


def _flip_pvalues(signs: np.ndarray, S: np.ndarray, N: np.ndarray, mus: np.ndarray, exact: bool) -> np.ndarray:
    """Two-sided sign-flip p of ``H0: mean = mu`` for each ``mu`` (statistic ``|sum_g s_g (S_g - mu N_g)|``).

    Ties within a relative tolerance of 1e-12 count as at least as extreme, as in scipy.
    """
    centred = S[:, None] - np.outer(N, mus)  # (G, K)
    null = np.abs(signs @ centred)  # (P, K); row 0 is the observed pattern (all +1)
    observed = np.abs(centred.sum(axis=0))
    tol = 1e-12 * np.maximum(np.abs(centred).sum(axis=0), 1e-300)
    hits = np.sum(null >= observed - tol, axis=0)
    return hits / signs.shape[0]


def sign_flip_interval(
    sums: np.ndarray, counts: np.ndarray | None = None, *, rng: np.random.Generator, n_flip: int = 9999,
    level: float = 0.95, rounds: int = 5,
) -> dict:
    """Estimate and confidence interval of a per-token mean by inverting the trace sign-flip test.

    Trace g contributes ``sums[g]`` over ``counts[g]`` tokens (``counts`` all 1: a mean of
    per-trace values). The estimate is ``sum(sums) / sum(counts)``; the interval is every
    ``mu`` that the two-sided sign-flip test of ``sums - mu * counts`` does not reject at
    ``1 - level``, found on each side by widening, then refining on a grid (to 32**-5 of the
    bracket). Inverting the test that gives ``p`` makes
    the interval and the p-value agree: the interval excludes 0 exactly when the test rejects
    (up to Monte Carlo error beyond 12 traces, where the interval uses its own seeded draws).

    Written here because scipy has no interval for the sign-flip test; its p at ``mu`` equals
    ``scipy.stats.permutation_test``'s at exact enumeration (tested).

    Returns:
        ``{estimate, ci_low, ci_high, ci_method}``; the bounds are None where the test cannot
        reject at any ``mu`` (fewer than 6 traces at level 0.95: ``2 / 2**G >= 1 - level``).
    """
    S = np.asarray(sums, float)
    N = np.ones_like(S) if counts is None else np.asarray(counts, float)
    keep = np.isfinite(S) & (N > 0)
    S, N = S[keep], N[keep]
    if S.size == 0:
        return {"estimate": None, "ci_low": None, "ci_high": None, "ci_method": "none"}
    estimate = float(S.sum() / N.sum())
    signs, exact = _flip_matrix(S.size, rng=rng, n_flip=n_flip)
    alpha = 1.0 - level
    method = "sign_flip_inversion_" + ("exact" if exact else "monte_carlo")
    floor = 1.0 / signs.shape[0] if not exact else 2.0 / signs.shape[0]
    if S.size < 2 or floor > alpha:
        return {"estimate": estimate, "ci_low": None, "ci_high": None, "ci_method": method}
    means = S / N
    spread = float(np.ptp(means)) or float(np.abs(means).max()) or 1.0
    bounds = []
    for side in (-1.0, 1.0):
        # widen: the first of spread * 2**k (k = 0..60) beyond the estimate that the test rejects
        steps = estimate + side * spread * 2.0 ** np.arange(61)
        rejected = np.flatnonzero(_flip_pvalues(signs, S, N, steps, exact) <= alpha)
        if rejected.size == 0:
            bounds.append(None)
            continue
        k = int(rejected[0])
        inner, outer = (estimate if k == 0 else float(steps[k - 1])), float(steps[k])
        for _ in range(rounds):  # refine on a grid of 33 points per round (precision 32**-rounds of the bracket)
            grid = np.linspace(inner, outer, 33)
            rej = _flip_pvalues(signs, S, N, grid, exact) <= alpha
            first = int(np.argmax(rej))  # rej[-1] is True: the outer point is rejected
            inner, outer = float(grid[first - 1]), float(grid[first])
        bounds.append(inner)
    return {"estimate": estimate, "ci_low": bounds[0], "ci_high": bounds[1], "ci_method": method}
