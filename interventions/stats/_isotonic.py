"""Isotonic (non-decreasing) least-squares regression as constant blocks, via scipy.

``scipy.optimize.isotonic_regression`` (scipy >= 1.12) does the pool-adjacent-violators fit;
this module only pools tied ``x`` first (they must share a fitted value) and reports the
blocks in ``x`` units.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import isotonic_regression


def isotonic_blocks(x: np.ndarray, y: np.ndarray) -> list[dict]:
    """Fit a non-decreasing step function of ``x`` to ``y``; return its constant blocks.

    Returns:
        Blocks in increasing ``x``: ``{x_low, x_high, level, n}`` (``n`` = observations).
    """
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    ux, inverse, counts = np.unique(xs, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=ys) / counts
    fit = isotonic_regression(means, weights=counts.astype(float), increasing=True)
    starts = list(np.asarray(fit.blocks, dtype=int)[:-1])
    ends = list(np.asarray(fit.blocks, dtype=int)[1:])
    blocks = [{"x_low": float(ux[a]), "x_high": float(ux[b - 1]), "level": float(fit.x[a]),
               "n": int(counts[a:b].sum())} for a, b in zip(starts, ends)]
    return _merge_equal(blocks)


def _merge_equal(blocks: list[dict]) -> list[dict]:
    """Join neighbouring blocks whose levels are equal (PAVA pools only strict violations)."""
    merged: list[dict] = []
    for b in blocks:
        if merged and abs(merged[-1]["level"] - b["level"]) <= 1e-12 * max(1.0, abs(b["level"])):
            m = merged[-1]
            total = m["n"] + b["n"]
            m["level"] = (m["level"] * m["n"] + b["level"] * b["n"]) / total
            m["n"], m["x_high"] = total, b["x_high"]
        else:
            merged.append(dict(b))
    return merged


def isotonic_sse(x: np.ndarray, y: np.ndarray, blocks: list[dict]) -> float:
    """Residual sum of squares of the isotonic step function given by ``blocks``."""
    fitted = np.empty_like(np.asarray(y, float))
    for b in blocks:
        mask = (x >= b["x_low"]) & (x <= b["x_high"])
        fitted[mask] = b["level"]
    return float(np.sum((np.asarray(y, float) - fitted) ** 2))
