"""Reading a site's output in one clean forward: the sites' modules and a capture pass with plain hooks.

Sites are named as pyvene's components (TransformerLens names in brackets): ``block_output``
(hook_resid_post, the decoder layer's output), ``attention_output`` (hook_attn_out, after
o_proj), ``mlp_output`` (hook_mlp_out). Kinds that need clean values (``mean_swap``'s means,
``add``'s directions, ``patch``'s sources) and :func:`interventions.observation` read them here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from interventions.models.adapters import decoder_layers, get_module
from interventions.spec.fields import SITES


def site_module(loaded, site: str, layer: int) -> torch.nn.Module:
    """The module whose output is ``site`` at ``layer``."""
    if site not in SITES:
        raise ValueError(f"{site!r} is not a site — use one of {', '.join(SITES)}")
    block = decoder_layers(loaded.model, loaded.adapter)[layer]
    if site == "block_output":
        return block
    # What is written into the residual stream: after Gemma3's post-attention / post-feedforward norms.
    return get_module(block, loaded.adapter.attention_output if site == "attention_output"
                      else loaded.adapter.mlp_output)


def output_tensor(output) -> torch.Tensor:
    """The hidden-state tensor of a module output (decoder layers and attention return tuples)."""
    return output[0] if isinstance(output, tuple) else output


@torch.inference_mode()
def capture_sites(loaded, token_ids, wanted: Iterable[tuple[str, int]],
                  reduce: Callable[[str, int, torch.Tensor], torch.Tensor] | None = None,
                  ) -> dict[tuple[str, int], torch.Tensor]:
    """One clean forward of ``token_ids``; for each ``(site, layer)`` in ``wanted`` its output [T, D].

    ``reduce(site, layer, values)`` replaces the kept value (e.g. a mean over some positions),
    so a long trace need not keep every [T, D]. Values stay on their layer's device (layers may
    be spread over GPUs) in the model's dtype.
    """
    wanted = list(dict.fromkeys(wanted))
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=loaded.input_device)
    ids = ids[None] if ids.dim() == 1 else ids
    kept: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def hook(site, layer):
        def fn(module, args, output):
            values = output_tensor(output)[0].detach()
            kept[(site, layer)] = reduce(site, layer, values) if reduce is not None else values.clone()
        return fn

    try:
        for site, layer in wanted:
            handles.append(site_module(loaded, site, layer).register_forward_hook(hook(site, layer)))
        if wanted:
            loaded.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    return kept
