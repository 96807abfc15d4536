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
* ``module._interventions_probe(module, query, key, value, mask, kwargs, sums)``: called after
  the attention runs (observation: sink scores, key/value norms). If the probe carries a
  ``column_sums`` :class:`ColumnSumRequest`, the layer's attention is computed by the fused
  pass (:func:`blockwise_attention`: output and column sums from the same blocks, one Q.K^T,
  one softmax, one P.V) and ``sums`` holds the column sums; with ``exact`` the base function's
  output stays in place and the sums come from a second pass. The probe sees the same edit, so
  measured sink scores are those of the edited attention.

Layers without these attributes run the base function unchanged, so they stay bit-identical.
Observed layers without ``exact`` differ from sdpa/eager by float32 rounding only (the fused
pass sums in a different order; tests/test_fused_attention.py states and asserts the bound).
"""

from __future__ import annotations

import sys
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

    masked_keys: tuple[int, ...] = ()
    """Absolute key positions no query may attend to."""
    redirect_to: int | None = None
    window: int | None = None
    """Streaming eviction (StreamingLLM's StartRecent cache): a query at absolute position p sees
    only keys p - window < j <= p, plus the first ``keep_first`` keys. None: no eviction."""
    keep_first: int = 0
    """With ``window``: the first keys every query keeps (the attention sinks StreamingLLM keeps)."""


def _wrap(base_name: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        edit = getattr(module, "_interventions_edit", None)
        probe = getattr(module, "_interventions_probe", None)
        request: ColumnSumRequest | None = getattr(probe, "column_sums", None)
        sums = None
        if edit is not None or (request is not None and not request.exact):
            out, sums = fused_attention(module, query, key, value, attention_mask, kwargs, edit=edit, request=request)
        else:
            out = base_attention(module, base_name)(module, query, key, value, attention_mask, **kwargs)
            if request is not None:  # exact: the model's own output, column sums from a second pass
                sums = blockwise_attention(
                    query, key, None, attention_mask, kwargs.get("scaling") or module.scaling,
                    block_size=request.block_size, sliding_window=kwargs.get("sliding_window"),
                    softcap=kwargs.get("softcap"), boundaries=request.boundaries, entropy=request.entropy)[1]
        if probe is not None:
            probe(module, query, key, value, attention_mask, kwargs, sums)
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


BLOCK_BUDGET = 1 << 24
"""Most float32 scores held at once per layer (64 MiB): the query block shrinks as T grows, so the
working set of the fused pass stays constant and peak memory grows linearly in T."""


def query_block(heads: int, k_len: int, block_size: int | None = None) -> int:
    """Queries per block: ``block_size`` at most, and no more than fit ``BLOCK_BUDGET`` scores."""
    fit = max(16, BLOCK_BUDGET // max(1, heads * k_len) // 16 * 16)
    return max(1, min(block_size or 256, fit))


@dataclass
class ColumnSums:
    """Attention probabilities summed over this forward's queries, per key."""

    total: torch.Tensor
    """float32 [B, H, S]."""
    prefix: dict[int, torch.Tensor]
    """``b`` -> float32 [B, H, b]: queries < b over keys < b (see ``attention_column_sums_split``)."""
    entropy: torch.Tensor | None = None
    """float32 [B, H]: Shannon entropy (nats) of each query's attention row, summed over queries
    (only when the request asks for ``entropy``; per-head measures)."""


@dataclass(frozen=True)
class ColumnSumRequest:
    """What an observer asks the attention function for (``probe.column_sums``)."""

    block_size: int | None = None
    """Queries per block at most (None: 256, fewer when T is long; see ``query_block``)."""
    boundaries: tuple[int, ...] = ()
    entropy: bool = False
    """Also sum each query's attention entropy per head (``ColumnSums.entropy``)."""
    exact: bool = False
    """Leave the model's own attention output (sdpa/eager) in place and compute the column sums in
    a second pass: bit-identical logits, at about twice the attention cost. Otherwise the layer's
    output comes from the fused pass, which equals sdpa's within float32 rounding."""


def blockwise_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    scaling: float,
    *,
    block_size: int | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    edit: AttentionEdit | None = None,
    column_sums: bool = True,
    boundaries=(),
    entropy: bool = False,
) -> tuple[torch.Tensor | None, ColumnSums | None]:
    """Attention output and column sums from one pass over query blocks.

    For each block of queries: one Q.K^T (the query heads of a kv group batched against their
    shared keys, so GQA keys are never repeated), the causal mask on the diagonal tile only, one
    softmax in place, one P.V (skipped when ``value`` is None) and one sum over the block's rows.
    Every supported model is a causal decoder, so a block never looks at keys after its last
    query: half the work of a full T x T pass. Scores, softmax and sums are float32 whatever the
    model's dtype (bf16 on a GPU: float32 accumulation); the output is cast back to it.

    Returns the output in the layout sdpa/eager return, [B, Q, H, D] (None without ``value``), and
    the column sums (None unless ``column_sums``), with the prefix sums for ``boundaries`` and,
    with ``entropy``, each head's row entropies summed over queries (0 log 0 = 0).
    """
    bsz, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    device = query.device
    n_max = query_block(heads, k_len, block_size)
    key_f = key.float()
    value_f = value.float() if value is not None else None
    out = None
    if value is not None:
        out = torch.empty(bsz, q_len, heads, value.shape[-1], dtype=value.dtype, device=device)
    sums = torch.zeros(bsz, heads, k_len, dtype=torch.float32, device=device) if column_sums else None
    wanted = sorted({int(b) for b in boundaries if 0 < int(b) <= q_len}) if column_sums else []
    partial: dict[int, torch.Tensor] = {}
    entropy_sums = torch.zeros(bsz, heads, dtype=torch.float32, device=device) if entropy and column_sums else None
    removed = None
    if edit is not None and edit.masked_keys:
        removed = torch.tensor(sorted({k for k in edit.masked_keys if k < k_len}), dtype=torch.long, device=device)
    # Preallocated once per layer: fresh multi-MB tensors per block cost page faults (system time).
    on_cpu = device.type == "cpu"
    scores_buf = torch.empty(kv_heads * groups * n_max * k_len, dtype=torch.float32, device=device)
    query_buf = torch.empty(kv_heads * groups * n_max * dim, dtype=torch.float32, device=device)
    out_buf = torch.empty(kv_heads * groups * n_max * value.shape[-1], dtype=torch.float32, device=device) \
        if value is not None else None
    causal_tile = None
    evict = edit is not None and edit.window is not None
    explicit_mask = attention_mask is not None or sliding_window is not None or evict
    if not explicit_mask:  # -inf above the diagonal of a square tile
        causal_tile = torch.full((n_max, n_max), float("-inf"), device=device).triu_(1)

    for b in range(bsz):
        pending = list(wanted)
        q_b = query[b].view(kv_heads, groups, q_len, dim)
        k_b, v_b = key_f[b], value_f[b] if value_f is not None else None
        mask_b = attention_mask[b if attention_mask.shape[0] > 1 else 0][None] \
            if attention_mask is not None else None
        for t0 in range(0, q_len, n_max):
            t1 = min(q_len, t0 + n_max)
            n = t1 - t0
            k_end = min(k_len, k_len - q_len + t1)  # keys this block's last query can see
            qb = query_buf[:kv_heads * groups * n * dim].view(kv_heads, groups, n, dim)
            qb.copy_(q_b[:, :, t0:t1]).mul_(scaling)
            s = scores_buf[:kv_heads * groups * n * k_end].view(kv_heads, groups * n, k_end)
            torch.bmm(qb.view(kv_heads, groups * n, dim), k_b[:, :k_end].transpose(1, 2), out=s)
            s4 = s.view(kv_heads, groups, n, k_end)
            if softcap is not None:
                s.div_(softcap).tanh_().mul_(softcap)
            if explicit_mask:
                keep = _mask_block(mask_b, t0, t1, q_len, k_len, device, sliding_window, k_end)
                if evict:  # StartRecent: the first keep_first keys plus the last `window` ones
                    rows = torch.arange(t0, t1, device=device)[:, None] + (k_len - q_len)
                    cols = torch.arange(k_end, device=device)[None, :]
                    keep = keep & ((cols > rows - edit.window) | (cols < edit.keep_first))
                s4.masked_fill_(~keep, float("-inf"))
            else:
                s4[..., k_end - n:k_end].add_(causal_tile[:n, :n])
            if removed is not None and edit.redirect_to is None:
                s.index_fill_(-1, removed[removed < k_end], float("-inf"))
            if on_cpu:  # the CPU kernel works a row at a time: in place is safe and saves a buffer
                torch.ops.aten._softmax.out(s, -1, False, out=s)
            else:
                s = s4 = torch.softmax(s, dim=-1).view(kv_heads, groups, n, k_end)
                s = s.view(kv_heads, groups * n, k_end)
            if removed is not None:
                s.nan_to_num_(nan=0.0)  # a query whose every key was removed attends to nothing
                if edit.redirect_to is not None:
                    cut = removed[removed < k_end]
                    moved = s.index_select(-1, cut).sum(dim=-1)
                    s.index_fill_(-1, cut, 0.0)
                    s[..., edit.redirect_to] += moved
            if v_b is not None:
                o = out_buf[:kv_heads * groups * n * v_b.shape[-1]].view(kv_heads, groups * n, -1)
                torch.bmm(s, v_b[:, :k_end], out=o)
                out[b, t0:t1].view(n, kv_heads, groups, -1).copy_(o.view(kv_heads, groups, n, -1).permute(2, 0, 1, 3))
            if sums is not None:
                block_sums = s4.sum(dim=2)  # [Hkv, G, k_end]
                while pending and pending[0] <= t1:  # sums so far are queries < t0; add this block's rows < b
                    cut_at = pending.pop(0)
                    rows = s4[:, :, :cut_at - t0, :cut_at].sum(dim=2).reshape(heads, cut_at)
                    partial[cut_at] = partial.get(cut_at, torch.zeros(bsz, heads, cut_at, device=device))
                    partial[cut_at][b] = sums[b, :, :cut_at] + rows
                sums[b, :, :k_end] += block_sums.view(heads, k_end)
                if entropy_sums is not None:
                    entropy_sums[b] -= torch.special.xlogy(s4, s4).sum(dim=(2, 3)).view(heads)
    return out, (ColumnSums(sums, partial, entropy_sums) if sums is not None else None)


def fused_attention(module, query, key, value, attention_mask, kwargs, *, edit: AttentionEdit | None = None,
                    request: ColumnSumRequest | None = None):
    """The layer's attention output [B, Q, H, D] and, if ``request``, its column sums, from one pass."""
    out, sums = blockwise_attention(
        query, key, value, attention_mask, kwargs.get("scaling") or module.scaling,
        block_size=request.block_size if request else None, sliding_window=kwargs.get("sliding_window"),
        softcap=kwargs.get("softcap"), edit=edit, column_sums=request is not None,
        boundaries=request.boundaries if request else (), entropy=request.entropy if request else False,
    )
    return (out, None), sums


def edited_attention(module, query, key, value, attention_mask, kwargs, edit: AttentionEdit):
    """Attention output with ``edit`` applied, in the layout sdpa/eager return: [B, Q, H, D]."""
    return fused_attention(module, query, key, value, attention_mask, kwargs, edit=edit)[0]


def attention_column_sums(query, key, attention_mask, scaling, **kwargs) -> torch.Tensor:
    """Sum over queries of attention probabilities: float32 [B, H, S]."""
    return blockwise_attention(query, key, None, attention_mask, scaling, **kwargs)[1].total


def attention_column_sums_split(query, key, attention_mask, scaling, boundaries, **kwargs
                                ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Column sums over all queries, and for each ``b`` in ``boundaries`` over queries ``< b`` and keys ``< b``.

    For a forward from position 0: what a forward over the first ``b`` tokens alone would sum
    (causal attention: those queries never see a later key), from the same pass.
    """
    sums = blockwise_attention(query, key, None, attention_mask, scaling, boundaries=boundaries, **kwargs)[1]
    return sums.total, sums.prefix


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
