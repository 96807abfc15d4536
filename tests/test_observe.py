"""The observation pass against independent computations from the same model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions.observation import PROFILE_COLUMNS, observe_tokens

from .conftest import FAMILIES, loaded_tiny

TOKENS = list(range(2, 42))  # 40 positions


def eager_sink_scores(model, ids) -> np.ndarray:
    """Eq. 1 from materialised eager attention probabilities: [L, H, T]."""
    out = model(input_ids=torch.tensor([ids]), output_attentions=True)
    scores = []
    for att in out.attentions:  # [1, H, T, T]
        a = att[0].double()
        T = a.shape[-1]
        col = a.sum(dim=1)  # sum over queries t -> [H, T]
        scores.append((col / (T - torch.arange(T, dtype=torch.double))).numpy())
    return np.stack(scores)


@pytest.mark.parametrize("family", FAMILIES)
def test_sink_scores_equal_eager_attention(family):
    eager = loaded_tiny(family, attn="eager")
    sdpa = loaded_tiny(family, attn="sdpa")
    reference = eager_sink_scores(eager.model, TOKENS)
    for loaded in (eager, sdpa):
        obs = observe_tokens(loaded, TOKENS, block_size=16)  # several query blocks
        assert obs.sink_scores.shape == reference.shape
        assert np.abs(obs.sink_scores - reference).max() < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_follow_config(family):
    loaded = loaded_tiny(family, layers=3)
    cfg = loaded.model.config
    obs = observe_tokens(loaded, TOKENS)
    assert obs.sink_scores.shape == (cfg.num_hidden_layers, cfg.num_attention_heads, len(TOKENS))
    for name in PROFILE_COLUMNS:
        assert obs.profiles[name].shape == (cfg.num_hidden_layers, len(TOKENS))
        assert np.isfinite(obs.profiles[name]).all(), name
    # Every query's probabilities sum to 1, so column sums over keys add up to T per head.
    col_sums = obs.sink_scores * (len(TOKENS) - np.arange(len(TOKENS)))
    assert np.allclose(col_sums.sum(-1), len(TOKENS), atol=1e-3)


def _hooked_states(model, ids):
    """Independent reference: raw layer outputs, MLP outputs, attention outputs via plain hooks."""
    seen = {"h": [], "mlp": [], "attn": []}
    handles = []
    for layer in model.model.layers:
        handles.append(layer.register_forward_hook(lambda m, a, o: seen["h"].append(o[0] if isinstance(o, tuple) else o)))
        handles.append(layer.mlp.register_forward_hook(lambda m, a, o: seen["mlp"].append(o)))
        handles.append(layer.self_attn.register_forward_hook(lambda m, a, o: seen["attn"].append(o[0])))
    model(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    return {k: torch.stack([t[0] for t in v]) for k, v in seen.items()}


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "phi3"])
def test_profiles_match_independent_hooks(family):
    loaded = loaded_tiny(family)
    ref = _hooked_states(loaded.model, TOKENS)
    obs = observe_tokens(loaded, TOKENS)
    h = ref["h"]  # [L, T, D]
    cos = torch.nn.functional.cosine_similarity(h, h[:, :1].expand_as(h), dim=-1)
    np.testing.assert_allclose(obs.profiles["hidden_norm"], h.norm(dim=-1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(obs.profiles["hidden_cos"], cos.numpy(), atol=1e-5)
    np.testing.assert_allclose(obs.profiles["mlp_out_norm"], ref["mlp"].norm(dim=-1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(obs.profiles["attn_out_norm"], ref["attn"].norm(dim=-1).numpy(), rtol=1e-5)


def test_gemma3_profiles_are_what_is_written_into_the_residual():
    """Gemma3 normalises attention and MLP outputs before the residual add: the observed outputs must be
    those writes, read here off the residual stream alone (h_mid - h_in, h_out - h_mid)."""
    loaded = loaded_tiny("gemma3_text")
    seen = {"in": [], "mid": [], "out": []}
    handles = []
    for layer in loaded.model.model.layers:
        handles += [layer.register_forward_pre_hook(lambda m, a: seen["in"].append(a[0][0])),
                    layer.pre_feedforward_layernorm.register_forward_pre_hook(lambda m, a: seen["mid"].append(a[0][0])),
                    layer.register_forward_hook(lambda m, a, o: seen["out"].append((o[0] if isinstance(o, tuple)
                                                                                    else o)[0]))]
    loaded.model(input_ids=torch.tensor([TOKENS]))
    for h in handles:
        h.remove()
    h_in, h_mid, h_out = (torch.stack(seen[k]) for k in ("in", "mid", "out"))
    obs = observe_tokens(loaded, TOKENS)
    np.testing.assert_allclose(obs.profiles["mlp_out_norm"], (h_out - h_mid).norm(dim=-1).numpy(), rtol=1e-4)
    np.testing.assert_allclose(obs.profiles["attn_out_norm"], (h_mid - h_in).norm(dim=-1).numpy(), rtol=1e-4)


def test_observer_leaves_no_hooks_and_output_unchanged():
    loaded = loaded_tiny("qwen2")
    model = loaded.model
    before = model(input_ids=torch.tensor([TOKENS])).logits
    obs = observe_tokens(loaded, TOKENS, keep_logits=True)
    assert torch.equal(obs.logits, before[0])
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert getattr(module, "_interventions_probe", None) is None


def test_query_blocks_do_not_change_scores():
    loaded = loaded_tiny("llama")
    a = observe_tokens(loaded, TOKENS, block_size=7).sink_scores
    b = observe_tokens(loaded, TOKENS, block_size=4096).sink_scores
    assert np.abs(a - b).max() < 1e-6


def test_profile_frame_is_long_table():
    obs = observe_tokens(loaded_tiny("qwen2"), TOKENS)
    frame = obs.profile_frame(trace=7)
    assert len(frame) == 3 * len(TOKENS)
    assert set(PROFILE_COLUMNS) <= set(frame.columns)
    row = frame[(frame.layer == 2) & (frame.position == 5)].iloc[0]
    assert row.trace == 7 and row.hidden_norm == pytest.approx(obs.profiles["hidden_norm"][2, 5])


def test_observer_keeps_copies_of_reference_rows_not_whole_layers():
    """A reference row h[p] is a view of the layer's [T, D] states; keeping the view would keep every
    layer's states alive through the forward (it cost 1.2 GB at 32k tokens in benchmarks/observe.py)."""
    import torch

    from interventions.observation import Observer

    loaded = loaded_tiny("qwen2", layers=3)
    ids = torch.arange(2, 66)[None]
    with torch.inference_mode(), Observer(loaded) as observer:
        loaded.model(input_ids=ids, use_cache=False)
    kept = [v for vecs in observer._cand_vecs.values() for rows in vecs.values() for v in rows if v is not None]
    kept += list(observer._final.get("vectors", {}).values())
    assert kept and all(v.untyped_storage().nbytes() == v.numel() * v.element_size() for v in kept)
