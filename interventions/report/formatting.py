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


def lack_of_fit_text(lof: dict) -> str:
    """One phrase for the log-linear lack-of-fit check (``stats.norm_score.lack_of_fit``); "" when it did not run.

    A check that is not estimable prints its reason and no p.
    """
    if not lof.get("run"):
        return ""
    if not lof.get("estimable"):
        return lof.get("verdict") or f"not estimable: {lof.get('reason')}"
    return (f"{lof.get('verdict')}; isotonic vs log-linear: SSE share removed {fmt_num(lof.get('statistic'))}, "
            f"{lof.get('isotonic_blocks')} monotone blocks, wild trace bootstrap p {fmt_p(lof.get('p'))}, "
            f"B = {lof.get('B')}, {lof.get('n_rows')} rows / {lof.get('n_traces')} traces")


def _missing(value) -> bool:
    try:
        return value is None or not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def fmt_ci(low, high) -> str:
    """``[low, high]``; a missing bound is an unbounded side (a sign-flip interval that the test
    cannot close at this number of traces), so it prints as -inf / inf, never as a number."""
    if _missing(low) and _missing(high):
        return "–"
    return f"[{'-inf' if _missing(low) else fmt_num(low)}, {'inf' if _missing(high) else fmt_num(high)}]"


NOT_TESTED_PRE_EDIT = "not tested (before the edit)"
EXACT_ZERO = "exact zero"


def inference_cells(d: dict, *, estimate: str = "estimate", ci: tuple[str, str] = ("ci_low", "ci_high"),
                    p: str = "p", exact_zero: str = "exact_zero", degenerate: str = "degenerate",
                    reason: str = "degenerate_reason", pre_edit: str = "pre_edit") -> tuple[str, str, str]:
    """``(estimate, CI, p)`` cells of one estimate in a stats dict, honest about what has no inference.

    - ``pre_edit`` (a layer no edit can reach): the change, ``not tested (before the edit)``, no p;
    - ``exact_zero``: ``0``, ``exact zero``, no p (a CI or p on an exact zero would be noise);
    - ``degenerate``: the estimate, ``degenerate: <reason>``, no p;
    - no CI at all but a p (a sign-flip test with too few traces to close its interval):
      ``unbounded``; otherwise ``[low, high]`` and the p-value.

    Whatever the dict holds in its CI and p keys, the first three cases never print them.
    """
    value = d.get(estimate)
    if d.get(pre_edit):
        return fmt_num(value), NOT_TESTED_PRE_EDIT, "–"
    if d.get(exact_zero):
        return "0", EXACT_ZERO, "–"
    if d.get(degenerate):
        return fmt_num(value), f"degenerate: {d.get(reason) or 'no reason recorded'}", "–"
    low, high = d.get(ci[0]), d.get(ci[1])
    if not _missing(low) and not _missing(high) and float(low) == float(high):
        # a zero-width interval is no interval: on an estimate of exactly 0 it is an unflagged exact zero,
        # otherwise a collapsed (degenerate) variance; neither gets a CI or p
        if not _missing(value) and float(value) == 0.0:
            return "0", EXACT_ZERO, "–"
        return fmt_num(value), "degenerate: zero-width interval", "–"
    if _missing(low) and _missing(high):
        ci_text = "unbounded" if not _missing(d.get(p)) else "–"
    else:
        ci_text = fmt_ci(low, high)
    return fmt_num(value), ci_text, fmt_p(d.get(p))


def inference_text(d: dict, **keys) -> str:
    """One phrase for running text: ``1.2 [0.9, 1.5], p 0.003``, ``0 (exact zero)``,
    ``1.5 (degenerate: <reason>)`` or ``0.02 (not tested (before the edit))``."""
    value, ci, p = inference_cells(d, **keys)
    if p == "–" and not ci.startswith("["):
        return f"{value} ({ci})" if ci not in ("–",) else value
    p_text = "" if p == "–" else f", p {p}"
    return f"{value} {ci}{p_text}" if ci.startswith("[") else f"{value} (CI {ci}){p_text}"


def md_cell(value) -> str:
    """A markdown table cell: ``None`` is empty, ``|`` is escaped and a line break becomes a space."""
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table as lines (header, rule, one line per row, then a blank line); cells through :func:`md_cell`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]
