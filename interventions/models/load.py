"""Loading any Hugging Face decoder-only causal LM: hub id, local folder, local .gguf file,
or a built-in testbed (``testbed:planted``), all through the same path.

The config is read and checked (architecture in the adapter table, device available) before
any weights load, so a wrong model costs a second, not a download.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from interventions.errors import UserError, missing_model_fix

from .adapters import Adapter, adapter_for, model_dims
from .attention import BASE_IMPLEMENTATIONS, make_hookable

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda", "auto")
TESTBED_PREFIX = "testbed:"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt", "tekken.json")
"""A local model folder needs one of these (transformers 5 silently builds an empty tokenizer without)."""
_REMOTE_CODE_WARNED: set[str] = set()


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
    restore_attn_implementation: str | None = None
    """The model's attention implementation before it was wrapped; :meth:`close` puts it back."""

    def close(self) -> None:
        """Remove the hookable attention wrapper from the model (it runs as before loading)."""
        if self.restore_attn_implementation is not None:
            self.model.set_attn_implementation(self.restore_attn_implementation)
            self.restore_attn_implementation = None

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        d = self.dims
        return (f"LoadedModel({self.source.given!r}: {self.adapter.model_type}, {d['layers']} layers, "
                f"hidden {d['hidden']}, {self.dtype} on {self.device}, attention {self.attn_implementation})")

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
        from interventions.testbed import testbed_folder

        folder = testbed_folder(given[len(TESTBED_PREFIX):])
        return ModelSource(given, str(folder), is_local=True)
    p = Path(given).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"GGUF file {given} does not exist — give an existing .gguf file", field="model")
        return ModelSource(given, str(p.parent), gguf_file=p.name, is_local=True)
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{given} is a file; give a model folder, a .gguf file or a hub id", field="model")
        if not (p / "config.json").is_file():
            raise UserError(f"model folder {given} has no config.json; point at the folder holding config.json "
                            "and the weights", field="model")
        return ModelSource(given, str(p), is_local=True)
    if given.startswith((".", "/", "~")) or given.count("/") > 1:
        raise UserError(f"model folder {given} does not exist — {missing_model_fix(p)}", field="model")
    return ModelSource(given, given, revision=revision)


def load_config(source: ModelSource, *, trust_remote_code: bool = False):
    """Read only the config (fast, no weights) and check the architecture is supported."""
    from transformers import AutoConfig

    if trust_remote_code and source.given not in _REMOTE_CODE_WARNED:
        from interventions.progress import warn

        _REMOTE_CODE_WARNED.add(source.given)
        warn(f"trust_remote_code is on: code shipped with {source.given} will run on this machine")
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


def check_attn_implementation(name: str) -> None:
    if name not in BASE_IMPLEMENTATIONS:
        raise UserError(f"{name!r} cannot be hooked for sink scores or masking (they need the query and key the "
                        f"attention function receives); use one of {', '.join(BASE_IMPLEMENTATIONS)}",
                        field="attn_implementation")


def check_device(device: str, dtype: str) -> None:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UserError(f"device {device!r} is not one of {', '.join(DEVICES)} (or cuda:N)", field="device")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but no CUDA GPU is visible; use device: cpu", field="device")
    if device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise UserError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) visible, "
                            f"use cuda:0..cuda:{torch.cuda.device_count() - 1}", field="device")
    if dtype != "auto" and dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}", field="dtype")
    if dtype in ("bfloat16", "float16"):
        check_dtype_supported(DTYPES[dtype], "cpu" if device == "cpu" or not torch.cuda.is_available() else device)


def _dtype_probe(torch_dtype: torch.dtype, device: str) -> str | None:
    """Run the operations a forward needs in ``torch_dtype`` on ``device``; the error text, or None if they work."""
    if device.startswith("cuda") or device == "auto":
        if torch_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return "this GPU has no bfloat16 support"
        return None
    try:
        x = torch.randn(4, 8).to(torch_dtype)
        w = torch.randn(8, 8).to(torch_dtype)
        y = torch.nn.functional.silu(x @ w)
        torch.nn.functional.scaled_dot_product_attention(y[None, None], y[None, None], y[None, None], is_causal=True)
        torch.softmax(y, dim=-1).float().sum().item()
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


_DTYPE_PROBES: dict[tuple, str | None] = {}


def check_dtype_supported(torch_dtype: torch.dtype, device: str = "cpu") -> None:
    """Refuse a dtype the device cannot compute in (probed once by running a matmul, sdpa and softmax in it)."""
    key = (torch_dtype, device)
    if key not in _DTYPE_PROBES:
        _DTYPE_PROBES[key] = _dtype_probe(torch_dtype, device)
    problem = _DTYPE_PROBES[key]
    if problem is not None:
        name = str(torch_dtype).replace("torch.", "")
        fix = "use dtype: float32 (or auto)" if device == "cpu" else "use dtype: float16 or float32"
        raise UserError(f"{name} does not work on {device} here ({problem}); {fix}", field="dtype")


def resolve_dtype(config, dtype: str, device: str) -> torch.dtype:
    """The torch dtype ``load_model`` uses: ``auto`` is float32 on CPU and the checkpoint's dtype on GPU."""
    if dtype != "auto":
        return DTYPES[dtype]
    if device == "cpu":
        return torch.float32
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    found = getattr(text, "dtype", None) or getattr(text, "torch_dtype", None)
    if isinstance(found, str):
        found = DTYPES.get(found.replace("torch.", ""))
    return found if isinstance(found, torch.dtype) else torch.float32


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False):
    """The tokenizer of ``source`` (no weights); a folder without tokenizer files is one clear error."""
    from transformers import AutoTokenizer

    folder = Path(source.path)
    if source.is_local and source.gguf_file is None and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"model folder {source.given} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
                        "save the tokenizer into it (tokenizer.save_pretrained(folder))", field="model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file, revision=source.revision,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot load the tokenizer of {source.given!r} ({str(exc).splitlines()[0]}); the model folder "
                        "needs tokenizer files (tokenizer.json or vocab/merges)", field="model") from None
    if len(tokenizer) < 2:
        raise UserError(f"the tokenizer of {source.given!r} is empty ({len(tokenizer)} tokens); the model folder needs "
                        "its tokenizer files (tokenizer.json or vocab/merges)", field="model")
    return tokenizer


def _dtype_name(dtype) -> str:
    """``torch.float32`` or ``"float32"`` -> ``"float32"`` (``"auto"`` stays)."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).replace("torch.", "")
        if name not in DTYPES:
            raise UserError(f"dtype {dtype} is not one of auto, {', '.join(DTYPES)}", field="dtype")
        return name
    return dtype


def wrap_model(model, tokenizer=None, *, dtype="auto", device: str | None = None,
               attn_implementation: str | None = None) -> LoadedModel:
    """An already loaded Hugging Face causal LM, ready for observation and interventions.

    The model is used in place (not copied). Its attention implementation is switched to the
    hookable wrapper of the same implementation for as long as the returned object is open;
    :meth:`LoadedModel.close` (or leaving a ``with`` block) switches it back. ``dtype`` and
    ``device``, when given, convert the model in place; by default it stays as it is.
    """
    from .attention import PREFIX

    adapter = adapter_for(model.config)
    dtype = _dtype_name(dtype)
    if dtype != "auto":
        check_dtype_supported(DTYPES[dtype], "cpu" if device in (None, "cpu") else device)
        model.to(DTYPES[dtype])
    if device is not None:
        check_device(device, dtype)
        model.to(device)
    previous = model.config._attn_implementation or "eager"
    wanted = attn_implementation or (previous[len(PREFIX):] if previous.startswith(PREFIX) else previous)
    check_attn_implementation(wanted)
    if wanted != previous and not previous.endswith(wanted):
        model.set_attn_implementation(wanted)
    model.eval()
    make_hookable(model)
    param = next(model.parameters())
    name = getattr(model, "name_or_path", None) or type(model).__name__
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter,
                       source=ModelSource(f"in-memory:{name}", str(name)),
                       dtype=str(param.dtype).replace("torch.", ""), device=str(param.device),
                       attn_implementation=wanted,
                       restore_attn_implementation=None if previous.startswith(PREFIX) else previous)


def load_model(
    model,
    *,
    dtype="auto",
    device: str | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    revision: str | None = None,
    tokenizer=None,
) -> LoadedModel:
    """Load a decoder-only causal LM for observation and interventions.

    Args:
        model: hub id (``Qwen/Qwen2.5-Math-1.5B``), local folder, local ``.gguf`` file,
            ``testbed:planted`` / ``testbed:planted-llama``, or an already loaded Hugging Face
            ``PreTrainedModel`` (then pass its ``tokenizer``; see :func:`wrap_model`: used in
            place, left on its device and dtype unless asked).
        dtype: ``auto`` (float32 on CPU, the checkpoint's dtype on GPU), ``float32``,
            ``bfloat16`` or ``float16``, as a string or a ``torch.dtype``.
        device: ``cpu`` (the default for a model loaded here), ``cuda``/``cuda:N``, or ``auto``
            (``device_map="auto"``: layers spread over every visible GPU by accelerate). An in-memory
            model stays on its device unless one is given.
        attn_implementation: ``sdpa`` (default) or ``eager``; both are wrapped so sink scores
            and attention masking work with either.
        trust_remote_code: run code shipped with the checkpoint; off unless asked.
        revision: hub revision (branch, tag or commit) to pin.
        tokenizer: an already loaded tokenizer of this model (``load_tokenizer``), to skip loading it again.

    The attention wrapper is installed on this model only; ``close()`` the result (or use it
    as a context manager) to remove it.
    """
    if isinstance(model, torch.nn.Module):
        return wrap_model(model, tokenizer, dtype=dtype, device=device, attn_implementation=attn_implementation)
    if not isinstance(model, (str, Path)):
        raise UserError(f"model must be a hub id, a folder, a .gguf file or a loaded PreTrainedModel, not "
                        f"{type(model).__name__}", field="model")
    model = str(model)
    dtype = _dtype_name(dtype)
    device = device or "cpu"
    check_attn_implementation(attn_implementation)
    check_device(device, dtype)
    source = resolve_source(model, revision=revision)
    config = load_config(source, trust_remote_code=trust_remote_code)
    adapter = adapter_for(config)

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own rich progress is the one to watch

    torch_dtype = resolve_dtype(config, dtype, device)
    common = dict(gguf_file=source.gguf_file, revision=source.revision, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
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
    wrapped_from = hf_model.config._attn_implementation
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
        restore_attn_implementation=wrapped_from,
    )

