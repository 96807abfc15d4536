"""One hookable attention function for every supported family.

Attention probabilities in Qwen/Llama-style models are computed inside a function, not a
module, so neither forward hooks nor pyvene can see them (and sdpa never materialises them).
transformers 5 looks the function up by name in ``AttentionInterface``; we register wrapped
versions of ``sdpa`` and ``eager`` under ``interventions-sdpa`` / ``interventions-eager``.
The wrapper receives query, key and value *after* the model applied its projections, q/k
norms and rotary embedding, so whatever we compute from them matches the model exactly.

Per attention module, two optional attributes switch behaviour on:

* ``module._interventions_edit``: an :class:`AttentionEdit` (the ``attention_mask``
  intervention). The layer's attention is then computed explicitly, a block of queries at a
  time, with the edited probabilities.
* ``module._interventions_probe(module, query, key, value, mask, kwargs)``: called after the
  attention runs (observation: sink scores, key/value norms). Never changes the output; it
  sees the same edit, so measured sink scores are those of the edited attention.

Layers without these attributes run the base function unchanged, so they stay bit-identical.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

BASE_IMPLEMENTATIONS = ("sdpa", "eager")
PREFIX = "interventions-"


def base_attention(module, base_name: str):
    """The function the model would call without our wrapper.

    ``sdpa`` is registered globally; ``eager`` is not: every HF model file defines its own
    ``eager_attention_forward`` (some add attention sinks or softcapping), so take the one
    from the module that defines this attention class.
    """
    if base_name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface._global_mapping[base_name]


@dataclass(frozen=True)
class AttentionEdit:
    """Remove keys from every query's attention in one layer.

    The removed keys get probability exactly 0. With ``redirect_to`` None the softmax
    renormalises over the remaining keys; otherwise the removed mass is added to key
    ``redirect_to`` (e.g. 0, the primary sink) and the other probabilities are unchanged.
    """

    masked_keys: tuple[int, ...]
    """Absolute key positions no query may attend to."""
    redirect_to: int | None = None


def _wrap(base_name: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        edit = getattr(module, "_interventions_edit", None)
        if edit is not None:
            out = edited_attention(module, query, key, value, attention_mask, kwargs, edit)
        else:
            out = base_attention(module, base_name)(module, query, key, value, attention_mask, **kwargs)
        probe = getattr(module, "_interventions_probe", None)
        if probe is not None:
            probe(module, query, key, value, attention_mask, kwargs)
        return out

    attention.__name__ = f"interventions_{base_name}_attention"
    return attention


for _name in BASE_IMPLEMENTATIONS:
    AttentionInterface.register(PREFIX + _name, _wrap(_name))
    # Without the matching mask entry transformers builds no causal/padding mask at all.
    AttentionMaskInterface.register(PREFIX + _name, AttentionMaskInterface._global_mapping[_name])


def make_hookable(model) -> str:
    """Switch ``model`` to the wrapped version of its attention implementation (idempotent).

    Returns the base implementation name (``sdpa`` or ``eager``).
    """
    current = model.config._attn_implementation
    base = current[len(PREFIX):] if current.startswith(PREFIX) else current
    if base not in BASE_IMPLEMENTATIONS:
        raise ValueError(
            f"attention implementation {base!r} cannot be hooked; use one of {', '.join(BASE_IMPLEMENTATIONS)}"
        )
    if not current.startswith(PREFIX):
        model.set_attn_implementation(PREFIX + base)
    return base


def repeat_kv(key: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, Hkv, S, D] -> [B, Hkv*groups, S, D], the GQA expansion the models use."""
    return key if groups == 1 else key.repeat_interleave(groups, dim=1)


def _mask_block(attention_mask, t0: int, t1: int, q_len: int, k_len: int, device, sliding_window=None,
                k_end: int | None = None):
    """Boolean keep-mask [B|1, 1, t1-t0, k_end] for query rows t0:t1 over keys 0:k_end (True = may attend)."""
    k_end = k_len if k_end is None else k_end
    if attention_mask is None:
        # sdpa passes no mask for a plain causal batch: query i sits at absolute k_len - q_len + i.
        rows = torch.arange(t0, t1, device=device)[:, None] + (k_len - q_len)
        cols = torch.arange(k_end, device=device)[None, :]
        keep = cols <= rows
        if sliding_window is not None:
            keep &= cols > rows - sliding_window
        return keep[None, None]
    block = attention_mask[..., t0:t1, :k_end]
    if block.dtype == torch.bool:
        return block
    return block > torch.finfo(block.dtype).min / 2  # eager: additive mask, min-value = masked


def attention_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    *,
    block_size: int = 256,
    sliding_window: int | None = None,
    softcap: float | None = None,
    edit: AttentionEdit | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(t0, probs)`` for query blocks: probs is float32 [B, H, block, K_block].

    Exactly the softmax the model computes (causal mask, GQA, scaling, softcap), computed a
    block of queries at a time so no T x T matrix is ever held, with ``edit`` applied. Every
    supported model is a causal decoder, so a block's queries never see a key after its last
    query: ``K_block = S - T + t1`` keys (the rest would be probability 0), which halves the work.
    """
    bsz, heads, q_len, _ = query.shape
    k_len = key.shape[2]
    key_f = repeat_kv(key, heads // key.shape[1]).float()
    removed = None
    if edit is not None and edit.masked_keys:
        removed = torch.zeros(k_len, dtype=torch.bool, device=query.device)
        removed[[k for k in edit.masked_keys if k < k_len]] = True
    for t0 in range(0, q_len, block_size):
        t1 = min(q_len, t0 + block_size)
        k_end = min(k_len, k_len - q_len + t1)
        scores = torch.matmul(query[:, :, t0:t1].float(), key_f[:, :, :k_end].transpose(-1, -2))
        scores.mul_(scaling)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        keep = _mask_block(attention_mask, t0, t1, q_len, k_len, query.device, sliding_window, k_end)
        if removed is not None and edit.redirect_to is None:
            keep = keep & ~removed[None, None, None, :k_end]
        probs = torch.softmax(scores.masked_fill_(~keep, float("-inf")), dim=-1)
        if removed is not None:
            probs.nan_to_num_(nan=0.0)  # a query whose every key was removed attends to nothing
            if edit.redirect_to is not None:
                cut = removed[:k_end]
                moved = probs[..., cut].sum(dim=-1)
                probs[..., cut] = 0.0
                probs[..., edit.redirect_to] += moved
        yield t0, probs


def edited_attention(module, query, key, value, attention_mask, kwargs, edit: AttentionEdit):
    """Attention output with ``edit`` applied, in the layout sdpa/eager return: [B, Q, H, D]."""
    heads = query.shape[1]
    value_f = repeat_kv(value, heads // value.shape[1]).float()
    out = torch.empty(query.shape[0], heads, query.shape[2], value.shape[-1], dtype=torch.float32,
                      device=query.device)
    for t0, probs in attention_probabilities(
        query, key, attention_mask, kwargs.get("scaling") or module.scaling,
        sliding_window=kwargs.get("sliding_window"), softcap=kwargs.get("softcap"), edit=edit,
    ):
        out[:, :, t0:t0 + probs.shape[2]] = torch.matmul(probs, value_f[:, :, :probs.shape[-1]])
    return out.to(value.dtype).transpose(1, 2).contiguous(), None


def attention_column_sums(query, key, attention_mask, scaling, **kwargs) -> torch.Tensor:
    """Sum over queries of attention probabilities: float32 [B, H, S]."""
    bsz, heads, _, _ = query.shape
    sums = torch.zeros(bsz, heads, key.shape[2], dtype=torch.float32, device=query.device)
    for _, probs in attention_probabilities(query, key, attention_mask, scaling, **kwargs):
        sums[..., :probs.shape[-1]] += probs.sum(dim=-2)
    return sums


def attention_column_sums_split(query, key, attention_mask, scaling, boundaries, **kwargs
                                ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Column sums over all queries, and for each ``b`` in ``boundaries`` over queries ``< b`` and keys ``< b``.

    For a forward from position 0: what a forward over the first ``b`` tokens alone would sum
    (causal attention: those queries never see a later key), from the same pass.
    """
    bsz, heads, q_len, _ = query.shape
    sums = torch.zeros(bsz, heads, key.shape[2], dtype=torch.float32, device=query.device)
    pending = sorted({int(b) for b in boundaries if 0 < int(b) <= q_len})
    partial: dict[int, torch.Tensor] = {}
    for t0, probs in attention_probabilities(query, key, attention_mask, scaling, **kwargs):
        t1 = t0 + probs.shape[2]
        while pending and pending[0] <= t1:  # sums so far are queries < t0; add this block's rows < b
            b = pending.pop(0)
            partial[b] = (sums[..., :b] + probs[:, :, :b - t0, :b].sum(dim=-2))
        sums[..., :probs.shape[-1]] += probs.sum(dim=-2)
    return sums, partial


def sink_scores_from_column_sums(column_sums: torch.Tensor, q_len: int) -> torch.Tensor:
    """Eq. 1 of the paper: score_k = (1/(T-k)) * sum_{t>=k} a[t,k], for a full causal sequence.

    column_sums: [..., S] with S == T (no cache). Returns the same shape.
    """
    k_len = column_sums.shape[-1]
    # Queries that can see key k: those at absolute positions >= k, i.e. (k_len - k) of them
    # when the sequence was processed from position 0; with a cache prefix only the new ones.
    first_query = k_len - q_len
    k = torch.arange(k_len, device=column_sums.device, dtype=torch.float32)
    counts = (k_len - torch.clamp(k, min=first_query)).clamp(min=1)
    return column_sums / counts
