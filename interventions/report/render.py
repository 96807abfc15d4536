"""report.md and its figures (placeholder until the figures module lands)."""

from __future__ import annotations

from pathlib import Path


def render_report(run: Path, tables: dict, stats: dict) -> Path:
    from ..store import write_text_atomic

    lines = [f"# Run {stats.get('run_id')} ({stats.get('spec_name')})", "", "| hypothesis | verdict |", "|---|---|"]
    for key, v in stats.get("verdicts", {}).items():
        lines.append(f"| {key} | {v.get('verdict')} |")
    path = run / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
