"""The pipeline end to end: a spec run, then its statistics and report (what ``intervene run`` does).

The stages below know nothing of the ones above them: :mod:`interventions.run` writes a run folder,
:mod:`interventions.stats` reads it into ``stats.json``, :mod:`interventions.report` renders
``report.md``. This module joins them, so a run can finish with its statistics without the run
stage importing the statistics stage.
"""

from __future__ import annotations

from pathlib import Path


def analyze_run(run_dir, *, progress: bool = True, report: bool = True, seed: int | None = None):
    """Write ``stats.json`` (and ``report.md`` with figures) for ``run_dir``; returns ``(stats, report_path)``.

    ``run_dir`` is a run folder, or a spec's results folder (``results/<name>``: its newest complete run).
    """
    from .stats.analysis import write_stats

    run, tables, stats = write_stats(run_dir, seed=seed)
    report_path = None
    if report:
        from .report.render import render_report

        report_path = render_report(run, tables, stats)
    return stats, report_path


def run_spec(spec, *, results_root: Path | str | None = None, run_dir: Path | str | None = None,
             overwrite: bool = False, resume: bool = False, progress: bool = True, report: bool | None = None,
             reuse_prefix: bool = True, force: bool = False, command: str = "interventions.run_spec(...)"):
    """Run every condition of ``spec``, then its statistics and report: see :func:`interventions.run.job.run_spec`.

    Example:
        >>> from interventions import run_spec
        >>> result = run_spec("specs/norm_scale.yaml")                      # in memory
        >>> result = run_spec("specs/norm_scale.yaml", results_root="results")  # results/norm_scale/<run id>/
        >>> result.summary
    """
    from .run.job import run_spec as run_conditions

    return run_conditions(spec, results_root=results_root, run_dir=run_dir, overwrite=overwrite, resume=resume,
                          progress=progress, report=report, reuse_prefix=reuse_prefix, force=force, command=command,
                          analyze=analyze_run)
