"""``mean_swap``: write the mean non-sink vector of the same trace and layer at the targets (H3).

The mean comes from the clean run: the average of the site's output over every position that
is not a sink (primary or secondary) in that trace, at that layer (the paper's footnote 3).
"""

from __future__ import annotations

import torch


def pyvene_intervention(edit, dims):
    from ..compiler.pyvene_compat import pv

    VanillaIntervention = pv.VanillaIntervention

    return VanillaIntervention(source_representation=edit.vector, embed_dim=dims["hidden"])


def reference_value(edit, original: torch.Tensor) -> torch.Tensor:
    return edit.vector.to(original.dtype).expand_as(original).clone()


@torch.inference_mode()
def site_means(loaded, token_ids, exclude: set[int], sites) -> dict[str, list[torch.Tensor]]:
    """Mean output of each site over the non-excluded positions, per layer: site -> L vectors [D].

    Each vector stays on its layer's device (layers may be spread over GPUs), where its edit runs.

    One clean forward with plain hooks (no observation, no logits beyond the last position).
    """
    from ..adapters import decoder_layers, get_module

    ids = torch.as_tensor(token_ids, dtype=torch.long, device=loaded.input_device)[None]
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[sorted(p for p in exclude if p < ids.shape[1])] = False
    if not keep.any():
        raise ValueError("every position is a sink; there is no ordinary token to average")
    layers = decoder_layers(loaded.model, loaded.adapter)
    means: dict[str, list] = {s: [None] * len(layers) for s in sites}
    modules = {"block_output": lambda b: b,
               "attention_output": lambda b: get_module(b, loaded.adapter.attention_output),
               "mlp_output": lambda b: get_module(b, loaded.adapter.mlp_output)}
    handles = []

    def hook(site, idx):
        def fn(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            means[site][idx] = out[0, keep.to(out.device)].float().mean(0)
        return fn

    try:
        for idx, block in enumerate(layers):
            for site in sites:
                handles.append(modules[site](block).register_forward_hook(hook(site, idx)))
        loaded.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    dtype = next(loaded.model.parameters()).dtype
    return {s: [m.to(dtype) for m in v] for s, v in means.items()}
