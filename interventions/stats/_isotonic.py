"""Isotonic (non-decreasing) least-squares regression by pool-adjacent-violators (PAVA).

Written here rather than taken from ``scipy.optimize.isotonic_regression`` because the
project supports scipy versions that predate it; the result is the same unique L2 fit.
"""

from __future__ import annotations

import numpy as np


def isotonic_blocks(x: np.ndarray, y: np.ndarray) -> list[dict]:
    """Fit a non-decreasing step function of ``x`` to ``y``; return its constant blocks.

    Tied ``x`` values are pooled first (they must share a fitted value). Each block is a
    maximal run of sorted ``x`` with one fitted level.

    Returns:
        Blocks in increasing ``x``: ``{x_low, x_high, level, n}`` (``n`` = observations).
    """
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    ux, start = np.unique(xs, return_index=True)
    counts = np.diff(np.append(start, xs.size))
    sums = np.add.reduceat(ys, start)
    # Stack of pooled blocks: [sum, weight, first unique index, last unique index].
    stack: list[list[float]] = []
    for i in range(ux.size):
        stack.append([sums[i], float(counts[i]), i, i])
        while len(stack) > 1 and stack[-2][0] / stack[-2][1] >= stack[-1][0] / stack[-1][1]:
            s, w, _, last = stack.pop()
            stack[-1][0] += s
            stack[-1][1] += w
            stack[-1][3] = last
    blocks = []
    for s, w, first, last in stack:
        blocks.append({"x_low": float(ux[first]), "x_high": float(ux[last]), "level": s / w, "n": int(w)})
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
