"""The architecture table: every difference between supported model families lives here.

Nothing outside this module branches on architecture. Each entry maps canonical sites to
module paths relative to the model's decoder layer, keyed by the HF ``config.model_type``
(the same key transformers itself uses to pick a class), never by a model-name substring.

To add an architecture: add one :class:`Adapter` row below, add its tiny config to
``interventions/testbed/tiny.py``, and run ``pytest tests/test_observe.py``.

What the table does *not* need to say: query/key/value tensors, rotary embeddings, GQA and
q/k norms are read inside the attention function after the model has applied them
(see ``interventions/models/attention.py``), so fused projections (Phi-3's ``qkv_proj``) and
per-head norms (Qwen3's ``k_norm``) need no entry. Gemma3's sliding-window layers and its
``query_pre_attn_scalar`` scaling also arrive as arguments of the attention function, and its
embedding scale (x sqrt(hidden)) is inside its embedding module.

What it must say: which module's output is *written into the residual stream*. In Llama-like
blocks that is the MLP (attention) module itself; Gemma2/3 normalise both outputs again before
the residual add (``post_feedforward_layernorm``, ``post_attention_layernorm``), so the sites
``mlp_output``/``attention_output`` are those norms' outputs there. An edit on the raw MLP output
would be rescaled by the RMSNorm that follows (zeroing survives, but scaling by 5 is undone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interventions.errors import UserError


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
    attention_out_proj: str = "o_proj"
    """Output projection inside the attention module (its input holds every head's output: per-head measures)."""
    mlp: str = "mlp"
    """MLP module inside a decoder layer; its input is the MLP input x_t^l."""
    mlp_output: str = "mlp"
    """Module whose output is what the MLP writes into the residual stream: the MLP output f_t^l
    (``h = h_mid + f``). The MLP itself, except where a norm follows it (Gemma3)."""
    attention_output: str = "self_attn"
    """Module whose output is what attention writes into the residual stream: o_t^l."""
    final_norm: str = "model.norm"
    """Final norm before the LM head (the paper's released detector reads the last layer after it)."""
    pyvene_like: str = "Qwen2ForCausalLM"
    """The pyvene-registered class whose component table this family can reuse."""
    qkv_bias: bool = False
    """q/k/v projections always carry biases (Qwen2), whatever ``attention_bias`` says (memory estimate)."""
    qk_norm: bool = False
    """Per-head RMSNorms on queries and keys (Qwen3, Gemma3) (memory estimate)."""
    layer_norms: int = 2
    """Hidden-width norms per decoder layer (memory estimate): 2 in Llama-like blocks, 4 in Gemma3."""
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
        # Text-only Gemma 3 (Gemma3ForCausalLM). Its block: h_mid = h + post_attention_layernorm(attn(...)),
        # h' = h_mid + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h_mid))).
        Adapter("gemma3_text", "Gemma3ForCausalLM", pyvene_like="Gemma2ForCausalLM",
                mlp_output="post_feedforward_layernorm", attention_output="post_attention_layernorm",
                qk_norm=True, layer_norms=4, families=("Gemma-3",)),
    )
}


def adapter_for(config) -> Adapter:
    """Return the adapter for a HF config, or raise a one-line error naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        supported = ", ".join(f"{a.model_type} ({a.hf_class})" for a in ADAPTERS.values())
        raise UserError(
            f"architecture {model_type!r} is not supported; supported: {supported}. "
            "Add a row to interventions/models/adapters.py to support it.",
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



def mlp_to_residual(block: torch.nn.Module, adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
    """What the MLP of ``block`` writes into the residual stream for MLP input ``x`` (post-norm included)."""
    out = get_module(block, adapter.mlp)(x)
    out = out[0] if isinstance(out, tuple) else out
    if adapter.mlp_output != adapter.mlp:
        out = get_module(block, adapter.mlp_output)(out)
    return out


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
