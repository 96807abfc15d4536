"""How numbers are written, in report.md and on the terminal alike (one definition of each)."""

from __future__ import annotations

import math


def fmt_num(value, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; scientific only for very small or large values."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")
    if not math.isfinite(v):
        return "–"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def fmt_p(value) -> str:
    """A p-value as readers expect it: two significant digits, and ``< 0.001`` below that.

    Digits beyond the test's own resolution (a permutation or sign-flip p has a floor) carry no
    information, so ``2.6109895794365684e-11`` prints as ``< 0.001``.
    """
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    if v < 0.001:
        return "< 0.001"
    return f"{v:.2g}" if v < 0.1 else f"{v:.2f}"


def fmt_ci(low, high) -> str:
    if low is None and high is None:
        return "–"
    return f"[{fmt_num(low)}, {fmt_num(high)}]"
