"""One forward per trace, reduced to per-(layer, position) scalars inside hooks.

Nothing of size L x T x D or T x T is ever held: each layer's hooks keep references to that
layer's tensors only until the layer's output arrives, reduce them to [T] vectors and drop
them. Sink scores come from the attention function itself (``interventions.models.attention``),
computed a block of queries at a time from the queries and keys the model really used.

Hooks are installed by a pre-hook on the root model, i.e. *after* anything registered before
the forward (pyvene registers its intervention hooks just before calling the model), so every
observed value is the value after interventions, which is what a measure must see.

**Cosine references chosen after the pass.** The cosine columns measure every state against a
primary sink's state of the same layer, but which position is the primary sink (and which of
several is the reference) is only known once every layer has been seen. With ``reference="auto"``
the observer therefore keeps the cosines of all positions against every *candidate*: positions
0, 1 and 2 from layer 0 on (the BOS / chat-template slots, and the paper's own reference
candidates), and every position whose hidden-state norm has exceeded ``massive_ratio`` x the
layer's median, from the layer where it first did (cosines against it before that layer are NaN:
there was no massive state to align with yet). At most ``max_candidates`` such massive
positions are tracked; when a new one arrives and the list is full, the one with the lowest
peak norm ratio so far is dropped if the newcomer's ratio is higher (transient high-norm tokens
give way to real massive activations; the number dropped is recorded). After the pass
:meth:`Observation.select_reference` puts one candidate's cosines into the profile columns;
until then they hold position 0's. With an integer ``reference`` the cosines are against that
position only (what an intervened forward uses: the clean run's reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interventions.models.adapters import decoder_layers, get_module
from interventions.models.attention import ColumnSumRequest, sink_scores_from_column_sums
from interventions.models.load import LoadedModel

PROFILE_COLUMNS = (
    "hidden_norm",    # ||h_t^l||, h^l = raw output of decoder layer l
    "hidden_cos",     # cos(h_t^l, h_ref^l), ref = the reference primary sink (Observation.reference_position)
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
    reference_position: int | None = 0
    """Position whose states the cosine columns are measured against (None: not in this forward)."""
    candidates: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    """position -> cosines of every position against it: ``hidden_cos``, ``mlp_in_cos``,
    ``mlp_out_cos`` (float32 [L, T], NaN before it became a candidate), ``final_cos`` ([T],
    after the final norm) and ``since`` (first layer tracked)."""
    candidate_vectors: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    """position -> its own states: ``hidden`` and ``mlp_in`` ([L, D], NaN before ``since``), ``final`` ([D])."""
    final_norm: np.ndarray | None = None
    """float32 [T]: ||h|| after the final norm (what Hugging Face returns as the last hidden state)."""
    final_cos: np.ndarray | None = None
    """float32 [T]: cosine of the final-normed states against the reference's."""
    dropped_candidates: int = 0
    """Massive positions not tracked because ``max_candidates`` was reached."""

    @property
    def n_layers(self) -> int:
        return self.sink_scores.shape[0]

    @property
    def length(self) -> int:
        return int(self.token_ids.shape[0])

    def select_reference(self, position: int) -> None:
        """Measure the cosine columns (and ``references``) against candidate ``position``."""
        position = int(position)
        if position == self.reference_position and position not in self.candidates:
            return
        if position not in self.candidates:
            raise ValueError(f"position {position} was not tracked as a cosine reference in this forward "
                             f"(tracked: {sorted(self.candidates)}); observe with reference={position}")
        cand = self.candidates[position]
        for name in ("hidden_cos", "mlp_in_cos", "mlp_out_cos"):
            self.profiles[name] = cand[name]
        self.final_cos = cand.get("final_cos")
        vectors = self.candidate_vectors.get(position)
        if vectors is not None:
            self.references = {"hidden": vectors["hidden"], "mlp_in": vectors["mlp_in"]}
        self.reference_position = position

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


def _cos_many(x: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """[T, K]: cosine of every row of x [T, D] against every row of refs [K, D]."""
    x = x.float()
    refs = refs.float().to(x.device)
    dots = x @ refs.T
    return (dots / (torch.linalg.vector_norm(x, dim=-1)[:, None] * torch.linalg.vector_norm(refs, dim=-1)[None]
                    + 1e-30)).cpu()


MASSIVE_RATIO = 5.0
"""Default norm / layer-median ratio of a massive activation (justified in :mod:`interventions.detection.rules`)."""
MAX_CANDIDATES = 8
ALWAYS_TRACKED = (0, 1, 2)


class Observer:
    """Installs observation hooks on a loaded model for the duration of a ``with`` block.

    Use ``observe_tokens`` for a single trace; use this directly to observe a forward that
    someone else runs (the intervention runner runs pyvene's forward inside it).
    """

    def __init__(self, loaded: LoadedModel, *, reference: int | str = "auto", block_size: int | None = 256,
                 sink_scores: bool = True, keep_column_sums: bool = False,
                 references: dict[str, torch.Tensor] | None = None, column_sum_boundaries=(),
                 massive_ratio: float = MASSIVE_RATIO, max_candidates: int = MAX_CANDIDATES,
                 position_offset: int = 0, reference_position: int | None = None, exact: bool = False):
        """
        Args:
            reference: ``auto`` (track candidates, choose after the pass; see the module
                docstring) or the position whose states are the cosine references.
            massive_ratio: norm / layer median above which a position becomes a candidate.
            max_candidates: massive positions tracked at most (positions 0-2 come on top).
            position_offset: position of this forward's first token (a suffix over a cache).
            reference_position: old name of an integer ``reference``.
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
        if reference_position is not None:
            reference = reference_position
        self.fixed_reference = None if reference == "auto" else int(reference)
        self.massive_ratio = float(massive_ratio)
        self.max_candidates = int(max_candidates)
        self.offset = int(position_offset)
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
        self._pending: dict[int, dict[str, torch.Tensor]] = {}
        # Cosine references: position -> per-layer rows / vectors (see the module docstring).
        self._tracked: list[int] = []
        self._since: dict[int, int] = {}
        self._peak: dict[int, float] = {}
        self._cand_rows: dict[int, dict[str, list]] = {}
        self._cand_vecs: dict[int, dict[str, list]] = {}
        self._final: dict[str, object] = {}
        self._dropped = 0

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
        try:
            final = get_module(self.loaded.model, adapter.final_norm)
        except (AttributeError, IndexError):
            final = None
        if final is not None:
            self._inner_handles.append(final.register_forward_hook(self._on_final_norm))

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
            rows = self._rows
            norm = _norm(h)
            rows["hidden_norm"][idx] = norm.cpu()
            self._update_candidates(idx, norm)
            x = pending.get("mlp_in")
            f = pending.get("mlp_out")
            if x is not None:
                rows["mlp_in_norm"][idx] = _norm(x).cpu()
            if f is not None:
                rows["mlp_out_norm"][idx] = _norm(f).cpu()
            refs = self._reference_states(idx, h, x)
            if not refs:
                return
            positions = list(refs)
            hidden_refs = torch.stack([refs[p]["hidden"] for p in positions])
            hcos = _cos_many(h, hidden_refs)
            fcos = _cos_many(f, hidden_refs) if f is not None else None
            xcos = None
            if x is not None and all(refs[p]["mlp_in"] is not None for p in positions):
                xcos = _cos_many(x, torch.stack([refs[p]["mlp_in"] for p in positions]))
            for j, p in enumerate(positions):
                cand = self._cand_rows.setdefault(p, {"hidden_cos": [None] * len(self.layers),
                                                      "mlp_in_cos": [None] * len(self.layers),
                                                      "mlp_out_cos": [None] * len(self.layers)})
                cand["hidden_cos"][idx] = hcos[:, j]
                if fcos is not None:
                    cand["mlp_out_cos"][idx] = fcos[:, j]
                if xcos is not None:
                    cand["mlp_in_cos"][idx] = xcos[:, j]
                vecs = self._cand_vecs.setdefault(p, {"hidden": [None] * len(self.layers),
                                                      "mlp_in": [None] * len(self.layers)})
                vecs["hidden"][idx] = refs[p]["hidden"].detach().to("cpu", torch.float32, copy=True)
                if refs[p]["mlp_in"] is not None:
                    vecs["mlp_in"][idx] = refs[p]["mlp_in"].detach().to("cpu", torch.float32, copy=True)
        return hook

    def _on_final_norm(self, module, args, output):
        h = _first(output)[0]
        self._final["norm"] = _norm(h).cpu()
        T = h.shape[0]
        positions = [p for p in self._tracked if 0 <= p - self.offset < T]
        if self.fixed_reference is not None:
            positions = [p for p in positions if p == self.fixed_reference]
        if positions:
            refs = torch.stack([h[p - self.offset] for p in positions])
            cos = _cos_many(h, refs)
            self._final["cos"] = {p: cos[:, j] for j, p in enumerate(positions)}
            self._final["vectors"] = {p: h[p - self.offset].detach().to("cpu", torch.float32, copy=True) for p in positions}

    def _update_candidates(self, idx: int, norm: torch.Tensor) -> None:
        """Track positions 0-2 (or the fixed reference) from layer 0 and massive positions from their first massive layer."""
        T = norm.shape[0]
        if self.fixed_reference is not None:
            if self.fixed_reference not in self._since:
                self._tracked.append(self.fixed_reference)
                self._since[self.fixed_reference] = idx
            return
        if self.given_references is not None:
            return  # a suffix run: cosines against the given (clean) reference only
        for p in ALWAYS_TRACKED:
            if p < T and p not in self._since:
                self._tracked.append(p)
                self._since[p] = idx
        ratio = norm.float() / norm.float().median().clamp_min(1e-30)
        massive = torch.nonzero(ratio > self.massive_ratio).flatten()
        if not massive.numel():
            return
        values = ratio[massive].cpu().tolist()
        for p, r in zip(massive.cpu().tolist(), values):
            if p in self._since:
                self._peak[p] = max(self._peak.get(p, 0.0), r)
        newcomers = sorted(((r, p) for p, r in zip(massive.cpu().tolist(), values) if p not in self._since),
                           reverse=True)
        for r, p in newcomers:
            extra = [q for q in self._tracked if q not in ALWAYS_TRACKED]
            if len(extra) >= self.max_candidates:
                weakest = min(extra, key=lambda q: (self._peak.get(q, 0.0), -q))
                if self._peak.get(weakest, 0.0) >= r:
                    self._dropped += 1
                    continue
                self._tracked.remove(weakest)
                self._cand_rows.pop(weakest, None)
                self._cand_vecs.pop(weakest, None)
                del self._since[weakest]
                self._dropped += 1
            self._tracked.append(p)
            self._since[p] = idx
            self._peak[p] = r

    def _reference_states(self, idx: int, h: torch.Tensor, x: torch.Tensor | None) -> dict[int, dict]:
        """position -> {"hidden", "mlp_in"} reference vectors of this layer, for every tracked position."""
        given = self.given_references
        if given is not None and (self.fixed_reference is None or self.fixed_reference < self.offset):
            # A suffix over a cache: the reference lies in the cached prefix, its vectors come from the clean run.
            p = self.fixed_reference if self.fixed_reference is not None else 0
            self._since.setdefault(p, 0)
            return {p: {"hidden": given["hidden"][idx].to(h.device), "mlp_in": given["mlp_in"][idx].to(h.device)}}
        out = {}
        for p in self._tracked:
            local = p - self.offset
            if 0 <= local < h.shape[0]:
                out[p] = {"hidden": h[local], "mlp_in": x[local] if x is not None else None}
        return out

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
        candidates, vectors = {}, {}
        D = self.loaded.dims.get("hidden") if isinstance(self.loaded.dims, dict) else None
        final_cos = self._final.get("cos", {})
        for p, rows in self._cand_rows.items():
            cand = {}
            for name, layer_rows in rows.items():
                arr = np.full((L, T), np.nan, dtype=np.float32)
                for idx, row in enumerate(layer_rows):
                    if row is not None:
                        arr[idx] = row.cpu().numpy()
                cand[name] = arr
            if p in final_cos:
                cand["final_cos"] = final_cos[p].cpu().numpy().astype(np.float32)
            cand["since"] = self._since.get(p, 0)
            candidates[p] = cand
            vecs = {}
            for name, layer_vecs in self._cand_vecs[p].items():
                width = next((v.shape[0] for v in layer_vecs if v is not None), D or 0)
                stacked = torch.full((L, width), float("nan"))
                for idx, v in enumerate(layer_vecs):
                    if v is not None:
                        stacked[idx] = v
                vecs[name] = stacked
            if p in self._final.get("vectors", {}):
                vecs["final"] = self._final["vectors"][p]
            vectors[p] = vecs
        final_norm = self._final["norm"].numpy().astype(np.float32) if "norm" in self._final else None
        obs = Observation(token_ids=np.asarray(token_ids, dtype=np.int64), profiles=profiles, sink_scores=scores,
                          logits=logits, column_sums=column_sums, references=None,
                          prefix_column_sums=prefix_sums, reference_position=None, candidates=candidates,
                          candidate_vectors=vectors, final_norm=final_norm, dropped_candidates=self._dropped)
        for name in ("hidden_cos", "mlp_in_cos", "mlp_out_cos"):
            profiles[name] = np.full((L, T), np.nan, dtype=np.float32)
        first = self.fixed_reference if self.fixed_reference is not None else 0
        if first in candidates:
            obs.select_reference(first)
        if self.given_references is not None:
            obs.references = self.given_references if self.fixed_reference is None or \
                self.fixed_reference < self.offset else obs.references
        return obs


@torch.inference_mode()
def observe_tokens(loaded: LoadedModel, token_ids, *, keep_logits: bool = False, block_size: int | None = 256,
                   sink_scores: bool = True, exact: bool | None = None, reference: int | str = "auto",
                   massive_ratio: float = MASSIVE_RATIO) -> Observation:
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
        reference: ``auto`` (cosines against every candidate, position 0's in the profile columns
            until :meth:`Observation.select_reference`; detection chooses) or a position.
        massive_ratio: norm / layer median that makes a position a cosine-reference candidate.
    """
    exact = keep_logits if exact is None else exact
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=loaded.input_device)[None]
    with Observer(loaded, block_size=block_size, sink_scores=sink_scores, exact=exact, reference=reference,
                  massive_ratio=massive_ratio) as observer:
        out = loaded.model(input_ids=ids, use_cache=False, logits_to_keep=0 if keep_logits else 1)
    return observer.collect(ids[0].tolist(), out.logits[0] if keep_logits else None)
