"""``intervene reproduce``: the paper's detection, observational analyses and four causal checks on one model."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, user_errors


@user_errors
def reproduce_command(
    model: str = typer.Argument(..., help="Hub id, local HF folder, .gguf file, or testbed:planted."),
    traces: str = typer.Option(None, "--traces", help="JSONL trace file ({\"text\"} or {\"prompt\", \"output\"} "
                                                      "lines); leave out for a testbed model's own traces."),
    out: Path = typer.Option(..., "--out", help="Study folder: report.md, reproduce.json, figures/, detect/, "
                                                "origin/, specs/, runs/<spec>/."),
    chat_template: bool = typer.Option(False, "--chat-template", help="Wrap each prompt in the chat template."),
    resume: bool = typer.Option(False, "--resume", help="Reuse the finished phases in --out (same settings) and "
                                                        "resume an interrupted run."),
    max_traces: int = typer.Option(8, "--max-traces", help="Use the first N traces."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Cut each trace to T tokens (0: whole traces)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N, auto."),
    seed: int = typer.Option(0, "--seed", help="Seed of the planted traces and the matched controls."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: 1 for a testbed model, "
                                                        "torch's own otherwise)."),
    phase: list[str] = typer.Option(None, "--phase", help="Run only these phases (detect, origin, H1, H2, H3, H4, "
                                                          "report); repeat the option."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """The paper on MODEL in one command: Tables 1-2, Figs. 2-5, 7, 8 and H1-H4 into one report.md.

    Prints a time estimate before it starts (a timed clean forward x the number of forwards).

    Example:

        intervene reproduce testbed:planted --out results/reproduce/planted

        intervene reproduce .cache/real/smollm2-135m-instruct --traces
        ../shared/data/secondary-sinks-paper/aime24_traces_qwen3-4b-base.jsonl --out results/reproduce/smollm2
    """
    from interventions.studies.reproduce import PHASES, reproduce

    n_threads = threads if threads is not None else (1 if model.startswith("testbed:") else None)
    result = reproduce(model, traces, out, chat_template=chat_template, max_traces=max_traces,
                       max_tokens=max_tokens or None, resume=resume, dtype=dtype, device=device, seed=seed,
                       threads=n_threads, progress=not quiet, phases=tuple(phase) if phase else PHASES,
                       command="intervene reproduce " + model)
    for r in result.record.get("verdicts", []):
        if "key" in r:
            u = r.get("units") or {}
            console.print(f"  {r['key']}: {r['verdict']} (effect {r.get('effect')}, vs {r.get('compared_with')}, "
                          f"{r.get('n_traces')} traces, {u.get('n_independent')} distinct prefixes)", highlight=False)
        else:
            console.print(f"  {r['hypothesis']}: {r['line']}", highlight=False)
    console.print(f"wrote {result.report} ({result.seconds / 60:.1f} min)", highlight=False)
