"""Small helpers shared by the statistics modules: column checks, warning capture, units."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd

LEVEL = 0.95
"""Confidence level of every interval in this package unless a caller asks for another."""


def require_columns(df: pd.DataFrame, columns: Iterable[str], *, what: str) -> None:
    """Raise ``ValueError`` naming every column ``what`` needs that ``df`` lacks.

    A missing column is a wiring bug in the caller, not a data problem, so it is an error;
    too little data is never an error (functions report ``estimable: False`` instead).
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; got {list(df.columns)}")


@contextmanager
def capture_warnings(notes: list[str]) -> Iterator[None]:
    """Record every warning raised inside the block as a line in ``notes`` (deduplicated)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        line = f"{w.category.__name__}: {str(w.message).strip().splitlines()[0] if str(w.message).strip() else ''}"
        if line not in notes:
            notes.append(line)


def warnings_to_notes(fn: Callable) -> Callable:
    """Decorator: warnings escaping ``fn`` are appended to its result's ``notes`` instead of printed.

    A dict result gets them in ``result["notes"]``; a DataFrame in ``result.attrs["notes"]``.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        caught: list[str] = []
        with capture_warnings(caught):
            out = fn(*args, **kwargs)
        if caught and isinstance(out, dict):
            notes = out.setdefault("notes", [])
            notes.extend(n for n in caught if n not in notes)
        elif caught and isinstance(out, pd.DataFrame):
            out.attrs.setdefault("notes", []).extend(caught)
        return out

    return wrapper


def as_bool(series: pd.Series) -> pd.Series:
    """Booleans from a column that may hold bools, 0/1 or strings like ``"true"``."""
    if series.dtype == bool:
        return series
    if series.dtype == object or pd.api.types.is_string_dtype(series):
        lowered = series.astype(str).str.strip().str.lower()
        return lowered.isin(["true", "1", "yes", "y", "t"])
    return series.fillna(0).astype(float) != 0


def trace_codes(traces: pd.Series) -> tuple[np.ndarray, int]:
    """Integer codes 0..G-1 for the trace column, and G."""
    codes, uniques = pd.factorize(traces, sort=True)
    return codes.astype(np.int64), len(uniques)


SNAP_RTOL = 1e-5
"""Exact-null tolerance for fp32 runs: a per-token change ``|m - clean_m|`` at most ``SNAP_RTOL`` x
``max(|m|, |clean_m|, typical |clean_m| of the measure)`` is set to exactly 0. Prefix reuse sums
attention columns in another order than the clean pass, which leaves changes of ~1e-10 to 1e-7
(relative) at layers no edit can reach; a real effect is many orders larger. bf16 runs round
every activation to ~4e-3 relative, so pass ``snap_rtol=1e-2`` there (:func:`snap_rtol_for`)."""


def snap_rtol_for(dtype: str | None) -> float:
    """The exact-null tolerance for a run's dtype name (``"bfloat16"``/``"float16"``: 1e-2, else SNAP_RTOL)."""
    return 1e-2 if dtype and ("bfloat16" in str(dtype) or "float16" in str(dtype) or str(dtype) in ("bf16", "fp16")) \
        else SNAP_RTOL


def snap_small(diff: np.ndarray, value: np.ndarray, clean: np.ndarray, *, rtol: float = SNAP_RTOL) -> np.ndarray:
    """Differences at or below the exact-null tolerance set to exactly 0 (see :data:`SNAP_RTOL`)."""
    diff, value, clean = (np.asarray(a, dtype=float) for a in (diff, value, clean))
    finite = np.abs(clean[np.isfinite(clean) & (clean != 0)])
    typical = float(np.median(finite)) if finite.size else 0.0
    scale = np.maximum(np.maximum(np.abs(value), np.abs(clean)), typical)
    return np.where(np.abs(diff) <= rtol * scale, 0.0, diff)


# --------------------------------------------------------------------------------------------
# multiple-testing adjustment (one name per method, one call to statsmodels)
# --------------------------------------------------------------------------------------------

CORRECTIONS = ("holm", "bh", "bonferroni", "none")
"""Adjustments of a family of p-values: Holm's step-down, Benjamini-Hochberg (false discovery
rate), Bonferroni, or none."""
CORRECTION_ALIASES = {"fdr_bh": "bh"}
"""Other accepted spellings: statsmodels' own name of Benjamini-Hochberg gives the same numbers as ``bh``."""
_MULTIPLETESTS = {"holm": "holm", "bh": "fdr_bh", "bonferroni": "bonferroni"}
"""Canonical name -> statsmodels ``multipletests`` method."""


def canonical_correction(correction: str) -> str:
    """The canonical name of an adjustment (``fdr_bh`` -> ``bh``); ``ValueError`` naming the choices if unknown."""
    name = CORRECTION_ALIASES.get(correction, correction)
    if name not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; use one of {', '.join(CORRECTIONS)} "
                         f"({', '.join(f'{a} = {c}' for a, c in CORRECTION_ALIASES.items())})")
    return name


def adjust(p, correction: str) -> np.ndarray:
    """Adjusted p-values via statsmodels ``multipletests`` (Holm, Benjamini-Hochberg, Bonferroni) or unchanged.

    ``correction`` is one of :data:`CORRECTIONS` or an alias in :data:`CORRECTION_ALIASES`. NaN
    p-values (untested rows) stay NaN and do not count towards the family.
    """
    import gc

    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, dtype=float)
    method = canonical_correction(correction)
    out = p.copy()
    ok = np.isfinite(p)
    if method == "none" or not ok.any():
        return out
    # statsmodels' Holm branch calls gc.collect(), which costs about a second in a process that holds
    # torch and pandas; freezing the objects that already exist makes that collection trivial, and
    # unfreeze() puts them back right after (nothing is freed or kept that would not be otherwise).
    gc.freeze()
    try:
        out[ok] = multipletests(p[ok], method=_MULTIPLETESTS[method])[1]
    finally:
        gc.unfreeze()
    return out
