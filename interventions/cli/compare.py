"""``intervene compare``: our detected sinks against a reference detection in the paper's format."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import info, user_errors


@user_errors
def compare_command(
    ours: Path = typer.Argument(..., help="An `intervene detect` folder (sinks.jsonl) or `intervene run` folder "
                                          "(clean_sinks.jsonl)."),
    reference: Path = typer.Argument(..., help="Reference JSONL in the paper's format (sink_detection_*.jsonl)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for compare.json (default: OURS/compare)."),
    layer_offset: str = typer.Option("auto", "--layer-offset",
                                     help="auto (apply a constant offset when one explains the matched sinks) "
                                          "or an integer: reference layer = ours + offset."),
    secondary_types: str = typer.Option("secondary,cliff", "--secondary-types",
                                        help="Reference sink_type values counted as secondary sinks."),
    as_json: bool = typer.Option(False, "--json", help="Print compare.json's content on stdout instead of tables."),
):
    """Compare our sinks with a paper-format reference file, trace by trace.

    Per trace: sinks found in both, only ours, only theirs; level and token-id agreement; and
    whether one constant layer offset explains the levels. Writes compare.json.

    Example:

        intervene compare results/detect-qwen3 ../shared/data/secondary-sinks-paper/sink_detection_qwen3-4b-base.jsonl
    """
    from interventions.studies.compare import compare, print_compare
    from ..report.tables import print_json

    target = out if out is not None else (ours if ours.is_dir() else ours.parent) / "compare"
    result = compare(ours, reference, target, layer_offset=layer_offset,
                     secondary_types=tuple(t.strip() for t in secondary_types.split(",") if t.strip()))
    print_json(result.to_dict()) if as_json else print_compare(result)
    info(f"wrote {target / 'compare.json'}")
