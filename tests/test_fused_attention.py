"""The fused observation pass (attention output + column sums from one blockwise pass).

Its output must equal the model's own attention within float32 rounding. The bound asserted
here, relative to the largest magnitude (``max|fused - ref| / max|ref|``):

* one attention call against sdpa and against float64 math: measured <= 3.2e-7, asserted < 2e-6;
* final logits of a whole tiny model (3 layers, rounding carried through every layer) against a
  plain sdpa forward and against eager: measured <= 3.9e-7 (every family; 0 against eager for
  most: same products, same order), asserted < 2e-6.

``exact=True`` keeps sdpa's own output: logits bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interventions.models.attention import BLOCK_BUDGET, AttentionEdit, blockwise_attention, query_block
from interventions.observation import observe_tokens
from interventions.testbed.tiny import tiny_config

from .conftest import FAMILIES, loaded_tiny

TOKENS = list(range(2, 42))
ONE_CALL_BOUND = 2e-6
MODEL_BOUND = 2e-6


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def reference(q, k, v, scaling, *, keep=None, softcap=None):
    """Float64 softmax attention [B, Q, H, D] with an explicit keep-mask [Q, S] (causal by default)."""
    groups = q.shape[1] // k.shape[1]
    k, v = (x.double().repeat_interleave(groups, dim=1) for x in (k, v))
    s = q.double() @ k.transpose(-1, -2) * scaling
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    if keep is None:
        Q, S = q.shape[2], k.shape[2]
        keep = torch.arange(S)[None, :] <= torch.arange(Q)[:, None] + (S - Q)
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
    return (p @ v).transpose(1, 2), p.sum(dim=-2)


def qkv(T=70, S=None, heads=8, kv_heads=2, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = S or T
    return (torch.randn(1, heads, T, dim, generator=g), torch.randn(1, kv_heads, S, dim, generator=g),
            torch.randn(1, kv_heads, S, dim, generator=g))


@pytest.mark.parametrize("block", [7, 16, 256])
def test_one_call_equals_sdpa_and_float64_gqa_causal(block):
    q, k, v = qkv()
    out, sums = blockwise_attention(q, k, v, None, 0.25, block_size=block)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25, enable_gqa=True).transpose(1, 2)
    exact, col = reference(q, k, v, 0.25)
    assert rel(out, sdpa) < ONE_CALL_BOUND
    assert rel(out, exact) < ONE_CALL_BOUND
    assert rel(sums.total, col) < ONE_CALL_BOUND
    assert torch.allclose(sums.total.sum(-1), torch.full((1, 8), 70.0), atol=1e-4)  # every row sums to 1


def test_sliding_window_softcap_and_cached_prefix():
    q, k, v = qkv(T=40, S=100)  # 60 cached keys, 40 new queries
    Q, S = 40, 100
    rows = torch.arange(Q)[:, None] + (S - Q)
    cols = torch.arange(S)[None, :]
    keep = (cols <= rows) & (cols > rows - 24)
    mask = torch.where(keep, 0.0, torch.finfo(torch.float32).min)[None, None]  # eager-style additive mask
    for softcap in (None, 5.0):
        out, sums = blockwise_attention(q, k, v, mask, 0.3, block_size=16, softcap=softcap)
        exact, col = reference(q, k, v, 0.3, keep=keep, softcap=softcap)
        assert rel(out, exact) < ONE_CALL_BOUND
        assert rel(sums.total, col) < ONE_CALL_BOUND
    # No mask given but a sliding window: the window is applied from the kwarg.
    out, _ = blockwise_attention(q, k, v, None, 0.3, block_size=16, sliding_window=24)
    assert rel(out, reference(q, k, v, 0.3, keep=keep)[0]) < ONE_CALL_BOUND


def test_edits_and_prefix_boundaries():
    q, k, v = qkv(T=50)
    keep = torch.arange(50)[None, :] <= torch.arange(50)[:, None]
    masked = keep.clone()
    masked[:, [3, 9]] = False
    out, sums = blockwise_attention(q, k, v, None, 0.25, block_size=16, edit=AttentionEdit((3, 9)),
                                    boundaries=(10, 33))
    exact, col = reference(q, k, v, 0.25, keep=masked)
    assert rel(out, exact) < ONE_CALL_BOUND and rel(sums.total, col) < ONE_CALL_BOUND
    assert (sums.total[..., [3, 9]] == 0).all()
    for b in (10, 33):  # what a forward over the first b tokens alone would sum
        assert rel(sums.prefix[b], reference(q[:, :, :b], k[:, :, :b], v[:, :, :b], 0.25,
                                             keep=masked[:b, :b])[1]) < ONE_CALL_BOUND


def test_working_set_is_bounded():
    assert query_block(16, 1024) == 256
    for T in (8192, 16384, 32768, 131072):
        n = query_block(16, T)
        assert 16 <= n < 256 and (n * 16 * T <= BLOCK_BUDGET or n == 16)


@pytest.mark.parametrize("family", FAMILIES)
def test_observed_forward_equals_sdpa_and_eager_every_family(family):
    """Every family (GQA, explicit head_dim, q/k norms in qwen3): logits through the fused pass."""
    sdpa = loaded_tiny(family, attn="sdpa")
    eager = loaded_tiny(family, attn="eager")
    ids = torch.tensor([TOKENS])
    with torch.inference_mode():
        plain = sdpa.model(input_ids=ids).logits[0]
        plain_eager = eager.model(input_ids=ids).logits[0]
    for loaded in (sdpa, eager):
        fused = observe_tokens(loaded, TOKENS, keep_logits=True, exact=False, block_size=16)
        assert rel(fused.logits, plain) < MODEL_BOUND
        assert rel(fused.logits, plain_eager) < MODEL_BOUND
        exact = observe_tokens(loaded, TOKENS, keep_logits=True, exact=True, block_size=16)
        assert torch.equal(exact.logits, plain if loaded is sdpa else plain_eager)
        np.testing.assert_allclose(fused.sink_scores, exact.sink_scores, atol=1e-6)


def test_sliding_window_model():
    """A Mistral with a 12-token window: transformers passes the window mask; the fused pass obeys it."""
    from transformers import AutoModelForCausalLM

    from interventions.models.adapters import adapter_for
    from interventions.models.attention import make_hookable
    from interventions.models.load import LoadedModel, ModelSource

    config = tiny_config("mistral")
    config.sliding_window = 12
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    with torch.inference_mode():
        plain = model(input_ids=torch.tensor([TOKENS])).logits[0]
        full = AutoModelForCausalLM.from_config(tiny_config("mistral"), attn_implementation="sdpa")
        full.load_state_dict(model.state_dict())
        unwindowed = full.eval()(input_ids=torch.tensor([TOKENS])).logits[0]
    assert rel(unwindowed, plain) > 1e-3  # the window matters at 40 tokens
    make_hookable(model)
    loaded = LoadedModel(model, None, adapter_for(model.config), ModelSource("w", "w"), "float32", "cpu", "sdpa")
    fused = observe_tokens(loaded, TOKENS, keep_logits=True, exact=False, block_size=16)
    assert rel(fused.logits, plain) < MODEL_BOUND
    # Keys further back than the window get no attention from the last query block.
    assert np.isfinite(fused.sink_scores).all()


def test_exact_is_default_only_when_logits_are_kept():
    loaded = loaded_tiny("qwen2")
    ids = torch.tensor([TOKENS])
    with torch.inference_mode():
        plain = loaded.model(input_ids=ids).logits[0]
    assert torch.equal(observe_tokens(loaded, TOKENS, keep_logits=True).logits, plain)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_cuda_bf16_fused_equals_eager(family):
    """On CUDA in bf16: the fused pass (float32 scores and sums) against eager attention on the GPU."""
    from interventions.models.adapters import adapter_for
    from interventions.models.attention import make_hookable
    from interventions.models.load import LoadedModel, ModelSource
    from interventions.testbed.tiny import tiny_model

    ids = list(range(2, 202))
    T = len(ids)
    model = tiny_model(family, attn_implementation="eager", dtype=torch.bfloat16).cuda()
    with torch.inference_mode():  # eager, materialised: softmax in float32, rounded to bf16
        plain = model(input_ids=torch.tensor([ids], device="cuda"), output_attentions=True)
    eager_scores = np.stack([(a[0].float().sum(dim=1) / (T - torch.arange(T, device="cuda"))).cpu().numpy()
                             for a in plain.attentions])
    make_hookable(model)
    loaded = LoadedModel(model, None, adapter_for(model.config), ModelSource("g", "g"), "bfloat16", "cuda", "eager")
    fused = observe_tokens(loaded, ids, keep_logits=True, exact=False, block_size=64)
    assert fused.logits.device.type == "cuda" and fused.logits.dtype == torch.bfloat16
    assert rel(fused.logits.float(), plain.logits[0].float()) < 2e-2  # bf16: 8 mantissa bits, 3 layers
    np.testing.assert_allclose(fused.sink_scores, eager_scores, atol=2e-2)
    col = fused.sink_scores * (T - np.arange(T))  # float32 sums: every query's row still sums to one
    np.testing.assert_allclose(col.sum(-1), T, rtol=1e-4)
    exact = observe_tokens(loaded, ids, keep_logits=True, exact=True)
    assert torch.equal(exact.logits, plain.logits[0])
