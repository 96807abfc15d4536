"""``intervene stats`` and ``intervene report``: statistics and the report of finished runs."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import info, user_errors


@user_errors
def stats_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders written by `intervene run` (or results/<name>: "
                                                    "its newest complete run)."),
    as_json: bool = typer.Option(False, "--json", help="Print stats.json on stdout instead of tables."),
):
    """Fit the norm laws, per-layer effects and hypothesis verdicts; write RUN_DIR/stats.json.

    Example:

        intervene stats results/norm_scale/20261122-101500-ab12cd
    """
    from interventions.pipeline import analyze_run
    from interventions.report.tables import print_json, print_stats
    from interventions.stats.analysis import resolve_run_dir
    from interventions.store import check_run_folder

    for given in run_dirs:
        run = resolve_run_dir(given)
        check_run_folder(run)
        stats, _ = analyze_run(run, report=False)
        print_json(stats) if as_json else print_stats(stats)
        info(f"wrote {run / 'stats.json'}")


@user_errors
def report_command(
    run_dir: Path = typer.Argument(..., help="A folder written by `intervene run` (or results/<name>: its newest "
                                             "complete run), or by `intervene detect`."),
    as_json: bool = typer.Option(False, "--json", help="Print the report's path and the verdicts as JSON on stdout "
                                                        "instead of tables."),
):
    """Write report.md: for a run, verdicts, tables and paper-style figures (RUN_DIR/figures/);
    for a detect folder, the sinks found.

    Example:

        intervene report results/norm_scale          # the newest complete run of that spec
    """
    from interventions.stats.analysis import resolve_run_dir
    from interventions.store import check_run_folder, folder_kind

    run = resolve_run_dir(run_dir)
    if folder_kind(run) == "detect":
        from interventions.report.detection import render_detection_report

        path = render_detection_report(run)
        if as_json:
            from ..report.tables import print_json

            print_json({"report": path})
        info(f"wrote {path}")
        return
    check_run_folder(run)
    from interventions.pipeline import analyze_run
    from interventions.report.tables import print_json, print_stats

    stats, path = analyze_run(run, report=True)
    print_json({"report": path, "verdicts": stats.get("verdicts")}) if as_json else print_stats(stats)
    info(f"wrote {path}")
