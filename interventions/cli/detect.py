"""``intervene detect``: find primary and secondary sinks in a set of traces."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import command_line, info, user_errors


@user_errors
def detect_command(
    model: str = typer.Option(..., "--model", "-m", help="Hub id, local folder, .gguf file, or testbed:planted."),
    traces: Path = typer.Option(..., "--traces", "-t", help='JSONL: {"text": ...} or {"prompt": ..., "output": ...}.'),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (must be new unless --overwrite)."),
    chat_template: bool = typer.Option(False, "--chat-template", help="Wrap prompts in the model's chat template."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Truncate longer traces (with a warning)."),
    limit: int = typer.Option(None, "--limit", help="Use only the first N traces."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N | auto (spread layers over GPUs)."),
    attn_implementation: str = typer.Option("sdpa", "--attn-implementation", "--attn", help="sdpa | eager."),
    cos_threshold: float = typer.Option(0.95, help="Cosine to the BOS state above which a state is sink-aligned."),
    norm_ratio: float = typer.Option(5.0, help="Sink norm must exceed this x the layer's median token norm."),
    min_lifetime: int = typer.Option(1, help="Drop secondary sinks living fewer layers."),
    rule: str = typer.Option("default", help="default | legacy (the paper's code: |cos|>0.9, 4<lifetime<L-15)."),
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
    from ..detect import detect
    from ..detection import DetectionConfig
    from ..errors import UserError
    from ..report.tables import detection_json, print_detection, print_json

    if out is None and resume is None:
        raise UserError("give --out DIR (a new folder) or --resume DIR (an interrupted detection)", field="out")
    if out is not None and resume is not None and out.resolve() != resume.resolve():
        raise UserError(f"--resume {resume} and --out {out} name different folders; give only --resume",
                        field="resume")
    out = resume if resume is not None else out
    if rule not in ("default", "legacy"):
        raise UserError(f"rule {rule!r} is not one of default, legacy", field="rule")
    config = DetectionConfig(cos_threshold=cos_threshold, norm_ratio=norm_ratio, min_lifetime=min_lifetime,
                             rule=rule)
    result = detect(model, traces, out, chat_template=chat_template, max_tokens=max_tokens, limit=limit,
                    dtype=dtype, device=device, attn_implementation=attn_implementation, config=config,
                    overwrite=overwrite, resume=resume is not None, progress=not quiet and not as_json,
                    command=command_line(), force=force)
    if as_json:
        print_json({"out": out, **detection_json(result)})
    elif not quiet:
        print_detection(result)
    info(f"wrote {out}")
