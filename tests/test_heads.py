"""Per-head sink measures: exact against eager attention, planted head facts, generated traces, CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from interventions.spec.trace_sources import GeneratedTraces, special_prefix
from interventions.spec.traces import generate_traces
from interventions.studies.heads import HeadClasses, measure_heads
from interventions.testbed.planted import GATE_LAYER, N_HEADS, N_LAYERS, ONSET_LAYER

from .conftest import FAMILIES, loaded_tiny


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_entropy_and_output_norm_match_eager_attention(family):
    """alpha, entropy and per-head output norms equal what eager attention weights and o_proj give."""
    loaded = loaded_tiny(family, layers=2, attn="eager")
    ids = torch.randint(2, 250, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    result = measure_heads(loaded, [ids], progress=False, block_size=16)
    model = loaded.model
    captured = {}
    handles = [layer.self_attn.o_proj.register_forward_pre_hook(
        lambda m, a, i=i: captured.__setitem__(i, a[0][0].clone())) for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_attentions=True)
    for h in handles:
        h.remove()
    T = len(ids)
    for layer, att in enumerate(out.attentions):
        a = att[0].double()  # [H, T, T]
        alpha = a[:, :, 0].mean(dim=1)
        entropy = -(torch.where(a > 0, a * a.clamp_min(1e-300).log(), torch.zeros(()))).sum(-1).mean(-1)
        w = model.model.layers[layer].self_attn.o_proj.weight.double()
        heads = a.shape[0]
        x = captured[layer].double().view(T, heads, -1)
        dh = x.shape[-1]
        norms = torch.stack([(x[:, h] @ w[:, h * dh:(h + 1) * dh].T).norm(dim=-1).mean() for h in range(heads)])
        rows = result.table[result.table["layer"] == layer].sort_values("head")
        np.testing.assert_allclose(rows["alpha"], alpha.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(rows["entropy"], entropy.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rows["output_norm"], norms.numpy(), rtol=1e-4, atol=1e-6)


def test_planted_sink_heads_found_and_previous_token_head_is_not(planted):
    """Planted truth: every head from the onset layer on attends to BOS (70-99%) and writes nothing
    (o_proj is zero), so it is a dormant sink head; head 0 of the gate layer is a previous-token head."""
    traces = generate_traces(planted.tokenizer, GeneratedTraces("random_tokens", length=40, n=3, seed=1))
    result = measure_heads(planted, traces, progress=False)
    planted_sink_heads = {(l, h) for l in range(ONSET_LAYER, N_LAYERS) for h in range(N_HEADS)} - {(GATE_LAYER, 0)}
    assert set(result.heads_of("dormant")) == planted_sink_heads
    assert result.heads_of("sink") == []
    gate = result.table.query("layer == @GATE_LAYER and head == 0").iloc[0]
    assert gate["head_class"] == "other"
    assert gate["alpha"] < 0.1 and gate["entropy"] < 0.01  # one key per query: the previous token (0 nats)
    assert (result.table.query("layer == 0")["alpha"] < 0.2).all()  # layer 0 has no sink attention
    assert result.sink_epsilon == pytest.approx(len(planted_sink_heads) / (N_LAYERS * N_HEADS))
    # The classes follow the parameters: with no dormant threshold every sink head is a plain sink head.
    loose = measure_heads(planted, traces[:1], classes=HeadClasses(dormant_ratio=0.0), progress=False)
    assert set(loose.heads_of("sink")) == planted_sink_heads and loose.heads_of("dormant") == []


def test_generated_traces_follow_the_tokenizer_and_seed(planted):
    tok = planted.tokenizer
    prefix = special_prefix(tok)
    assert prefix == list(tok("x", add_special_tokens=True)["input_ids"][:len(prefix)])
    a = generate_traces(tok, GeneratedTraces("random_tokens", length=16, n=3, seed=5))
    b = generate_traces(tok, GeneratedTraces("random_tokens", length=16, n=3, seed=5))
    assert [t.token_ids for t in a] == [t.token_ids for t in b]
    assert all(len(t.token_ids) == len(prefix) + 16 for t in a)
    special = set(tok.all_special_ids)
    assert not any(i in special for t in a for i in t.token_ids[len(prefix):])
    rep = generate_traces(tok, GeneratedTraces("repeated_token", length=16, n=2, seed=5))
    assert all(len(set(t.token_ids[len(prefix):])) == 1 for t in rep)


def test_heads_cli_writes_tables_and_rejects_bad_input(tmp_path, cache_dir):
    out = tmp_path / "heads"
    run = subprocess.run([sys.executable, "-m", "interventions.cli.main", "heads", "testbed:planted", "--generate",
                          "repeated_token", "--n", "2", "--length", "24", "--out", str(out), "-q"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for name in ("heads.csv", "heads_per_trace.parquet", "summary.json", "manifest.json", "figures/heads_heatmap.png"):
        assert (out / name).is_file(), name
    bad = subprocess.run([sys.executable, "-m", "interventions.cli.main", "heads", "testbed:planted", "--generate",
                          "zeros", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "traces.generate" in bad.stderr and not (tmp_path / "x").exists()


def test_a_spec_can_run_on_generated_traces(cache_dir):
    """``traces: {generate: ...}`` in a spec: the run sees the tokenizer's prefix plus generated tokens."""
    from interventions.pipeline import run_spec
    from interventions.spec import Spec

    spec = Spec.from_dict({
        "name": "generated", "model": "testbed:planted", "dtype": "float32", "report": False, "limit": 2,
        "traces": {"generate": "repeated_token", "length": 24, "n": 5, "seed": 3},
        "targets": {"bos": {"select": "primary_sinks"}},
        "interventions": [{"kind": "zero", "site": "mlp_output", "layer": 1, "targets": ["bos"]}]})
    result = run_spec(spec, progress=False)
    e = result.effects
    assert sorted(e.trace.unique()) == [0, 1] and set(e.position) == {0}
    # zeroing the onset MLP at BOS removes the planted massive activation: BOS is no longer a sink after it
    at2 = e[e.layer == 2]
    assert (at2.clean_hidden_norm > 50).all() and (at2.hidden_norm < 5).all()
    with pytest.raises(Exception, match="generate"):
        Spec.from_dict({**{k: v for k, v in spec.model_dump().items() if k in ("name", "model", "targets")},
                        "traces": {"generate": "zeros"}, "interventions": [
                            {"kind": "zero", "site": "mlp_output", "layer": 1, "targets": ["bos"]}]})
