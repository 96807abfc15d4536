"""What an attention mask does by arithmetic alone: the scores it predicts from the clean attention.

Masking keys M in a layer removes, from each query t, the mass m_t = sum_{k in M} a[t, k]. With
``redirect: none`` the softmax renormalises, so every remaining key's probability becomes
a[t, j] / (1 - m_t); with ``redirect: bos`` the removed mass is added to the primary sink,
a[t, 0] + m_t. Either way the primary sink's score moves even if nothing in the model reads the
masked keys: a change against the clean run alone is arithmetic, not compensation (H4).

:func:`predicted_key_scores` applies a mask to the *clean* layer's own queries and keys and
returns the sink score of one key (mean over heads, Eq. 1) that this arithmetic alone gives,
per masked layer. It runs one clean forward in which each masked layer's attention also
computes its column sums under each requested mask (the same blockwise code the edited forward
uses, so in the first masked layer, whose inputs are still clean, prediction and edited run
agree to float32 rounding: ``tests/test_renormalisation.py``). In later masked layers the edited
run's inputs carry whatever the earlier masked layers changed, so observed minus predicted is
the part of the change that is *not* renormalisation.

Why hand-written: no library computes counterfactual attention column sums inside a forward;
this reuses :func:`interventions.models.attention.blockwise_attention`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch

from interventions.models.attention import AttentionEdit, blockwise_attention, make_hookable


class _PredictionProbe:
    """Per-layer probe: the model's own attention runs untouched (no ``column_sums`` request)."""

    column_sums = None

    def __init__(self, edits: dict[Hashable, AttentionEdit], key: int, out: dict):
        self.edits, self.key, self.out = edits, key, out

    def __call__(self, module, query, key, value, attention_mask, kwargs, sums) -> None:
        q_len, k_len = query.shape[2], key.shape[2]
        if self.key >= k_len:
            return
        queries_seeing = k_len - max(self.key, k_len - q_len)

        def column_sums(edit):
            return blockwise_attention(
                query, key, None, attention_mask, kwargs.get("scaling") or module.scaling,
                sliding_window=kwargs.get("sliding_window"), softcap=kwargs.get("softcap"), edit=edit,
            )[1].total[0]   # [H, S]

        clean = column_sums(None)
        for plan, edit in self.edits.items():
            keys = [k for k in edit.masked_keys if k < k_len]
            self.out[plan] = {
                "score": float(column_sums(edit)[:, self.key].mean()) / max(queries_seeing, 1),
                # the attention the mask takes away, per query (mean over heads and queries)
                "removed": float(clean[:, keys].sum(dim=-1).mean()) / q_len if keys else 0.0,
            }


@torch.inference_mode()
def predicted_key_scores(loaded, token_ids, plans: Mapping[Hashable, Mapping[int, AttentionEdit]], key: int
                         ) -> dict[Hashable, dict[int, dict[str, float]]]:
    """Sink score of ``key`` that each plan's masks give when applied to the clean attention.

    Args:
        loaded: a :class:`~interventions.models.load.LoadedModel`.
        token_ids: the trace.
        plans: plan id -> {layer: the :class:`AttentionEdit` installed there}.
        key: the key whose score is predicted (the reference primary sink).

    Returns:
        plan id -> {layer: {"score": predicted score (mean over heads of the column sum / queries
        that see the key), "removed": clean attention mass on the masked keys per query (mean over
        heads and queries)}}, for every layer of the plan.
    """
    from interventions.models.adapters import decoder_layers, get_module

    by_layer: dict[int, dict[Hashable, AttentionEdit]] = {}
    for plan, layers in plans.items():
        for layer, edit in layers.items():
            by_layer.setdefault(int(layer), {})[plan] = edit
    if not by_layer:
        return {}
    make_hookable(loaded.model)
    blocks = decoder_layers(loaded.model, loaded.adapter)
    results: dict[int, dict] = {layer: {} for layer in by_layer}
    touched = []
    try:
        for layer, edits in by_layer.items():
            attn = get_module(blocks[layer], loaded.adapter.attention)
            attn._interventions_probe = _PredictionProbe(edits, key, results[layer])
            touched.append(attn)
        ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=loaded.input_device)[None]
        loaded.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        for attn in touched:
            if hasattr(attn, "_interventions_probe"):
                del attn._interventions_probe
    out: dict[Hashable, dict[int, dict[str, float]]] = {plan: {} for plan in plans}
    for layer, per_plan in results.items():
        for plan, values in per_plan.items():
            out[plan][layer] = values
    return out
