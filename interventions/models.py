"""Loading any Hugging Face decoder-only causal LM: hub id, local folder, local .gguf file,
or a built-in testbed (``testbed:planted``), all through the same path.

The config is read and checked (architecture in the adapter table, device available) before
any weights load, so a wrong model costs a second, not a download.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapters import Adapter, adapter_for, model_dims
from .attention import BASE_IMPLEMENTATIONS, make_hookable
from .errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda", "auto")
TESTBED_PREFIX = "testbed:"


@dataclass
class ModelSource:
    """Where a model comes from, resolved before loading."""

    given: str
    """The string the user gave (hub id, folder, .gguf file or testbed:NAME)."""
    path: str
    """What ``from_pretrained`` receives: a hub id or a local folder."""
    gguf_file: str | None = None
    revision: str | None = None
    is_local: bool = False


@dataclass
class LoadedModel:
    """A model ready for observation and interventions, with everything a manifest records."""

    model: torch.nn.Module
    tokenizer: object
    adapter: Adapter
    source: ModelSource
    dtype: str
    device: str
    attn_implementation: str
    identity: dict = field(default_factory=dict)

    @property
    def dims(self) -> dict[str, int]:
        return model_dims(self.model.config)

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def describe(self) -> dict:
        """Manifest entry: what was loaded, from where, how."""
        return {
            "source": self.source.given,
            "path": self.source.path,
            "gguf_file": self.source.gguf_file,
            "model_type": self.adapter.model_type,
            "dtype": self.dtype,
            "device": self.device,
            "attn_implementation": self.attn_implementation,
            **self.identity,
            **{f"n_{k}": v for k, v in self.dims.items()},
        }


def resolve_source(given: str, *, revision: str | None = None) -> ModelSource:
    """Turn what the user typed into a loadable source, building a testbed model if asked."""
    if given.startswith(TESTBED_PREFIX):
        from .testbed import testbed_folder

        folder = testbed_folder(given[len(TESTBED_PREFIX):])
        return ModelSource(given, str(folder), is_local=True)
    p = Path(given).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"GGUF file {given} does not exist", field="model")
        return ModelSource(given, str(p.parent), gguf_file=p.name, is_local=True)
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{given} is a file; give a model folder, a .gguf file or a hub id", field="model")
        if not (p / "config.json").is_file():
            raise UserError(f"model folder {given} has no config.json; point at the folder holding config.json "
                            "and the weights", field="model")
        return ModelSource(given, str(p), is_local=True)
    if given.startswith((".", "/", "~")) or given.count("/") > 1:
        raise UserError(f"model folder {given} does not exist", field="model")
    return ModelSource(given, given, revision=revision)


def load_config(source: ModelSource, *, trust_remote_code: bool = False):
    """Read only the config (fast, no weights) and check the architecture is supported."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            source.path, gguf_file=source.gguf_file, revision=source.revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read the config of {source.given!r} ({first}); give a local folder, "
                        "a .gguf file, testbed:planted, or a hub id reachable from this machine",
                        field="model") from None
    adapter_for(config)
    return config


def _folder_identity(folder: Path) -> dict:
    """A content hash of a local model folder: config, tokenizer files, and weight names/sizes."""
    digest = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        digest.update(f.name.encode())
        if f.suffix in (".json", ".txt", ".model", ".jinja"):
            digest.update(f.read_bytes())
        else:  # weights: size plus the first MiB keeps this fast on multi-GB files
            digest.update(str(f.stat().st_size).encode())
            with f.open("rb") as fh:
                digest.update(fh.read(1 << 20))
    return {"folder_sha256": digest.hexdigest()[:16]}


def check_device(device: str, dtype: str) -> None:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UserError(f"device {device!r} is not one of {', '.join(DEVICES)} (or cuda:N)", field="device")
    if (device.startswith("cuda") or device == "auto") and not torch.cuda.is_available() and device != "auto":
        raise UserError(f"device {device!r} was asked for but no CUDA GPU is visible; use device: cpu", field="device")
    if dtype != "auto" and dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}", field="dtype")


def load_model(
    model: str,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    """Load a decoder-only causal LM for observation and interventions.

    Args:
        model: hub id (``Qwen/Qwen2.5-Math-1.5B``), local folder, local ``.gguf`` file, or
            ``testbed:planted`` / ``testbed:planted-llama``.
        dtype: ``auto`` (float32 on CPU, the checkpoint's dtype on GPU), ``float32``,
            ``bfloat16`` or ``float16``.
        device: ``cpu``, ``cuda``/``cuda:N``, or ``auto`` (``device_map="auto"``: layers spread
            over every visible GPU by accelerate).
        attn_implementation: ``sdpa`` (default) or ``eager``; both are wrapped so sink scores
            and attention masking work with either.
        trust_remote_code: run code shipped with the checkpoint; off unless asked.
        revision: hub revision (branch, tag or commit) to pin.
    """
    if attn_implementation not in BASE_IMPLEMENTATIONS:
        raise UserError(f"attention implementation {attn_implementation!r} cannot be hooked for sink scores "
                        f"or masking; use one of {', '.join(BASE_IMPLEMENTATIONS)}", field="attn_implementation")
    check_device(device, dtype)
    source = resolve_source(model, revision=revision)
    config = load_config(source, trust_remote_code=trust_remote_code)
    adapter = adapter_for(config)
    if trust_remote_code:
        warnings.warn(f"trust_remote_code is on: code shipped with {model} will run", stacklevel=2)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own rich progress is the one to watch

    on_gpu = device != "cpu"
    if dtype == "auto":
        torch_dtype = getattr(config, "torch_dtype", None) if on_gpu else torch.float32
        torch_dtype = torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.float32
    else:
        torch_dtype = DTYPES[dtype]
    common = dict(gguf_file=source.gguf_file, revision=source.revision, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **common)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot load the tokenizer of {model!r} ({str(exc).splitlines()[0]}); the model folder "
                        "needs tokenizer files (tokenizer.json or vocab/merges)", field="model") from None
    hf_model = AutoModelForCausalLM.from_pretrained(
        source.path,
        dtype=torch_dtype,
        attn_implementation=attn_implementation,
        device_map="auto" if device == "auto" else None,
        **common,
    )
    if device != "auto":
        hf_model.to(device)
    hf_model.eval()
    hf_model.requires_grad_(False)
    make_hookable(hf_model)
    identity = _folder_identity(Path(source.path)) if source.is_local else {
        "revision": getattr(hf_model.config, "_commit_hash", None) or source.revision}
    return LoadedModel(
        model=hf_model,
        tokenizer=tokenizer,
        adapter=adapter,
        source=source,
        dtype=str(torch_dtype).replace("torch.", ""),
        device=device,
        attn_implementation=attn_implementation,
        identity=identity,
    )


def describe_config(config) -> str:
    return json.dumps(model_dims(config))
