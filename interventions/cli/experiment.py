"""``intervene experiment``: run one study of experiments/ (or all of them) and check its expectations."""

from __future__ import annotations

from pathlib import Path

import typer

from interventions.errors import UserError

from .common import console, user_errors


@user_errors
def experiment_command(
    folder: Path = typer.Argument(..., help="An experiments/<name> folder, or experiments/ to run every study."),
    results: Path = typer.Option(Path("results"), "--results",
                                 help="Root folder; each study goes to RESULTS/experiments/<name>/<run id>."),
    real: bool = typer.Option(False, "--real", help="Run the study's real-model configuration instead of the "
                                                    "planted model (needs the weights; a GPU in practice)."),
    config: str = typer.Option(None, "--config", help="Which real configuration (default: the first listed)."),
    negative: bool = typer.Option(False, "--negative", help="Run the study's negative control (a testbed where its "
                                                            "claim is false by construction) instead of the "
                                                            "positive testbed; studies without one are skipped."),
    limit: int = typer.Option(None, "--limit", help="Use only the first N traces (overrides the study's setting)."),
    threads: int = typer.Option(None, "--threads",
                                help="torch CPU threads; default 1 for the planted model (fastest for a tiny "
                                     "model), torch's own for real models."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip report.md and figures of spec runs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Run a study end to end and compare what it measures with what it expects.

    Exits 1 when a planted-model expectation fails (real-model expectations are the paper's
    results: a mismatch is reported, not an error).

    Example:

        intervene experiment experiments/ablation

        intervene experiment experiments/ablation --negative

        intervene experiment experiments/sink_levels --real --config qwen3-4b-base
    """
    from interventions.studies.experiments import find_experiments, load_experiment, print_experiment, run_experiment

    if negative and real:
        raise UserError("--negative runs a testbed, --real a real model: give one of them", field="--negative")
    failed = []
    for path in find_experiments(folder):
        exp = load_experiment(path)
        if negative and not exp.negative:
            console.print(f"[dim]{exp.name}: no negative control, skipped[/dim]", highlight=False)
            continue
        mode = (config or True) if real else False
        n_threads = threads if threads is not None else (None if real else 1)
        result = run_experiment(exp, results_root=results, real=mode, overrides={"limit": limit} if limit else None,
                                progress=not quiet, report=not no_report, threads=n_threads, negative=negative)
        print_experiment(result)
        if not result.passed:
            failed.append(result)
    if failed:
        names = ", ".join(r.name for r in failed)
        if real:
            console.print(f"[yellow]differs from the paper:[/yellow] {names}", highlight=False)
        else:
            what = "negative-control" if negative else "planted"
            console.print(f"[red]{what} expectations failed:[/red] {names}", highlight=False)
            raise typer.Exit(1)
