"""``intervene heads`` files: the per-head table, its manifest and the layer x head heatmap.

The measures themselves are taken in the observation stage (:mod:`interventions.observation.heads`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from interventions.observation.heads import HEAD_CLASSES, HeadClasses, HeadMeasures, classify_heads, measure_heads  # noqa: F401 - the study's API


def write_heads(result: HeadMeasures, out: str | Path, *, manifest: dict | None = None) -> Path:
    """Write ``heads.csv``, ``heads_per_trace.parquet``, ``summary.json``, ``manifest.json`` and the heatmap."""
    from interventions.report.head_figures import fig_head_heatmap
    from interventions.store import write_json_atomic, write_parquet_atomic, write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "heads.csv", result.table.to_csv(index=False))
    write_parquet_atomic(out / "heads_per_trace.parquet", result.per_trace)
    write_json_atomic(out / "summary.json", result.summary())
    if manifest is not None:
        write_json_atomic(out / "manifest.json", manifest)
    (out / "figures").mkdir(exist_ok=True)
    fig_head_heatmap(result, out / "figures" / "heads_heatmap.png")
    return out


def load_heads(out: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read back ``heads.csv`` and ``summary.json`` of an ``intervene heads`` folder."""
    out = Path(out)
    return pd.read_csv(out / "heads.csv"), json.loads((out / "summary.json").read_text())
