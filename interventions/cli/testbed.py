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

    from ..errors import UserError
    from ..testbed.planted import build_planted, planted_traces
    from ..traces import write_traces

    if arch not in ("qwen2", "llama"):
        raise UserError(f"arch {arch!r} is not one of qwen2, llama", field="arch")
    truth = build_planted(out, arch=arch, seed=seed)
    if traces:
        write_traces(planted_traces(truth, traces, seed=seed), out / "traces.jsonl")
    console.print_json(json.dumps({"folder": str(out), "onset_layer": truth.onset_layer, "l_start": truth.l_start,
                                   "triggers": {t["token"]: t["lifetime"] for t in truth.triggers}}))
