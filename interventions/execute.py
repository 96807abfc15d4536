"""Running one trace: the clean forward and intervened forwards that reuse its prefix.

Attention is causal and every edit acts at target positions (or removes target keys), so
nothing before the first edited position ``p0`` can change. An intervened forward therefore
runs only positions ``p0..T-1`` over a KV cache of the clean prefix, computed once per ``p0``
and cropped back after each use. What the suffix cannot see by itself is stitched in from the
clean prefix: the per-layer reference (BOS) vectors for cosines, the profile rows of the prefix
positions, and the prefix queries' attention column sums (sink scores are sums over queries).
``reuse_prefix=False`` runs the naive full forward; tests check both give the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from .compiler import Edit, compile_edits
from .models import LoadedModel
from .observe import Observation, Observer


def _column_sums_to_scores(column_sums: np.ndarray) -> np.ndarray:
    T = column_sums.shape[-1]
    return (column_sums / (T - np.arange(T, dtype=np.float32))).astype(np.float32)


class TraceExecutor:
    """Clean and intervened forwards of one trace, with the clean prefix reused."""

    def __init__(self, loaded: LoadedModel, token_ids, *, reuse_prefix: bool = True, block_size: int = 256):
        self.loaded = loaded
        self.ids = torch.as_tensor(token_ids, dtype=torch.long, device=loaded.input_device)[None]
        self.reuse_prefix = reuse_prefix
        self.block_size = block_size
        self._prefixes: dict[int, tuple[object, Observation]] = {}
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
        positions = [p for e in plan.module_edits + plan.attention_edits for p in e.positions]
        if not positions:
            return self.clean()
        p0 = min(positions)
        if not self.reuse_prefix or p0 < 1:
            return self._full(plan)
        return self._suffix(plan, p0)

    # -- forwards ---------------------------------------------------------------------------
    def _full(self, plan) -> Observation:
        self.forwards["full"] += 1
        self.forwards["tokens"] += self.length
        with Observer(self.loaded, block_size=self.block_size) as observer:
            if plan is None:
                out = self.loaded.model(input_ids=self.ids, use_cache=False)
            else:
                out = plan.forward(0, input_ids=self.ids, use_cache=False)
        return observer.collect(self.ids[0].tolist(), out.logits[0])

    MAX_PREFIXES = 2
    """Cached prefixes kept at once (targets and their controls usually start at two places)."""

    def _prefix_state(self, p0: int):
        if p0 not in self._prefixes:
            if len(self._prefixes) >= self.MAX_PREFIXES:
                self._prefixes.pop(next(iter(self._prefixes)))
            self.forwards["prefix"] += 1
            self.forwards["tokens"] += p0
            with Observer(self.loaded, block_size=self.block_size, keep_column_sums=True) as observer:
                out = self.loaded.model(input_ids=self.ids[:, :p0], use_cache=True, logits_to_keep=1)
            self._prefixes[p0] = (out.past_key_values, observer.collect(self.ids[0, :p0].tolist()))
        return self._prefixes[p0]

    def _suffix(self, plan, p0: int) -> Observation:
        cache, prefix = self._prefix_state(p0)
        clean = self.clean()
        self.forwards["suffix"] += 1
        self.forwards["tokens"] += self.length - p0
        try:
            with Observer(self.loaded, block_size=self.block_size, keep_column_sums=True,
                          references=prefix.references) as observer:
                out = plan.forward(p0, input_ids=self.ids[:, p0:], past_key_values=cache, use_cache=True)
            suffix = observer.collect(self.ids[0, p0:].tolist())
        finally:
            added = cache.get_seq_length() - p0
            if added > 0:
                cache.crop(-added)  # transformers 5: a negative count removes that many tokens
        T = self.length
        # Positions before p0 cannot change: take them from the clean forward itself (bit-identical).
        profiles = {k: np.concatenate([clean.profiles[k][:, :p0], suffix.profiles[k]], axis=1) for k in suffix.profiles}
        sums = suffix.column_sums.copy()  # [L, H, T]: suffix queries over all keys
        sums[..., :p0] += prefix.column_sums
        logits = torch.cat([clean.logits[:p0], out.logits[0].to(clean.logits.dtype)], dim=0)
        assert logits.shape[0] == T
        return Observation(token_ids=clean.token_ids, profiles=profiles, sink_scores=_column_sums_to_scores(sums),
                           logits=logits, references=prefix.references)
