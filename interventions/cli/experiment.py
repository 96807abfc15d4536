"""``intervene experiment``: run one study of experiments/ (or all of them) and check its expectations."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from .common import console, info, user_errors


@user_errors
def experiment_command(
    folder: Path = typer.Argument(..., help="An experiments/<name> folder, or experiments/ to run every study."),
    results_root: Path = typer.Option(Path("results"), "--results",
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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
    as_json: bool = typer.Option(False, "--json", help="Print every study's checks and results as one JSON "
                                                        "document on stdout instead of tables."),
):
    """Run a study end to end and compare what it measures with what it expects.

    Given experiments/, it runs every study: first the testbed studies, whose expectations decide
    the exit code (1 when one fails), then the real-model studies (primary_sink_checks,
    streaming_sinks), whose expectations are the literature's results: a mismatch is a finding,
    printed in its own section, never a failure. A real-model study runs only on the models that
    are cached (`intervene testbed fetch-gguf`); without any, it is skipped with one line.
    Tables go to stdout, progress to stderr.

    Example:

        intervene experiment experiments/

        intervene experiment experiments/ablation --negative

        intervene experiment experiments/sink_levels --real --config qwen3-4b-base
    """
    from interventions.studies.experiments import find_experiments, load_experiment, print_experiment, run_experiment
    from ..report.tables import out, print_json

    if negative and real:
        raise UserError("--negative runs a testbed, --real a real model: give one of them", field="--negative")
    studies = [load_experiment(path) for path in find_experiments(folder)]  # every file checked before any run
    # testbed studies first (they decide the exit code), then the real-model ones (findings)
    studies.sort(key=lambda exp: bool(real) or (exp.real_only and not negative))
    results, skipped = [], []
    section = None
    for exp in studies:
        if negative and not exp.negative:
            skipped.append({"name": exp.name, "reason": "no negative control"})
            info(f"{exp.name}: no negative control, skipped")
            continue
        mode = (config or True) if real else False
        finding = bool(real) or (exp.real_only and not negative)
        missing = exp.missing_models(mode) if finding else {}
        if missing and (real or len(missing) == len(exp.real)):
            reason = f"its models are not cached ({', '.join(missing)}); `intervene testbed fetch-gguf` caches them"
            skipped.append({"name": exp.name, "reason": reason})
            console.print(f"[yellow]{exp.name}: skipped, {reason}[/yellow]", highlight=False, soft_wrap=True)
            continue
        if not (quiet or as_json) and section != finding:
            section = finding
            out.print("Real-model studies: findings, compared with the literature (never a failure)\n"
                      if finding else "Testbed studies: expectations (a failure exits 1)\n", markup=False)
        n_threads = threads if threads is not None else (None if real else 1)
        result = run_experiment(exp, results_root=results_root, real=mode,
                                overrides={"limit": limit} if limit else None, progress=not (quiet or as_json),
                                report=not no_report, threads=n_threads, negative=negative)
        results.append(result)
        if not (quiet or as_json):
            print_experiment(result)
    failed = [r.name for r in results if not r.passed and not r.finding]
    differs = [r.name for r in results if not r.passed and r.finding]
    if as_json:
        print_json({"expectations": [r.to_json() for r in results if not r.finding],
                    "findings": [r.to_json() for r in results if r.finding], "skipped": skipped,
                    "failed": failed, "differs_from_literature": differs, "exit_code": 1 if failed else 0})
    elif not quiet:
        what = "negative-control" if negative else "testbed"
        n_tested = sum(not r.finding for r in results)
        out.print(f"{what} studies: {n_tested - len(failed)} of {n_tested} as expected"
                  + (f"; failed: {', '.join(failed)}" if failed else "")
                  + (f"; real-model findings differing from the literature: {', '.join(differs)}" if differs else "")
                  + (f"; skipped: {', '.join(s['name'] for s in skipped)}" if skipped else ""), markup=False)
    if failed:
        console.print(f"[red]{'negative-control' if negative else 'testbed'} expectations failed:[/red] "
                      f"{', '.join(failed)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
