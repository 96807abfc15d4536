"""Conversion to plain JSON values (the one `to_jsonable`): ``stats.json``, manifests and every other JSON file round-trip."""

from __future__ import annotations

import math
from datetime import date, datetime
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd


def to_jsonable(obj: Any) -> Any:
    """Return ``obj`` as nested dicts/lists of str, int, float, bool and None.

    numpy scalars become Python scalars, arrays become lists, DataFrames become lists of
    row dicts, Series become dicts, and NaN, +-inf, ``pd.NA`` and ``NaT`` become ``None``.
    The result satisfies ``json.loads(json.dumps(x)) == x``.

    Raises:
        TypeError: for an object with no faithful JSON form (it is never silently stringified).
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, pd.DataFrame):
        return [to_jsonable(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, pd.Series):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v) for v in items]
    if isinstance(obj, (pd.Timestamp, datetime, date)):
        return obj.isoformat()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    raise TypeError(f"to_jsonable: no JSON form for {type(obj).__name__}")
