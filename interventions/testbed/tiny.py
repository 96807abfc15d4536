"""Random-init tiny models of every supported family, for structural tests.

They carry no sinks worth the name; they check that observation and interventions run on
each architecture and that shapes follow the config (GQA, explicit head_dim, fused qkv).
"""

from __future__ import annotations

import torch

# One small config per family. Qwen3 gets a head_dim that differs from hidden/heads on purpose:
# code that assumes head_dim = hidden // heads breaks on it.
TINY_CONFIGS: dict[str, dict] = {
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=24),
    "llama": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1,
                    sliding_window=None),
    "phi3": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4),
    # Gemma3: head_dim != hidden/heads, sliding-window layers (4 keys) interleaved with global ones
    # (LAYER_PATTERNS), q/k norms, post-norms on both sublayer outputs, embeddings scaled by sqrt(hidden).
    "gemma3_text": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=32, sliding_window=4, query_pre_attn_scalar=32),
}
LAYER_PATTERNS: dict[str, tuple[str, ...]] = {"gemma3_text": ("sliding_attention", "full_attention")}
"""``layer_types`` repeated over the layers (even layers slide, odd ones are global)."""


def tiny_config(family: str, *, layers: int = 3, vocab: int = 258):
    from transformers import AutoConfig

    kwargs = dict(TINY_CONFIGS[family], num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=512,
                  pad_token_id=None, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    if family in LAYER_PATTERNS:
        pattern = LAYER_PATTERNS[family]
        kwargs["layer_types"] = [pattern[i % len(pattern)] for i in range(layers)]
    return AutoConfig.for_model(family, **kwargs)


def tiny_model(family: str, *, layers: int = 3, seed: int = 0, attn_implementation: str = "sdpa",
               dtype: torch.dtype = torch.float32):
    """A random-init causal LM of ``family`` (see ``TINY_CONFIGS``), eval mode, float32."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, layers=layers)
    config._attn_implementation = attn_implementation
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval().requires_grad_(False)


def save_tiny(family: str, folder, *, layers: int = 3, seed: int = 0) -> None:
    """Save a tiny model plus a byte-level tokenizer as an ordinary HF folder (for CLI tests)."""
    from .tokenizer_bytes import byte_tokenizer

    model = tiny_model(family, layers=layers, seed=seed)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
