"""The in-memory API a notebook reaches for: observe one forward, edit any forward.

>>> from interventions import load_model, observe, edit
>>> from interventions.compile.kind_edits import Scale, Zero
>>> model = load_model("testbed:planted")
>>> clean = observe(model, "the cat sat", names=["block_output.*", "sink_scores"])
>>> with edit(model, [Scale(site="mlp_output", layer=2, positions=[3], factor=5)]):
...     edited = observe(model, "the cat sat", names="block_output.*")

Names (``run_with_cache(names_filter=...)`` style): ``<site>.<layer>`` for every site
(``block_output``, ``attention_output``, ``mlp_output``) and layer, ``logits``,
``sink_scores`` ([L, H, T], Eq. 1) and ``profiles`` (per layer and position: norms and cosines).
``names`` is one name or glob (``"mlp_output.*"``), a list of them, or a function name -> bool.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .observation.capture import output_tensor, site_module
from .spec.fields import SITES

SPECIAL_NAMES = ("logits", "sink_scores", "profiles")


@dataclass
class Activations:
    """What one :func:`observe` forward showed: only the names asked for."""

    token_ids: list[int]
    """The forward's token ids."""
    tokens: list[str]
    """Each token as text (empty strings without a tokenizer)."""
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    """``"<site>.<layer>"`` -> [T, D] float tensor (on the layer's device)."""
    logits: torch.Tensor | None = None
    """[T, V] final logits, if asked for."""
    sink_scores: np.ndarray | None = None
    """[L, H, T] sink score per layer, head and key position (Eq. 1), if asked for."""
    profiles: dict[str, np.ndarray] | None = None
    """Per-layer, per-position scalars ([L, T] each: hidden_norm, hidden_cos, mlp_out_norm, ...), if asked for."""

    @property
    def names(self) -> list[str]:
        """Every name this record holds."""
        extra = [n for n in SPECIAL_NAMES if getattr(self, n) is not None]
        return list(self.activations) + extra

    def __getitem__(self, name: str):
        if name in self.activations:
            return self.activations[name]
        if name in SPECIAL_NAMES and getattr(self, name) is not None:
            return getattr(self, name)
        raise KeyError(f"{name!r} was not observed; this record holds {', '.join(self.names) or 'nothing'} "
                       "(ask for it with names=)")

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def stack(self, site: str) -> torch.Tensor:
        """[L', T, D]: ``site`` at every observed layer, in layer order."""
        keys = sorted((k for k in self.activations if k.split(".")[0] == site), key=lambda k: int(k.split(".")[1]))
        if not keys:
            raise KeyError(f"no {site} was observed")
        return torch.stack([self.activations[k].to(self.activations[keys[0]].device) for k in keys])

    def __repr__(self) -> str:
        T = len(self.token_ids)
        preview = "".join(self.tokens[:12]).replace("\n", "\\n")
        lines = [f"Activations({T} tokens: {preview!r}{' ...' if T > 12 else ''})"]
        by_site: dict[str, list[int]] = {}
        for k in self.activations:
            site, layer = k.split(".")
            by_site.setdefault(site, []).append(int(layer))
        for site, layers in by_site.items():
            d = self.activations[f"{site}.{layers[0]}"].shape[-1]
            lines.append(f"  {site}: layers {_ranges(sorted(layers))}, each [{T}, {d}]")
        if self.logits is not None:
            lines.append(f"  logits: {list(self.logits.shape)}")
        if self.sink_scores is not None:
            lines.append(f"  sink_scores: {list(self.sink_scores.shape)} (layer, head, key)")
        if self.profiles is not None:
            lines.append(f"  profiles: {', '.join(self.profiles)} (each [layers, {T}])")
        return "\n".join(lines)


def _ranges(values: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)


def _selector(names) -> Callable[[str], bool]:
    if names is None:
        return lambda name: True
    if callable(names):
        return names
    patterns = [names] if isinstance(names, str) else list(names)
    return lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)


@contextmanager
def _as_loaded(model, tokenizer=None):
    """A LoadedModel for ``model`` (a LoadedModel, or an HF model wrapped for the block)."""
    from .models.load import LoadedModel, wrap_model

    if isinstance(model, LoadedModel):
        yield model
        return
    loaded = wrap_model(model, tokenizer)
    try:
        yield loaded
    finally:
        loaded.close()


def _token_ids(loaded, tokens) -> list[int]:
    if isinstance(tokens, str):
        if loaded.tokenizer is None:
            raise ValueError("text needs a tokenizer: pass token ids, or load the model with its tokenizer")
        return list(loaded.tokenizer(tokens)["input_ids"])
    if isinstance(tokens, torch.Tensor):
        return [int(t) for t in tokens.reshape(-1).tolist()]
    return [int(t) for t in tokens]


@torch.inference_mode()
def observe(model, tokens, names=None, *, tokenizer=None, block_size: int = 256) -> Activations:
    """One forward over ``tokens``; returns what ``names`` asks for (everything when None).

    Args:
        model: a :class:`~interventions.models.load.LoadedModel` or a Hugging Face causal LM.
        tokens: text (tokenized with the model's tokenizer), a list of ids or a 1-D tensor.
        names: which values to keep: a name, a glob, a list of them or a function name -> bool
            (see the module docstring for the names).
        tokenizer: the tokenizer, when ``model`` is a bare Hugging Face model.
        block_size: queries per block for sink scores.

    Inside :func:`edit`, the forward runs with the edits, and every value is the edited one.
    """
    from .observation.observer import Observer

    wanted = _selector(names)
    with _as_loaded(model, tokenizer) as loaded:
        L = loaded.dims["layers"]
        ids = _token_ids(loaded, tokens)
        site_names = [(f"{site}.{layer}", site, layer) for site in SITES for layer in range(L)
                      if wanted(f"{site}.{layer}")]
        keep_logits, want_scores, want_profiles = wanted("logits"), wanted("sink_scores"), wanted("profiles")
        kept: dict[str, torch.Tensor] = {}
        handles = []

        def hook(name):
            def fn(module, args, output):
                kept[name] = output_tensor(output)[0].detach().clone()
            return fn

        x = torch.as_tensor(ids, dtype=torch.long, device=loaded.input_device)[None]
        try:
            for name, site, layer in site_names:
                handles.append(site_module(loaded, site, layer).register_forward_hook(hook(name)))
            with ExitStack() as stack:
                observer = stack.enter_context(Observer(loaded, block_size=block_size, sink_scores=want_scores)) \
                    if (want_scores or want_profiles) else None
                out = loaded.model(input_ids=x, use_cache=False, logits_to_keep=0 if keep_logits else 1)
            obs = observer.collect(ids) if observer is not None else None
        finally:
            for h in handles:
                h.remove()
        texts = [loaded.tokenizer.decode([i]) for i in ids] if loaded.tokenizer is not None else [""] * len(ids)
        return Activations(token_ids=ids, tokens=texts, activations={n: kept[n] for n, _, _ in site_names},
                           logits=out.logits[0] if keep_logits else None,
                           sink_scores=obs.sink_scores if obs is not None and want_scores else None,
                           profiles=dict(obs.profiles) if obs is not None and want_profiles else None)


def _site_hook(edit):
    kind = edit.kind_class

    def fn(module, args, output):
        is_tuple = isinstance(output, tuple)
        out = output_tensor(output)
        T = out.shape[1]
        rows = [i for i, p in enumerate(edit.positions) if p < T]  # a shorter forward (generation) sees fewer
        if not rows:
            return output
        here = edit if len(rows) == len(edit.positions) else replace(
            edit, positions=[edit.positions[i] for i in rows],
            vector=edit.vector[rows] if edit.vector is not None and edit.vector.dim() == 2 else edit.vector)
        out = out.clone()
        for b in range(out.shape[0]):
            out[b, here.positions] = kind.reference_value(here, out[b, here.positions]).to(out.dtype)
        return (out, *output[1:]) if is_tuple else out

    return fn


@contextmanager
def edit(model, edits: Iterable, *, tokenizer=None):
    """Apply ``edits`` to every forward of ``model`` inside the ``with`` block.

    Args:
        model: a :class:`~interventions.models.load.LoadedModel` or a Hugging Face causal LM.
        edits: edit objects from :mod:`interventions.compile.kind_edits` (``Scale(site=..., layer=..., positions=...,
            factor=...)``, ``Zero``, ``MeanSwap``, ``AttentionMask``, ``Add``, ``Patch`` ...) or
            :class:`~interventions.compile.Edit` s.
        tokenizer: the tokenizer, when ``model`` is a bare Hugging Face model.

    Site edits run as plain forward hooks using each kind's torch oracle (the tests check it
    equals the pyvene compilation the runner uses); attention edits are installed on the
    attention function. Positions are positions of the forward's own input. Every hook and
    attention edit is removed on exit, also when the block raises. Yields the LoadedModel.
    """
    from .compile.compile import merge_edits
    from .compile.plan import Edit

    with _as_loaded(model, tokenizer) as loaded, ExitStack() as stack:
        concrete: list[Edit] = []
        for e in edits:
            concrete += [e] if isinstance(e, Edit) else e.edits(loaded)
        concrete = [e for e in merge_edits(concrete) if e.positions]
        handles = []
        stack.callback(lambda: [h.remove() for h in handles])
        by_kind: dict[str, list[Edit]] = {}
        for e in concrete:
            if e.kind_class.COMPILES_TO == "site":
                handles.append(site_module(loaded, e.site, e.layer).register_forward_hook(_site_hook(e)))
            else:
                by_kind.setdefault(e.kind, []).append(e)
        for kind_edits in by_kind.values():
            stack.enter_context(kind_edits[0].kind_class.install(loaded, kind_edits))
        yield loaded
