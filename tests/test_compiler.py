"""Compiled interventions against independent plain-torch implementations (random-init models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions.compile import Edit, compile_edits
from interventions.kinds import site_kinds
from interventions.models.adapters import decoder_layers, get_module
from interventions.run.execute import TraceExecutor
from interventions.spec import KINDS

from .conftest import loaded_tiny

IDS = torch.arange(2, 34)[None]
POSITIONS = [6, 11, 20]


def site_module(loaded, site, layer):
    block = decoder_layers(loaded.model, loaded.adapter)[layer]
    return {"block_output": block, "mlp_output": get_module(block, loaded.adapter.mlp_output),
            "attention_output": get_module(block, loaded.adapter.attention_output)}[site]


def oracle_logits(loaded, edit: Edit) -> torch.Tensor:
    """The same edit written as a plain forward hook, using the kind's reference_value."""
    def hook(module, args, output):
        is_tuple = isinstance(output, tuple)
        out = (output[0] if is_tuple else output).clone()
        out[0, edit.positions] = KINDS[edit.kind].reference_value(edit, out[0, edit.positions])
        return (out, *output[1:]) if is_tuple else out

    handle = site_module(loaded, edit.site, edit.layer).register_forward_hook(hook)
    try:
        return loaded.model(input_ids=IDS).logits
    finally:
        handle.remove()


def make_edit(kind, site, layer, loaded):
    gen = torch.Generator().manual_seed(1)
    vector = {"mean_swap": lambda: torch.randn(loaded.dims["hidden"], generator=gen),
              "add": lambda: torch.randn(loaded.dims["hidden"], generator=gen),
              "patch": lambda: torch.randn(len(POSITIONS), loaded.dims["hidden"], generator=gen),
              "noise": lambda: torch.randn(len(POSITIONS), loaded.dims["hidden"], generator=gen)}.get(kind, lambda: None)()
    return Edit(kind, layer, POSITIONS, site=site, factor=3.5 if kind == "scale" else None, vector=vector)


SITE_KINDS = ["zero", "scale", "mean_swap", "add", "patch", "noise"]


def test_every_registered_site_kind_is_checked_here():
    assert set(site_kinds()) == set(SITE_KINDS)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama", "mistral", "phi3", "gemma3_text"])
@pytest.mark.parametrize("kind", SITE_KINDS)
@pytest.mark.parametrize("site", ["mlp_output", "attention_output", "block_output"])
def test_pyvene_equals_torch_oracle(family, kind, site):
    loaded = loaded_tiny(family, layers=3)
    edit = make_edit(kind, site, 1, loaded)
    with torch.inference_mode():
        compiled = compile_edits(loaded, [edit]).forward(input_ids=IDS).logits
        reference = oracle_logits(loaded, edit)
        clean = loaded.model(input_ids=IDS).logits
    assert (compiled - reference).abs().max() < 1e-5
    # Nothing before the first edited position can change (causal attention): bit-identical.
    assert torch.equal(compiled[0, :POSITIONS[0]], clean[0, :POSITIONS[0]])
    assert (compiled[0, POSITIONS[0]] - clean[0, POSITIONS[0]]).abs().max() > 0


def hidden_states(loaded, plan=None):
    seen = []
    handles = [b.register_forward_hook(lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o)[0].clone()))
               for b in decoder_layers(loaded.model, loaded.adapter)]
    try:
        with torch.inference_mode():
            (plan.forward(input_ids=IDS) if plan else loaded.model(input_ids=IDS))
    finally:
        for h in handles:
            h.remove()
    return seen


def _residual_writes(loaded, layer, plan=None):
    """(attention write, MLP write) of ``layer`` read off the residual stream alone, [T, D] each.

    Independent of the adapter's site paths: h_in (block input), h_mid (the input of the module
    that normalises the residual for the MLP, i.e. after the attention add) and h_out (block output)
    give attention write = h_mid - h_in and MLP write = h_out - h_mid.
    """
    block = decoder_layers(loaded.model, loaded.adapter)[layer]
    norms = [m for n, m in block.named_children() if n in ("pre_feedforward_layernorm",)] or \
        [get_module(block, "post_attention_layernorm")]  # Llama-like: the pre-MLP norm is post_attention_layernorm
    seen = {}
    handles = [block.register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0][0].clone())),
               norms[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("mid", a[0][0].clone())),
               block.register_forward_hook(lambda m, a, o: seen.__setitem__("out", (o[0] if isinstance(o, tuple)
                                                                                     else o)[0].clone()))]
    try:
        with torch.inference_mode():
            (plan.forward(input_ids=IDS) if plan else loaded.model(input_ids=IDS))
    finally:
        for h in handles:
            h.remove()
    return seen["mid"] - seen["in"], seen["out"] - seen["mid"], seen["in"]


@pytest.mark.parametrize("family", ["gemma3_text", "llama"])
@pytest.mark.parametrize("site", ["mlp_output", "attention_output"])
def test_output_edits_change_the_residual_by_exactly_the_edited_amount(family, site):
    """Gemma3 normalises each sublayer output again before the residual add: an edit must land after
    that norm. Scaling the write by 5 must add exactly 4x the clean write to the residual stream
    (an edit on the raw MLP output would be normalised away: ~0 change); zeroing must remove it."""
    loaded = loaded_tiny(family, layers=3)
    layer = 1
    attn_clean, mlp_clean, h_in = _residual_writes(loaded, layer)
    clean = attn_clean if site == "attention_output" else mlp_clean
    for kind, factor, expected in (("scale", 5.0, 5.0), ("zero", None, 0.0)):
        plan = compile_edits(loaded, [Edit(kind, layer, POSITIONS, site=site, factor=factor)])
        attn_edit, mlp_edit, h_in_edit = _residual_writes(loaded, layer, plan)
        edited = attn_edit if site == "attention_output" else mlp_edit
        assert torch.equal(h_in_edit, h_in)  # nothing upstream moved
        scale = clean[POSITIONS].abs().max()
        assert (edited[POSITIONS] - expected * clean[POSITIONS]).abs().max() < 1e-5 * scale * 5
        others = [p for p in range(IDS.shape[1]) if p not in POSITIONS]
        if site == "mlp_output":  # attention at this layer is upstream of the MLP edit: every position untouched
            torch.testing.assert_close(edited[others], clean[others], rtol=1e-5, atol=1e-5 * scale)


def test_zero_changes_exactly_the_positions_and_layers_it_should():
    loaded = loaded_tiny("qwen2", layers=4)
    clean = hidden_states(loaded)
    edited = hidden_states(loaded, compile_edits(loaded, [Edit("zero", 2, POSITIONS, site="mlp_output")]))
    for layer in (0, 1):  # below the edit: every position bit-identical
        assert torch.equal(edited[layer], clean[layer])
    diff = (edited[2] - clean[2]).abs().amax(-1)
    assert set(torch.nonzero(diff).flatten().tolist()) == set(POSITIONS)  # at the edit: exactly the targets
    assert torch.equal(edited[3][:POSITIONS[0]], clean[3][:POSITIONS[0]])  # later layers: nothing before them


def test_scale_one_is_identity_and_zero_is_scale_zero():
    loaded = loaded_tiny("llama")
    with torch.inference_mode():
        clean = loaded.model(input_ids=IDS).logits
        one = compile_edits(loaded, [Edit("scale", 1, POSITIONS, site="mlp_output", factor=1.0)]).forward(input_ids=IDS)
        zero = compile_edits(loaded, [Edit("zero", 1, POSITIONS, site="mlp_output")]).forward(input_ids=IDS)
        scale0 = compile_edits(loaded, [Edit("scale", 1, POSITIONS, site="mlp_output", factor=0.0)]).forward(input_ids=IDS)
    assert torch.equal(one.logits, clean)
    assert torch.equal(zero.logits, scale0.logits)


def test_scaled_mlp_output_norm_scales_exactly():
    loaded = loaded_tiny("qwen2")
    ex = TraceExecutor(loaded, IDS[0].tolist())
    clean = ex.clean()
    edited = ex.intervened([Edit("scale", 1, POSITIONS, site="mlp_output", factor=5.0)])
    ratio = edited.profiles["mlp_out_norm"][1, POSITIONS] / clean.profiles["mlp_out_norm"][1, POSITIONS]
    np.testing.assert_allclose(ratio, 5.0, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("redirect", [None, 0])
def test_attention_mask_zeroes_masked_keys_only_in_masked_layers(attn, redirect):
    loaded = loaded_tiny("qwen2", layers=4, attn=attn)
    ex = TraceExecutor(loaded, IDS[0].tolist(), reuse_prefix=False)
    clean = ex.clean()
    edited = ex.intervened([Edit("attention_mask", layer, POSITIONS, redirect_to=redirect) for layer in (1, 2)])
    # Sink score = mean attention received: exactly 0 means every query gives the key probability 0.
    assert (edited.sink_scores[1:3][..., POSITIONS] == 0).all()
    assert (clean.sink_scores[1:3][..., POSITIONS] > 0).all()
    # Rows still sum to 1: column sums over keys add up to T per head.
    T = IDS.shape[1]
    col = edited.sink_scores * (T - np.arange(T))
    np.testing.assert_allclose(col.sum(-1), T, rtol=1e-5)
    # Layer 0 (below the mask) is identical to the clean run.
    for name, arr in clean.profiles.items():
        assert np.array_equal(edited.profiles[name][0], arr[0]), name
    if redirect == 0:  # the removed mass went to the primary sink
        assert (edited.sink_scores[1:3, :, 0] > clean.sink_scores[1:3, :, 0]).all()


def test_attention_mask_composes_with_module_edits():
    loaded = loaded_tiny("qwen3", layers=3)
    edits = [Edit("attention_mask", 2, [9]), Edit("scale", 1, [12], site="mlp_output", factor=2.0)]
    a = TraceExecutor(loaded, IDS[0].tolist(), reuse_prefix=False).intervened(edits)
    only_scale = TraceExecutor(loaded, IDS[0].tolist(), reuse_prefix=False).intervened(edits[1:])
    assert (a.sink_scores[2][:, 9] == 0).all() and (only_scale.sink_scores[2][:, 9] > 0).all()
    assert np.array_equal(a.profiles["mlp_out_norm"][1], only_scale.profiles["mlp_out_norm"][1])


@pytest.mark.parametrize("family", ["qwen2", "phi3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_reuse_equals_naive_full_forward(family, attn):
    loaded = loaded_tiny(family, layers=3, attn=attn)
    edits = [Edit("scale", 1, [12, 20], site="mlp_output", factor=4.0), Edit("attention_mask", 2, [15]),
             Edit("mean_swap", 0, [25], site="block_output", vector=torch.ones(loaded.dims["hidden"]))]
    fast = TraceExecutor(loaded, IDS[0].tolist(), reuse_prefix=True)
    naive = TraceExecutor(loaded, IDS[0].tolist(), reuse_prefix=False)
    a, b = fast.intervened(edits), naive.intervened(edits)
    assert fast.forwards["prefix"] == 1 and fast.forwards["suffix"] == 1
    assert (a.logits - b.logits).abs().max() < 1e-5
    assert np.abs(a.sink_scores - b.sink_scores).max() < 1e-6
    for name in a.profiles:
        np.testing.assert_allclose(a.profiles[name], b.profiles[name], rtol=1e-5, atol=1e-5)


def test_pyvene_leaves_observer_hooks_alone():
    """pyvene 0.1.8 removes every hook on a model per call; ours must survive (trap 1)."""
    loaded = loaded_tiny("qwen2")
    marker = []
    handle = loaded.model.model.layers[0].register_forward_hook(lambda m, a, o: marker.append(1))
    plan = compile_edits(loaded, [Edit("zero", 1, [5], site="mlp_output")])
    with torch.inference_mode():
        plan.forward(input_ids=IDS)
        plan.forward(input_ids=IDS)
    handle.remove()
    assert len(marker) == 2
    for module in loaded.model.modules():  # and pyvene's own hooks are gone
        assert not module._forward_hooks and not module._forward_pre_hooks
