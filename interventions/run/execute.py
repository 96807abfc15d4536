"""Running one trace: the clean forward and intervened forwards that reuse its prefix.

Attention is causal and every edit acts at target positions (or removes target keys), so
nothing before the first edited position ``p0`` can change. An intervened forward therefore
runs only positions ``p0..T-1`` over a KV cache of the clean prefix. What the suffix cannot see
by itself is stitched in from the clean prefix: the per-layer reference (BOS) vectors for
cosines, the profile rows of the prefix positions, and the prefix queries' attention column
sums (sink scores are sums over queries).

The prefix comes for free when the first edited positions are known before the clean forward
(``starts``): the clean forward keeps its KV cache and, for each start ``b``, the column sums of
its queries before ``b``; a suffix then runs over the clean cache cut at ``b``. Any other start
costs one prefix forward (kept for up to ``MAX_PREFIXES`` starts), as does a model whose cache
has sliding-window layers. ``reuse_prefix=False`` runs the naive full forward; tests check all
paths give the same numbers.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from interventions.compile import Edit, compile_edits
from interventions.models.load import LoadedModel
from interventions.observation import Observation, Observer


def cache_argument(model) -> str:
    """The forward's name for a KV cache: ``cache`` in transformers >= 5.2x, ``past_key_values`` before.

    Passing the old name to a newer model works but warns on every call, so ask the signature.
    """
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(out):
    """The KV cache a forward returned, under either name (see :func:`cache_argument`)."""
    cache = getattr(out, "cache", None) if "cache" in getattr(out, "__dataclass_fields__", {}) else None
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _column_sums_to_scores(column_sums: np.ndarray) -> np.ndarray:
    T = column_sums.shape[-1]
    return (column_sums / (T - np.arange(T, dtype=np.float32))).astype(np.float32)


class TraceExecutor:
    """Clean and intervened forwards of one trace, with the clean prefix reused."""

    def __init__(self, loaded: LoadedModel, token_ids, *, reuse_prefix: bool = True, block_size: int = 256,
                 starts=(), reference: int | str = 0):
        """
        Args:
            reference: position of the clean run's reference primary sink (cosines are measured
                against its state in every forward), or ``auto``.
            starts: first edited positions of the intervened forwards to come (see
                :func:`first_position`); the clean forward then also serves as their prefix.
        """
        self.loaded = loaded
        self.ids = torch.as_tensor(token_ids, dtype=torch.long, device=loaded.input_device)[None]
        self.reuse_prefix = reuse_prefix
        self.block_size = block_size
        self.reference = reference
        self.starts = tuple(sorted({int(p) for p in starts if 0 < int(p) < self.length})) if reuse_prefix else ()
        self._prefixes: dict[int, tuple[object, Observation]] = {}
        self._clean_cache = None
        self.clean_observation: Observation | None = None
        self.forwards = {"full": 0, "prefix": 0, "suffix": 0, "tokens": 0, "naive_tokens": 0}

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])

    @torch.inference_mode()
    def clean(self) -> Observation:
        """The clean forward, with logits; computed once."""
        if self.clean_observation is None:
            self.clean_observation = self._full(None)
        return self.clean_observation

    @torch.inference_mode()
    def intervened(self, edits: list[Edit]) -> Observation:
        """A forward with ``edits`` applied, as a full-length observation with logits."""
        plan = compile_edits(self.loaded, edits)
        self.forwards["naive_tokens"] += self.length
        p0 = first_position(plan.module_edits + plan.attention_edits)
        if p0 is None:
            return self.clean()
        if not self.reuse_prefix or p0 < 1 or (isinstance(self.reference, int) and self.reference >= p0):
            # An edit at or before the reference changes the reference state itself, and with it the
            # cosines of the prefix positions: only a full forward has them.
            return self._full(plan)
        return self._suffix(plan, p0)

    # -- forwards ---------------------------------------------------------------------------
    def _full(self, plan) -> Observation:
        self.forwards["full"] += 1
        self.forwards["tokens"] += self.length
        keep = plan is None and bool(self.starts)  # the clean forward doubles as the prefix of every start
        with Observer(self.loaded, block_size=self.block_size, reference=self.reference,
                      column_sum_boundaries=self.starts if keep else ()) as observer:
            if plan is None:
                out = self.loaded.model(input_ids=self.ids, use_cache=keep)
            else:
                out = plan.forward(0, input_ids=self.ids, use_cache=False)
        if keep:
            cache = returned_cache(out)
            if all(not getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", [None])):
                self._clean_cache = cache
        return observer.collect(self.ids[0].tolist(), out.logits[0])

    MAX_PREFIXES = 2
    """Cached prefixes kept at once (targets and their controls usually start at two places)."""

    def _prefix_state(self, p0: int):
        if p0 not in self._prefixes:
            if len(self._prefixes) >= self.MAX_PREFIXES:
                self._prefixes.pop(next(iter(self._prefixes)))
            self.forwards["prefix"] += 1
            self.forwards["tokens"] += p0
            with Observer(self.loaded, block_size=self.block_size, keep_column_sums=True,
                          reference=self.reference) as observer:
                out = self.loaded.model(input_ids=self.ids[:, :p0], use_cache=True, logits_to_keep=1)
            self._prefixes[p0] = (returned_cache(out), observer.collect(self.ids[0, :p0].tolist()))
        return self._prefixes[p0]

    def _clean_prefix(self, p0: int):
        """(cache, column sums [L, H, p0], references) of the first p0 clean tokens, from the clean forward."""
        from transformers import DynamicCache

        clean = self.clean()
        if self._clean_cache is None or clean.prefix_column_sums is None or p0 not in clean.prefix_column_sums:
            return None
        cache = DynamicCache(ddp_cache_data=[(layer.keys[:, :, :p0], layer.values[:, :, :p0])
                                             for layer in self._clean_cache.layers])
        return cache, clean.prefix_column_sums[p0], clean.references

    def _suffix(self, plan, p0: int) -> Observation:
        reused = self._clean_prefix(p0)
        if reused is not None:
            cache, prefix_sums, references = reused
        else:
            cache, prefix = self._prefix_state(p0)
            prefix_sums, references = prefix.column_sums, prefix.references
        clean = self.clean()
        self.forwards["suffix"] += 1
        self.forwards["tokens"] += self.length - p0
        try:
            with Observer(self.loaded, block_size=self.block_size, keep_column_sums=True,
                          references=references, reference=self.reference, position_offset=p0) as observer:
                out = plan.forward(p0, input_ids=self.ids[:, p0:], use_cache=True,
                                   **{cache_argument(self.loaded.model): cache})
            suffix = observer.collect(self.ids[0, p0:].tolist())
        finally:
            added = cache.get_seq_length() - p0
            if added > 0:
                cache.crop(-added)  # transformers 5: a negative count removes that many tokens
        T = self.length
        # Positions before p0 cannot change: take them from the clean forward itself (bit-identical).
        profiles = {k: np.concatenate([clean.profiles[k][:, :p0], suffix.profiles[k]], axis=1) for k in suffix.profiles}
        sums = suffix.column_sums.copy()  # [L, H, T]: suffix queries over all keys
        sums[..., :p0] += prefix_sums
        logits = torch.cat([clean.logits[:p0], out.logits[0].to(clean.logits.dtype)], dim=0)
        assert logits.shape[0] == T
        return Observation(token_ids=clean.token_ids, profiles=profiles, sink_scores=_column_sums_to_scores(sums),
                           logits=logits, references=references, reference_position=clean.reference_position)


def first_position(edits: list[Edit]) -> int | None:
    """The first position an edit list touches: nothing before it can change (None: no edit)."""
    positions = [p for e in edits for p in e.positions]
    return min(positions) if positions else None
