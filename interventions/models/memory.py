"""Will it fit? A memory estimate from the config alone, checked before any weights load.

The estimate is deliberately simple and errs high: every term is a tensor the code really
holds at its peak, written out so a surprise can be traced to one line.

* weights: the parameter count from the config (embeddings, attention with GQA and biases,
  gated MLP, norms, untied LM head) x the bytes of the load dtype;
* the observation pass at the longest trace T: one block of attention probabilities
  (``block_size x T x heads``, float32, three live copies: scores, mask, softmax), the float32
  keys repeated over heads, the MLP's intermediate activations, a few ``T x hidden`` states, and
  (``attn_implementation: eager``) the full ``heads x T x T`` attention the model materialises;
* runs only: logits ``T x vocab`` in the load dtype (the clean ones kept, an intervened one and
  its stitched copy) plus float32 log-softmaxes of one chunk of positions (KL and NLL are
  computed ``DIVERGENCE_CHUNK`` positions at a time), the clean KV cache and one cropped copy
  (prefix reuse), and the per-layer observation arrays.

:func:`check_memory` compares it with what is free (``psutil`` for the CPU, ``torch.cuda.mem_get_info``
for GPUs) and refuses with one line unless forced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interventions.errors import UserError

from .adapters import adapter_for, model_dims

DIVERGENCE_CHUNK = 1024
"""Positions per chunk in :func:`~interventions.measures.divergence.next_token_divergence` (bounds its float32
T x vocab temporaries); defined here, below the measures stage, because the memory estimate budgets it."""

GIB = 1024 ** 3


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def parameter_count(config) -> int:
    """Parameters of a Llama-like decoder (Qwen2/3, Llama, Mistral, Phi-3, Gemma3) from its config.

    Family differences (Qwen2's q/k/v biases, Qwen3's and Gemma3's per-head q/k norms, Gemma3's four
    norms per layer) come from the adapter table.
    """
    adapter = adapter_for(config)
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    dims = model_dims(config)
    d, n_layers, vocab, heads, kv, hd, inter = (dims[k] for k in ("hidden", "layers", "vocab", "heads", "kv_heads",
                                                                  "head_dim", "intermediate"))
    attn_bias = bool(getattr(c, "attention_bias", False))
    qkv_bias = attn_bias or adapter.qkv_bias
    mlp_bias = bool(getattr(c, "mlp_bias", False))
    attention = d * heads * hd + 2 * d * kv * hd + heads * hd * d
    attention += (heads * hd + 2 * kv * hd) * qkv_bias + d * attn_bias
    mlp = 3 * d * inter + (2 * inter + d) * mlp_bias
    norms = adapter.layer_norms * d + (2 * hd if adapter.qk_norm else 0)
    embed = vocab * d
    head = 0 if getattr(c, "tie_word_embeddings", False) else vocab * d
    return embed + head + d + n_layers * (attention + mlp + norms)


@dataclass
class MemoryEstimate:
    """Bytes needed at the peak, by part (see the module docstring)."""

    parameters: int
    dtype: torch.dtype
    tokens: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def weights_bytes(self) -> int:
        return self.parts["weights"]

    @property
    def working_bytes(self) -> int:
        return self.total_bytes - self.weights_bytes

    @property
    def total_bytes(self) -> int:
        return int(sum(self.parts.values()))

    def describe(self) -> str:
        name = str(self.dtype).replace("torch.", "")
        params = f"{self.parameters / 1e9:.2f}B" if self.parameters >= 1e8 else f"{self.parameters / 1e6:.2f}M"
        return (f"{_size(self.total_bytes)} (weights {_size(self.weights_bytes)}: {params} parameters in {name}; "
                f"working set {_size(self.working_bytes)} at {self.tokens} tokens)")


def estimate_memory(config, *, dtype: torch.dtype, tokens: int, block_size: int = 256, run: bool = True,
                    attn_implementation: str = "sdpa") -> MemoryEstimate:
    """Peak bytes of ``intervene run`` (``run=True``) or ``intervene detect`` on the longest trace."""
    dims = model_dims(config)
    d, n_layers, vocab, heads, kv, hd, inter = (dims[k] for k in ("hidden", "layers", "vocab", "heads", "kv_heads",
                                                                  "head_dim", "intermediate"))
    T = max(int(tokens), 1)
    w = torch.finfo(dtype).bits // 8
    n_params = parameter_count(config)
    parts = {
        "weights": n_params * w,
        "attention_block": 3 * min(block_size, T) * T * heads * 4,
        "keys_float32": T * heads * hd * 4,
        "mlp_activations": 3 * T * inter * w,
        "hidden_states": 6 * T * d * 4,
    }
    if attn_implementation == "eager":
        parts["eager_attention"] = 2 * heads * T * T * w
    if run:
        parts["logits"] = 3 * T * vocab * w + 5 * min(T, DIVERGENCE_CHUNK) * vocab * 4
        parts["kv_cache"] = 2 * (2 * n_layers * kv * hd * T * w)
        parts["observations"] = 3 * n_layers * T * (9 + 2 * heads) * 4
    else:
        parts["logits"] = vocab * 4
        parts["observations"] = n_layers * T * (9 + heads) * 4
    return MemoryEstimate(parameters=n_params, dtype=dtype, tokens=T, parts=parts)


def available_memory(device: str) -> tuple[int, str]:
    """(free bytes, where) for ``device``: system RAM for cpu, free memory of the GPU(s) otherwise."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        return torch.cuda.mem_get_info(index)[0], f"cuda:{index}"
    if device == "auto" and torch.cuda.is_available():
        n = torch.cuda.device_count()
        return sum(torch.cuda.mem_get_info(i)[0] for i in range(n)), f"{n} GPU(s)"
    import psutil

    return psutil.virtual_memory().available, "this machine's RAM"


def check_memory(estimate: MemoryEstimate, device: str, *, force: bool = False) -> None:
    """Refuse with one line when ``estimate`` does not fit in what ``device`` has free (unless ``force``)."""
    free, where = available_memory(device)
    if force or estimate.total_bytes <= free:
        return
    raise UserError(f"this needs about {estimate.describe()} but only {_size(free)} is free in {where}; "
                    "lower max_tokens, pick a smaller dtype or model, use a GPU (device: cuda or auto), "
                    "or pass --force to try anyway", field="memory")
