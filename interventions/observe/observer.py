"""One forward per trace, reduced to per-(layer, position) scalars inside hooks.

Nothing of size L x T x D or T x T is ever held: each layer's hooks keep references to that
layer's tensors only until the layer's output arrives, reduce them to [T] vectors and drop
them. Sink scores come from the attention function itself (``interventions.attention``),
computed a block of queries at a time from the queries and keys the model really used.

Hooks are installed by a pre-hook on the root model, i.e. *after* anything registered before
the forward (pyvene registers its intervention hooks just before calling the model), so every
observed value is the value after interventions, which is what a measure must see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..adapters import decoder_layers, get_module
from ..attention import ColumnSumRequest, sink_scores_from_column_sums
from ..models import LoadedModel

PROFILE_COLUMNS = (
    "hidden_norm",    # ||h_t^l||, h^l = raw output of decoder layer l
    "hidden_cos",     # cos(h_t^l, h_ref^l), ref = the primary sink (position 0)
    "mlp_in_norm",    # ||x_t^l||, x = MLP input (after the post-attention norm)
    "mlp_in_cos",     # cos(x_t^l, x_ref^l): MLP input against the primary sink's MLP input
    "mlp_out_norm",   # ||f_t^l||, f = MLP output (what is added to the residual)
    "mlp_out_cos",    # cos(f_t^l, h_ref^l): MLP output against the sink direction
    "attn_out_norm",  # ||o_t^l||, o = attention output after o_proj
    "key_norm",       # mean over kv heads of ||k_t|| (after k-norm and rotary, as attended)
    "value_norm",     # mean over kv heads of ||v_t||
)


@dataclass
class Observation:
    """What one forward of one trace showed."""

    token_ids: np.ndarray
    """[T] int64."""
    profiles: dict[str, np.ndarray]
    """name -> float32 [L, T] for every name in PROFILE_COLUMNS."""
    sink_scores: np.ndarray
    """float32 [L, H, T]: Eq. 1 per layer, head and key position."""
    logits: torch.Tensor | None = None
    """[T, V] final logits when asked for (``keep_logits``), on the model's output device."""
    column_sums: np.ndarray | None = None
    """float32 [L, H, S]: attention summed over this forward's queries (``keep_column_sums``)."""
    references: dict[str, torch.Tensor] | None = None
    """Per-layer reference vectors seen in this forward: ``hidden`` and ``mlp_in``, each [L, D]."""
    prefix_column_sums: dict[int, np.ndarray] | None = None
    """``b`` -> float32 [L, H, b]: attention of queries < b summed over them (``column_sum_boundaries``)."""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.sink_scores.shape[0]

    @property
    def length(self) -> int:
        return int(self.token_ids.shape[0])

    def mean_sink_scores(self) -> np.ndarray:
        """[L, T]: sink score averaged over heads (the paper's per-layer score)."""
        return self.sink_scores.mean(axis=1)

    def profile_frame(self, trace: int) -> pd.DataFrame:
        """Long table: one row per (layer, position) with every profile column and the mean sink score."""
        L, T = self.n_layers, self.length
        frame = {
            "trace": np.full(L * T, trace, dtype=np.int32),
            "layer": np.repeat(np.arange(L, dtype=np.int16), T),
            "position": np.tile(np.arange(T, dtype=np.int32), L),
            "token_id": np.tile(self.token_ids.astype(np.int64), L),
        }
        for name in PROFILE_COLUMNS:
            frame[name] = self.profiles[name].reshape(-1)
        frame["sink_score"] = self.mean_sink_scores().reshape(-1)
        return pd.DataFrame(frame)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.float(), dim=-1)


def _cos(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    x = x.float()
    ref = ref.float()
    return (x @ ref) / (torch.linalg.vector_norm(x, dim=-1) * torch.linalg.vector_norm(ref) + 1e-30)


class Observer:
    """Installs observation hooks on a loaded model for the duration of a ``with`` block.

    Use ``observe_tokens`` for a single trace; use this directly to observe a forward that
    someone else runs (the intervention runner runs pyvene's forward inside it).
    """

    def __init__(self, loaded: LoadedModel, *, reference_position: int = 0, block_size: int | None = 256,
                 sink_scores: bool = True, keep_column_sums: bool = False,
                 references: dict[str, torch.Tensor] | None = None, column_sum_boundaries=(),
                 exact: bool = False):
        """
        Args:
            reference_position: position of the primary sink whose states are the references.
            block_size: queries per block for sink scores, at most (fewer when T is long, so the
                working set stays at ``attention.BLOCK_BUDGET`` scores; None: the default 256).
            sink_scores: compute sink scores (the costliest part of observation).
            keep_column_sums: also keep raw attention column sums (to combine a cached prefix
                with a later suffix forward).
            references: per-layer reference vectors (``hidden``, ``mlp_in``: [L, D]) to use when
                the reference position is not part of this forward (a suffix run over a cache).
            column_sum_boundaries: positions ``b`` at which to also keep the column sums of the
                queries before ``b`` (what a forward over the first ``b`` tokens would sum), so a
                later suffix from ``b`` can reuse this forward as its prefix.
            exact: leave the model's own attention output in place (bit-identical logits) and
                compute sink scores in a second pass. Default: observed layers take their output
                from the fused pass that also gives the sink scores (one pass, equal to sdpa's output
                within float32 rounding, about 1e-6 relative).
        """
        self.loaded = loaded
        self.reference_position = reference_position
        self.block_size = block_size
        self.want_sink_scores = sink_scores
        self.exact = exact
        self.keep_column_sums = keep_column_sums
        self.given_references = references
        self.boundaries = tuple(sorted({int(b) for b in column_sum_boundaries}))
        self.layers = decoder_layers(loaded.model, loaded.adapter)
        self._root_handles: list = []
        self._inner_handles: list = []
        self._attention_modules: list = []
        self.reset()

    # -- lifecycle -------------------------------------------------------------------------
    def reset(self) -> None:
        self._rows: dict[str, list] = {name: [None] * len(self.layers) for name in PROFILE_COLUMNS}
        self._scores: list = [None] * len(self.layers)
        self._column_sums: list = [None] * len(self.layers)
        self._prefix_sums: list = [None] * len(self.layers)
        self._references: dict[str, list] = {"hidden": [None] * len(self.layers), "mlp_in": [None] * len(self.layers)}
        self._pending: dict[int, dict[str, torch.Tensor]] = {}

    def __enter__(self) -> Observer:
        root = self.loaded.model
        self._root_handles = [
            root.register_forward_pre_hook(self._install, prepend=False),
            root.register_forward_hook(self._uninstall, always_call=True),
        ]
        return self

    def __exit__(self, *exc) -> None:
        self._uninstall()
        for h in self._root_handles:
            h.remove()
        self._root_handles = []

    def _install(self, *_):
        self._uninstall()
        self.reset()
        adapter = self.loaded.adapter
        for idx, block in enumerate(self.layers):
            attn = get_module(block, adapter.attention)
            mlp = get_module(block, adapter.mlp)
            self._inner_handles += [
                mlp.register_forward_pre_hook(self._keep("mlp_in", idx, from_input=True)),
                # the outputs as written into the residual stream (after Gemma3's post-norms)
                get_module(block, adapter.mlp_output).register_forward_hook(self._keep("mlp_out", idx)),
                get_module(block, adapter.attention_output).register_forward_hook(self._on_attention_output(idx)),
                block.register_forward_hook(self._on_block_output(idx)),
            ]
            attn._interventions_probe = self._probe(idx)
            self._attention_modules.append(attn)

    def _uninstall(self, *_):
        for h in self._inner_handles:
            h.remove()
        self._inner_handles = []
        for attn in self._attention_modules:
            if getattr(attn, "_interventions_probe", None) is not None:
                del attn._interventions_probe
        self._attention_modules = []

    # -- hooks -----------------------------------------------------------------------------
    def _keep(self, name: str, idx: int, from_input: bool = False):
        def hook(module, args, output=None):
            tensor = args[0] if from_input else _first(output)
            self._pending.setdefault(idx, {})[name] = tensor[0]  # batch of one: [T, D]
        return hook

    def _on_attention_output(self, idx: int):
        def hook(module, args, output):
            self._rows["attn_out_norm"][idx] = _norm(_first(output)[0]).cpu()
        return hook

    def _probe(self, idx: int):
        def probe(module, query, key, value, attention_mask, kwargs, sums=None):
            q_len = query.shape[2]  # with a cache, keys also hold earlier positions: keep this forward's
            self._rows["key_norm"][idx] = _norm(key[0, :, -q_len:]).mean(0).cpu()
            self._rows["value_norm"][idx] = _norm(value[0, :, -q_len:]).mean(0).cpu()
            if sums is None:
                return
            if self.boundaries:
                self._prefix_sums[idx] = {b: v[0].cpu() for b, v in sums.prefix.items()}
            if self.keep_column_sums:
                self._column_sums[idx] = sums.total[0].cpu()
            self._scores[idx] = sink_scores_from_column_sums(sums.total[0], q_len).cpu()

        # The attention function reads this request and hands the column sums of the pass that
        # computed the layer's output (fused) or of a second pass (exact) to the probe.
        if self.want_sink_scores:
            probe.column_sums = ColumnSumRequest(block_size=self.block_size, boundaries=self.boundaries,
                                                 exact=self.exact)
        return probe

    def _on_block_output(self, idx: int):
        def hook(module, args, output):
            h = _first(output)[0]  # [T, D]
            pending = self._pending.pop(idx, {})
            ref = self._reference("hidden", idx, h)
            rows = self._rows
            rows["hidden_norm"][idx] = _norm(h).cpu()
            rows["hidden_cos"][idx] = _cos(h, ref).cpu()
            if "mlp_out" in pending:
                rows["mlp_out_norm"][idx] = _norm(pending["mlp_out"]).cpu()
                rows["mlp_out_cos"][idx] = _cos(pending["mlp_out"], ref).cpu()
            if "mlp_in" in pending:
                x = pending["mlp_in"]
                rows["mlp_in_norm"][idx] = _norm(x).cpu()
                rows["mlp_in_cos"][idx] = _cos(x, self._reference("mlp_in", idx, x)).cpu()
        return hook

    def _reference(self, name: str, idx: int, states: torch.Tensor) -> torch.Tensor:
        if self.given_references is not None:
            ref = self.given_references[name][idx].to(states.device)
        else:
            ref = states[self.reference_position]
        self._references[name][idx] = ref.detach().clone()
        return ref

    # -- results ---------------------------------------------------------------------------
    def collect(self, token_ids, logits: torch.Tensor | None = None) -> Observation:
        T = len(token_ids)
        L = len(self.layers)
        profiles = {}
        for name, rows in self._rows.items():
            arr = np.full((L, T), np.nan, dtype=np.float32)
            for idx, row in enumerate(rows):
                if row is not None:
                    arr[idx] = row.numpy()
            profiles[name] = arr
        heads = self.loaded.dims["heads"]
        # Sink scores span every key (cached prefix included), so they can be wider than T.
        width = next((x.shape[-1] for x in self._scores if x is not None), T)
        scores = np.full((L, heads, width), np.nan, dtype=np.float32)
        for idx, s in enumerate(self._scores):
            if s is not None:
                scores[idx] = s.numpy()
        column_sums = None
        if self.keep_column_sums and all(c is not None for c in self._column_sums):
            column_sums = torch.stack(self._column_sums).numpy()
        prefix_sums = None
        if self.boundaries and all(p is not None for p in self._prefix_sums):
            prefix_sums = {b: torch.stack([p[b] for p in self._prefix_sums]).numpy()
                           for b in self._prefix_sums[0] if all(b in p for p in self._prefix_sums)}
        references = None
        if all(r is not None for rs in self._references.values() for r in rs):
            references = {k: torch.stack([r.cpu() for r in v]) for k, v in self._references.items()}
        return Observation(token_ids=np.asarray(token_ids, dtype=np.int64), profiles=profiles, sink_scores=scores,
                           logits=logits, column_sums=column_sums, references=references,
                           prefix_column_sums=prefix_sums)


@torch.inference_mode()
def observe_tokens(loaded: LoadedModel, token_ids, *, keep_logits: bool = False, block_size: int | None = 256,
                   sink_scores: bool = True, exact: bool | None = None) -> Observation:
    """Run one clean forward over ``token_ids`` and return its observation.

    Args:
        loaded: a model from :func:`interventions.load_model`.
        token_ids: one trace's ids (list or 1-D tensor), BOS first.
        keep_logits: also return the final logits [T, V] (needed for KL / NLL measures).
        block_size: queries per block when computing sink scores (memory ~ block x T x heads).
        sink_scores: compute sink scores (the costliest part); off gives only the scalars.
        exact: keep the model's own attention output, so logits are bit-identical to a plain
            forward (a second attention pass per layer). Default: exact when ``keep_logits``
            (whoever asks for logits gets the model's), the fused single pass otherwise.
    """
    exact = keep_logits if exact is None else exact
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=loaded.input_device)[None]
    with Observer(loaded, block_size=block_size, sink_scores=sink_scores, exact=exact) as observer:
        out = loaded.model(input_ids=ids, use_cache=False, logits_to_keep=0 if keep_logits else 1)
    return observer.collect(ids[0].tolist(), out.logits[0] if keep_logits else None)
