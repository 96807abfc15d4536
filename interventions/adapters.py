"""The architecture table: every difference between supported model families lives here.

Nothing outside this module branches on architecture. Each entry maps canonical sites to
module paths relative to the model's decoder layer, keyed by the HF ``config.model_type``
(the same key transformers itself uses to pick a class), never by a model-name substring.

To add an architecture: add one :class:`Adapter` row below, add its tiny config to
``interventions/testbed/tiny.py``, and run ``pytest tests/test_observe.py``.

What the table does *not* need to say: query/key/value tensors, rotary embeddings, GQA and
q/k norms are read inside the attention function after the model has applied them
(see ``interventions/attention.py``), so fused projections (Phi-3's ``qkv_proj``) and
per-head norms (Qwen3's ``k_norm``) need no entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError


@dataclass(frozen=True)
class Adapter:
    """Where the canonical sites of one decoder-only family live."""

    model_type: str
    """``config.model_type`` of the family."""
    hf_class: str
    """The causal-LM class transformers builds for it (for the error message and docs)."""
    layers: str = "model.layers"
    """Path from the causal LM to the list of decoder layers."""
    attention: str = "self_attn"
    """Attention module inside a decoder layer; its output is the attention output o_t^l."""
    mlp: str = "mlp"
    """MLP module inside a decoder layer; its output is the MLP output f_t^l."""
    pyvene_like: str = "Qwen2ForCausalLM"
    """The pyvene-registered class whose component table this family can reuse."""
    qkv_bias: bool = False
    """q/k/v projections always carry biases (Qwen2), whatever ``attention_bias`` says (memory estimate)."""
    qk_norm: bool = False
    """Per-head RMSNorms on queries and keys (Qwen3) (memory estimate)."""
    families: tuple[str, ...] = ()
    """Models of the paper this entry serves (documentation only)."""


ADAPTERS: dict[str, Adapter] = {
    a.model_type: a
    for a in (
        Adapter("qwen2", "Qwen2ForCausalLM", pyvene_like="Qwen2ForCausalLM", qkv_bias=True,
                families=("Qwen2", "Qwen2.5", "Qwen2.5-Math", "QwQ", "DeepSeek-R1-Distill-Qwen")),
        Adapter("qwen3", "Qwen3ForCausalLM", pyvene_like="Qwen2ForCausalLM", qk_norm=True, families=("Qwen3",)),
        Adapter("llama", "LlamaForCausalLM", pyvene_like="LlamaForCausalLM",
                families=("Llama-3.1", "CodeLlama", "DeepSeek-R1-Distill-Llama", "SmolLM2")),
        Adapter("mistral", "MistralForCausalLM", pyvene_like="MistralForCausalLM", families=("Mistral", "Mathstral")),
        Adapter("phi3", "Phi3ForCausalLM", pyvene_like="LlamaForCausalLM", families=("Phi-3", "Phi-4")),
    )
}


def adapter_for(config) -> Adapter:
    """Return the adapter for a HF config, or raise a one-line error naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        supported = ", ".join(f"{a.model_type} ({a.hf_class})" for a in ADAPTERS.values())
        raise UserError(
            f"architecture {model_type!r} is not supported; supported: {supported}. "
            "Add a row to interventions/adapters.py to support it.",
            field="model",
        )
    return ADAPTERS[model_type]


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """Resolve a dotted path such as ``model.layers`` under ``root``."""
    module = root
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def decoder_layers(model: torch.nn.Module, adapter: Adapter) -> list[torch.nn.Module]:
    return list(get_module(model, adapter.layers))



def model_dims(config) -> dict[str, int]:
    """Layer, head and width counts read from a config (no weights needed)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    return {
        "layers": text.num_hidden_layers,
        "heads": heads,
        "kv_heads": getattr(text, "num_key_value_heads", None) or heads,
        "hidden": text.hidden_size,
        "head_dim": getattr(text, "head_dim", None) or text.hidden_size // heads,
        "max_positions": getattr(text, "max_position_embeddings", None) or 0,
        "vocab": text.vocab_size,
        "intermediate": text.intermediate_size,
    }
