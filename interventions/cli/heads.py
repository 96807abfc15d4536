"""``intervene heads``: per-(layer, head) sink measures and head classes (sink, dormant, other)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import command_line, info, user_errors


@user_errors
def heads_command(
    model: str = typer.Argument(..., help="Hub id, local folder, .gguf file, or testbed:planted."),
    traces: Path = typer.Option(None, "--traces", "-t", help='JSONL trace file (or use --generate).'),
    generate: str = typer.Option(None, "--generate", help="random_tokens | repeated_token: generated traces "
                                 "(Gu et al.'s input controls) instead of --traces."),
    length: int = typer.Option(64, "--length", help="With --generate: tokens per trace after the tokenizer's prefix."),
    n: int = typer.Option(20, "--n", help="With --generate: number of traces."),
    seed: int = typer.Option(0, "--seed", help="With --generate: seed of the generator."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (must be new unless --overwrite)."),
    chat_template: bool = typer.Option(False, "--chat-template", help="Wrap prompts in the model's chat template."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Truncate longer traces (with a warning)."),
    limit: int = typer.Option(None, "--limit", help="Use only the first N traces."),
    epsilon: float = typer.Option(0.3, "--epsilon", help="Sink head: alpha on the sink key above this (Gu et al.)."),
    dormant_ratio: float = typer.Option(0.05, "--dormant-ratio",
                                        help="Dormant: a sink head whose output norm is below this x the median "
                                             "residual norm entering its layer."),
    key_position: int = typer.Option(0, "--key-position", help="The sink key whose attention share is alpha."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (classes, shares) as JSON on stdout."),
):
    """Per-head sink measures: alpha (attention share of the sink key), Sink-epsilon, entropy, output norm, classes.

    Examples:

        intervene heads testbed:planted --generate random_tokens --n 8 --out results/heads-demo

        intervene heads .cache/real/smollm2-135m-instruct --traces traces.jsonl --limit 4 --out results/heads-smol
    """
    import time

    from interventions.errors import UserError
    from interventions.store import check_output_dir, package_versions, tool_revision
    from interventions.studies.heads import HeadClasses, measure_heads, write_heads

    if (traces is None) == (generate is None):
        raise UserError("give exactly one of --traces FILE or --generate random_tokens|repeated_token", field="traces")
    if not 0 < epsilon < 1:
        raise UserError(f"--epsilon is {epsilon}; it must lie in (0, 1)", field="epsilon")
    if dormant_ratio < 0:
        raise UserError(f"--dormant-ratio is {dormant_ratio}; it must be >= 0", field="dormant_ratio")
    source = None
    if generate is not None:
        from interventions.spec.trace_sources import GeneratedTraces

        source = GeneratedTraces(generate, length=length, n=n, seed=seed)  # checks its fields before loading
    check_output_dir(out, overwrite=overwrite)
    from interventions.models.load import load_model

    started = time.time()
    loaded = load_model(model, dtype=dtype, device=device)
    if source is not None:
        from interventions.spec.traces import generate_traces

        trace_list = generate_traces(loaded.tokenizer, source)
        label = f"generate={source.generate} length={source.length} n={source.n} seed={source.seed}"
    else:
        from interventions.spec.traces import load_traces

        trace_list = load_traces(traces, loaded.tokenizer, limit=limit, max_tokens=max_tokens,
                                 chat_template=chat_template)
        label = str(traces)
    classes = HeadClasses(epsilon=epsilon, dormant_ratio=dormant_ratio, key_position=key_position)
    result = measure_heads(loaded, trace_list, classes=classes, progress=not (quiet or as_json), traces_label=label)
    manifest = {"kind": "heads", "command": command_line(), "model": loaded.describe(), "traces": label,
                "n_traces": len(trace_list), "classes": result.summary()["classes"],
                "versions": package_versions(), "tool": tool_revision(), "seconds": round(time.time() - started, 2)}
    write_heads(result, out, manifest=manifest)
    s = result.summary()
    if as_json:
        from ..report.tables import print_json

        print_json({"out": out, **s})
    elif not quiet:  # results on stdout
        from ..report.tables import out as stdout

        stdout.print(f"{result!r}\nshares: sink {s['shares']['sink']:.2f}, dormant {s['shares']['dormant']:.2f}, "
                     f"other {s['shares']['other']:.2f}", markup=False)
    info(f"wrote {out}")
