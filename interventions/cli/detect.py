"""``intervene detect``: find primary and secondary sinks in a set of traces."""

from __future__ import annotations

from pathlib import Path

import typer

from interventions.progress import warn

from .common import command_line, info, user_errors


@user_errors
def detect_command(
    model: str = typer.Option(..., "--model", "-m", help="Hub id, local folder, .gguf file, or testbed:planted."),
    traces: Path = typer.Option(..., "--traces", "-t", help='JSONL: {"text": ...} or {"prompt": ..., "output": ...}.'),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (must be new unless --overwrite)."),
    chat_template: bool = typer.Option(False, "--chat-template", help="Wrap prompts in the model's chat template."),
    prepend_bos: str = typer.Option("auto", "--prepend-bos",
                                    help="auto (encode as the tokenizer does) | always | never."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Truncate longer traces (with a warning)."),
    limit: int = typer.Option(None, "--limit", help="Use only the first N traces."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N | auto (spread layers over GPUs)."),
    attn_implementation: str = typer.Option("sdpa", "--attn-implementation", "--attn", help="sdpa | eager."),
    cos_threshold: float = typer.Option(0.95, help="Cosine to the reference primary sink's state above which a "
                                                   "state is sink-aligned."),
    norm_ratio: float = typer.Option(None, help="Optional norm gate: an aligned state must also exceed this x the "
                                                "layer's median norm (default: no gate; the ratio is reported)."),
    massive_ratio: float = typer.Option(5.0, help="Primary sink: norm above this x the layer median from its onset "
                                                  "through the end of the network."),
    reference: str = typer.Option("auto", help="auto (the primary sink with the earliest onset) | a position."),
    min_lifetime: int = typer.Option(1, help="Drop secondary sinks living fewer layers."),
    rule: str = typer.Option("default", help="default (cos > threshold, longest run) | paper-code (the paper's "
                                             "released detector)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    resume: Path = typer.Option(None, "--resume", help="Continue the interrupted detection in this folder."),
    force: bool = typer.Option(False, "--force", help="Run even when the memory estimate exceeds free memory."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables."),
    as_json: bool = typer.Option(False, "--json", help="Print counts, levels and tokens as JSON on stdout."),
):
    """Detect sinks: per trace, primary sinks and secondary sinks with their levels (l_start, lifetime).

    Example:

        intervene detect --model testbed:planted --traces traces.jsonl --out results/detect-demo
    """
    from interventions.detection.job import detect
    from interventions.detection.rules import DetectionConfig
    from interventions.errors import UserError
    from interventions.report.tables import detection_json, print_detection, print_json

    if out is None and resume is None:
        raise UserError("give --out DIR (a new folder) or --resume DIR (an interrupted detection)", field="out")
    if out is not None and resume is not None and out.resolve() != resume.resolve():
        raise UserError(f"--resume {resume} and --out {out} name different folders; give only --resume",
                        field="resume")
    out = resume if resume is not None else out
    if rule not in ("default", "paper-code", "legacy"):
        raise UserError(f"rule {rule!r} is not one of default, paper-code", field="rule")
    if rule == "legacy":
        warn("--rule legacy is deprecated; it now means paper-code")
    try:
        config = DetectionConfig(cos_threshold=cos_threshold, norm_ratio=norm_ratio, min_lifetime=min_lifetime,
                                 rule=rule, massive_ratio=massive_ratio, reference=reference)
    except ValueError as exc:
        raise UserError(f"{exc}; use --reference auto or a position such as 0", field="reference") from None
    result = detect(model, traces, out, chat_template=chat_template, prepend_bos=prepend_bos,
                    max_tokens=max_tokens, limit=limit,
                    dtype=dtype, device=device, attn_implementation=attn_implementation, config=config,
                    overwrite=overwrite, resume=resume is not None, progress=not quiet and not as_json,
                    command=command_line(), force=force)
    if as_json:
        print_json({"out": out, **detection_json(result)})
    elif not quiet:
        print_detection(result)
    info(f"wrote {out}")
