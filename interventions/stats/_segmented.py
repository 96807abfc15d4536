"""Segmented (piecewise-linear) least squares with 0, 1 or 2 breakpoints, exhaustive search.

Segments are fitted independently (intercept and slope each), so a breakpoint may carry a
jump: lifetimes come in discrete sink levels, and a continuous hinge model cannot represent a
step between plateaus. Breakpoints are searched exhaustively between distinct sorted ``x``
values; segment SSEs come from prefix sums, so the search is O(m^2) vectorised, not a loop
of fits.
"""

from __future__ import annotations

import numpy as np

from ._regression import gaussian_bic

MAX_CANDIDATES = 1500
"""Above this many candidate cut points they are thinned to evenly spaced quantiles."""


class _Prefix:
    """Prefix sums of 1, x, y, x^2, xy, y^2 over sorted, centred data."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        z = np.zeros(1)
        self.n = np.concatenate([z, np.cumsum(np.ones_like(x))])
        self.x = np.concatenate([z, np.cumsum(x)])
        self.y = np.concatenate([z, np.cumsum(y)])
        self.xx = np.concatenate([z, np.cumsum(x * x)])
        self.xy = np.concatenate([z, np.cumsum(x * y)])
        self.yy = np.concatenate([z, np.cumsum(y * y)])
        self.xs = x

    def sse(self, a: np.ndarray, b: np.ndarray, min_n: int) -> np.ndarray:
        """SSE of a line fitted to rows ``[a, b)``; ``inf`` where the segment is too small."""
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        n = self.n[b] - self.n[a]
        with np.errstate(divide="ignore", invalid="ignore"):
            sx, sy = self.x[b] - self.x[a], self.y[b] - self.y[a]
            cxx = self.xx[b] - self.xx[a] - sx * sx / n
            cxy = self.xy[b] - self.xy[a] - sx * sy / n
            cyy = self.yy[b] - self.yy[a] - sy * sy / n
            sse = np.clip(cyy - cxy * cxy / cxx, 0.0, None)
        ok = (n >= min_n) & (b > a)
        ok &= self.xs[np.clip(b - 1, 0, None)] > self.xs[np.clip(a, 0, self.xs.size - 1)]
        return np.where(ok & np.isfinite(sse), sse, np.inf)


def fit_segmented(x: np.ndarray, y: np.ndarray, *, max_breakpoints: int = 2, min_segment_n: int = 3,
                  sse_floor: float = 0.0) -> dict:
    """Best piecewise-linear fit of ``y`` on ``x`` for each number of breakpoints 0..max.

    BIC counts two parameters per segment, one per breakpoint and one for the variance; its
    SSE is floored at ``sse_floor`` (the data's noise floor), so exact fits stay comparable.

    Returns:
        ``{"fits": [{n_breakpoints, breakpoints, segments, sse, bic}], "best": n_breakpoints}``;
        a breakpoint count with no admissible split is omitted.
    """
    order = np.argsort(x, kind="stable")
    xs0, ys0 = np.asarray(x, float)[order], np.asarray(y, float)[order]
    xc, yc = xs0 - xs0.mean(), ys0 - ys0.mean()
    pre = _Prefix(xc, yc)
    n = xs0.size
    sst = float(np.sum(yc**2))
    cuts = np.flatnonzero(np.diff(xs0) > 0) + 1  # a cut at i splits rows [.., i) | [i, ..)
    if cuts.size > MAX_CANDIDATES:
        cuts = np.unique(cuts[np.linspace(0, cuts.size - 1, MAX_CANDIDATES).astype(int)])
    fits = []
    for nb in range(max_breakpoints + 1):
        chosen = _best_cuts(pre, cuts, n, nb, min_segment_n)
        if chosen is None:
            continue
        cut_list, sse = chosen
        k = 2 * (nb + 1) + nb + 1
        fits.append(
            {
                "n_breakpoints": nb,
                "breakpoints": [float((xs0[c - 1] + xs0[c]) / 2) for c in cut_list],
                "segments": _segments(xs0, ys0, [0, *cut_list, n]),
                "sse": float(sse),
                "bic": gaussian_bic(sse, n, k, sst, floor=sse_floor),
            }
        )
    best = min(fits, key=lambda f: f["bic"])["n_breakpoints"] if fits else None
    return {"fits": fits, "best": best}


def _best_cuts(pre: _Prefix, cuts: np.ndarray, n: int, nb: int, min_n: int):
    """Cut positions minimising total SSE for ``nb`` breakpoints, or None if none admissible."""
    if nb == 0:
        sse = float(pre.sse(np.array(0), np.array(n), min_n))
        return ([], sse) if np.isfinite(sse) else None
    if cuts.size == 0:
        return None
    if nb == 1:
        total = pre.sse(np.zeros_like(cuts), cuts, min_n) + pre.sse(cuts, np.full_like(cuts, n), min_n)
        i = int(np.argmin(total))
        return ([int(cuts[i])], float(total[i])) if np.isfinite(total[i]) else None
    c1, c2 = cuts[:, None], cuts[None, :]
    total = pre.sse(np.zeros_like(c1), c1, min_n) + pre.sse(c1, c2, min_n) + pre.sse(c2, np.full_like(c2, n), min_n)
    total = np.where(c2 > c1, total, np.inf)
    i, j = np.unravel_index(int(np.argmin(total)), total.shape)
    if not np.isfinite(total[i, j]):
        return None
    return [int(cuts[i]), int(cuts[j])], float(total[i, j])


def _segments(xs: np.ndarray, ys: np.ndarray, bounds: list[int]) -> list[dict]:
    """Intercept and slope of each segment between consecutive ``bounds`` (original units)."""
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        slope, intercept = np.polyfit(xs[a:b], ys[a:b], 1)
        out.append(
            {"x_low": float(xs[a]), "x_high": float(xs[b - 1]), "n": int(b - a),
             "slope": float(slope), "intercept": float(intercept), "mean": float(ys[a:b].mean())}
        )
    return out
