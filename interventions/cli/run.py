"""``intervene run``, ``intervene validate`` and ``intervene schema``."""

from __future__ import annotations

from pathlib import Path

import typer

from interventions.errors import UserError
from interventions.report.tables import out

from .common import command_line, console, info, user_errors


@user_errors
def run_command(
    spec: Path = typer.Argument(..., help="The YAML spec to run."),
    results: Path = typer.Option(Path("results"), "--results", help="Root folder; the run goes to RESULTS/<name>/<run id>."),
    out: Path = typer.Option(None, "--out", "--run-dir", "-o",
                             help="Exact run folder (instead of RESULTS/<name>/<run id>)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the interrupted run in this folder (same spec)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it already holds results."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip report.md and its figures (stats.json is still "
                                                               "written)."),
    no_prefix_reuse: bool = typer.Option(False, "--no-prefix-reuse",
                                         help="One full forward per condition (slower; for checking)."),
    force: bool = typer.Option(False, "--force", help="Run even when the memory estimate exceeds free memory."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary and verdicts as one JSON document "
                                                        "on stdout instead of tables."),
):
    """Run a spec: clean pass, every condition, measures, then statistics and report.

    Tables go to stdout, progress and warnings to stderr. Under torchrun (N processes, one
    model each) trace i runs on rank i % N; rank 0 merges.

    Example:

        intervene run specs/norm_scale.yaml

        torchrun --nproc_per_node 2 -m interventions.cli.main run specs/norm_scale.yaml
    """
    from interventions.models.dependencies import require_for_run
    from interventions.spec import load_spec

    if resume is not None and out is not None and resume.resolve() != out.resolve():
        raise UserError(f"--resume {resume} and --out {out} name different folders; give only --resume",
                        field="resume")
    loaded_spec = load_spec(spec)
    require_for_run(report=not no_report)  # before the imports below, which need pyvene
    from interventions.pipeline import run_spec
    from interventions.report.tables import print_json, print_run_summary, print_stats
    from interventions.run.distributed import ranks_from_env

    for w in loaded_spec.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    result = run_spec(loaded_spec, results_root=results, run_dir=resume or out, resume=resume is not None,
                      overwrite=overwrite, progress=not quiet and not as_json, report=False if no_report else None,
                      reuse_prefix=not no_prefix_reuse, force=force, command=command_line())
    if not ranks_from_env().is_main:  # rank 0 prints the merged run
        return
    if no_report and result.manifest.get("status") == "tables" and loaded_spec.report:
        # --no-report skips only report.md and figures: the statistics are computed (and the run is complete)
        from interventions.pipeline import analyze_run
        from interventions.spec.measures import statistics_measures

        if all(m in loaded_spec.measures for m in statistics_measures()):
            result.stats, _ = analyze_run(result.out, progress=not quiet and not as_json, report=False)
    if as_json:
        print_json({"out": result.out, "report": result.report, "summary": result.summary,
                    "verdicts": (result.stats or {}).get("verdicts")})
    elif not quiet:
        print_run_summary(result)
        if result.stats is not None:
            print_stats(result.stats)
    info(f"wrote {result.out}" + (f" (report: {result.report})" if result.report else ""))


@user_errors
def validate_command(
    spec: Path = typer.Argument(..., help="The YAML spec to check."),
    no_model: bool = typer.Option(False, "--no-model", help="Check the spec file alone: skip the model's config, "
                                                            "tokenizer and traces (offline check)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result (ok, conditions, warnings) as JSON on "
                                                        "stdout."),
):
    """Check a spec without running it: every problem on its own line, before any weights load.

    Reads what a run reads before its weights (the model's config and tokenizer, the traces,
    the device) and runs the same checks, so "ok" means `intervene run` gets past them.

    Example:

        intervene validate specs/norm_scale.yaml
    """
    from interventions.spec import load_spec

    loaded_spec = load_spec(spec)
    warnings = []
    if not no_model:
        from interventions.spec.load import check_inputs

        checked = check_inputs(loaded_spec)
        warnings += [w for tr in checked.traces for w in tr.warnings]
    warnings += list(loaded_spec.warnings)
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    conditions = loaded_spec.conditions()
    if as_json:
        from ..report.tables import print_json

        print_json({"ok": True, "spec": spec, "spec_hash": loaded_spec.spec_hash,
                    "conditions": [c.id for c in conditions], "warnings": warnings})
        return
    out.print(f"ok: {spec} ({len(conditions)} conditions, spec hash {loaded_spec.spec_hash})", markup=False)
    for c in conditions:
        out.print(f"  {c.id}", markup=False)


def schema_command(out: Path = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout.")):
    """Print the JSON Schema of specs (for editor autocompletion).

    Example:

        intervene schema --out spec.schema.json
    """
    import json

    from interventions.spec import spec_json_schema

    text = json.dumps(spec_json_schema(), indent=2)
    if out:
        out.write_text(text + "\n")
    else:
        typer.echo(text)
