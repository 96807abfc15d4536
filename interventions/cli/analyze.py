"""``intervene stats`` and ``intervene report``: statistics and the report of finished runs."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, user_errors


@user_errors
def stats_command(run_dirs: list[Path] = typer.Argument(..., help="Run folders written by `intervene run` (or "
                                                                   "results/<name>: its newest complete run).")):
    """Fit the norm laws, per-layer effects and hypothesis verdicts; write RUN_DIR/stats.json.

    Example:

        intervene stats results/norm_scale/20261122-101500-ab12cd
    """
    from ..analysis import analyze_run, resolve_run_dir
    from ..report.tables import print_stats

    for given in run_dirs:
        run = resolve_run_dir(given)
        stats, _ = analyze_run(run, report=False)
        print_stats(stats)
        console.print(f"wrote {run / 'stats.json'}", highlight=False)


@user_errors
def report_command(run_dir: Path = typer.Argument(..., help="A run folder written by `intervene run` (or "
                                                               "results/<name>: its newest complete run).")):
    """Write RUN_DIR/report.md with verdicts, tables and paper-style figures (RUN_DIR/figures/).

    Example:

        intervene report results/norm_scale          # the newest complete run of that spec
    """
    from ..analysis import analyze_run
    from ..report.tables import print_stats

    stats, path = analyze_run(run_dir, report=True)
    print_stats(stats)
    console.print(f"wrote {path}", highlight=False)
