"""``intervene run``, ``intervene validate`` and ``intervene schema``."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import command_line, console, user_errors


@user_errors
def run_command(
    spec: Path = typer.Argument(..., help="The YAML spec to run."),
    results: Path = typer.Option(Path("results"), "--results", help="Root folder; the run goes to RESULTS/<name>/<run id>."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Exact run folder (instead of RESULTS/<name>/<run id>)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the interrupted run in this folder (same spec)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --run-dir if it already holds results."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip statistics and the report at the end."),
    no_prefix_reuse: bool = typer.Option(False, "--no-prefix-reuse",
                                         help="One full forward per condition (slower; for checking)."),
    force: bool = typer.Option(False, "--force", help="Run even when the memory estimate exceeds free memory."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
):
    """Run a spec: clean pass, every condition, measures, then statistics and report.

    Under torchrun (N processes, one model each) trace i runs on rank i % N; rank 0 merges.

    Example:

        intervene run specs/norm_scale.yaml

        torchrun --nproc_per_node 2 -m interventions.cli.main run specs/norm_scale.yaml
    """
    from ..distributed import ranks_from_env
    from ..report.tables import print_run_summary
    from ..run import run_spec
    from ..spec import load_spec

    loaded_spec = load_spec(spec)
    for w in loaded_spec.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    result = run_spec(loaded_spec, results_root=results, run_dir=resume or run_dir, resume=resume is not None,
                      overwrite=overwrite, progress=not quiet, report=False if no_report else None,
                      reuse_prefix=not no_prefix_reuse, force=force, command=command_line())
    if not ranks_from_env().is_main:  # rank 0 prints the merged run
        return
    if not quiet:
        print_run_summary(result)
        if result.stats is not None:
            from ..report.tables import print_stats

            print_stats(result.stats)
    console.print(f"wrote {result.out}" + (f" (report: {result.report})" if result.report else ""), highlight=False)


@user_errors
def validate_command(
    spec: Path = typer.Argument(..., help="The YAML spec to check."),
    no_model: bool = typer.Option(False, "--no-model", help="Skip reading the model config (offline check only)."),
):
    """Check a spec without running it: every problem on its own line, before any weights load.

    Reads the model's config (not its weights) to check layers against the model.

    Example:

        intervene validate specs/norm_scale.yaml
    """
    from ..spec import load_spec

    loaded_spec = load_spec(spec)
    if not no_model:
        from ..adapters import model_dims
        from ..errors import SpecError
        from ..models import load_config, resolve_source
        from ..spec import check_against_model

        source = resolve_source(loaded_spec.model)
        problems = check_against_model(loaded_spec, model_dims(load_config(source,
                                                                          trust_remote_code=loaded_spec.trust_remote_code)))
        if problems:
            raise SpecError(problems)
    for w in loaded_spec.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    conditions = loaded_spec.conditions()
    console.print(f"ok: {spec} ({len(conditions)} conditions, spec hash {loaded_spec.spec_hash})", highlight=False)
    for c in conditions:
        console.print(f"  {c.id}", highlight=False)


def schema_command(out: Path = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout.")):
    """Print the JSON Schema of specs (for editor autocompletion).

    Example:

        intervene schema --out spec.schema.json
    """
    import json

    from ..spec import spec_json_schema

    text = json.dumps(spec_json_schema(), indent=2)
    if out:
        out.write_text(text + "\n")
    else:
        typer.echo(text)
