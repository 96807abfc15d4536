"""The in-memory API: observe, edit, load_model on a loaded model, run_spec without side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions.api import Activations, edit, observe
from interventions.compile import Edit, compile_edits
from interventions.compile.kind_edits import AttentionMask, MeanSwap, Scale, Zero
from interventions.models.load import load_model
from interventions.spec import Spec
from interventions.testbed.tiny import tiny_model
from interventions.testbed.tokenizer_bytes import byte_tokenizer

from .conditions_helpers import PLANTED_BASE
from .conftest import loaded_tiny

IDS = list(range(2, 34))


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def attention_edits(model) -> int:
    return sum(hasattr(m, "_interventions_edit") for m in model.modules())


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_edit_context_equals_the_compiled_pyvene_plan(family):
    loaded = loaded_tiny(family, layers=3)
    vector = torch.randn(loaded.dims["hidden"], generator=torch.Generator().manual_seed(0))
    objects = [Scale(site="mlp_output", layer=1, positions=[5, 9], factor=4.0),
               Zero(site="attention_output", layer=[0, 2], positions=[7]),
               MeanSwap(site="block_output", layer=range(1, 2), positions=[20], vector=vector),
               AttentionMask(layer=2, positions=[11], redirect_to=0)]
    edits = [e for o in objects for e in o.edits(loaded)]
    ids = torch.tensor(IDS)[None]
    with torch.inference_mode():
        compiled = compile_edits(loaded, edits).forward(input_ids=ids).logits
        clean = loaded.model(input_ids=ids).logits
        with edit(loaded, objects):
            hooked = loaded.model(input_ids=ids).logits
        after = loaded.model(input_ids=ids).logits
    assert (hooked - compiled).abs().max() < 1e-5
    assert (hooked - clean).abs().max() > 1e-3
    assert torch.equal(after, clean)  # nothing left behind
    assert repr(objects[0]) == "Scale(site='mlp_output', layer=1, positions=[5, 9], factor=4.0)"


def test_edit_removes_its_hooks_on_exit_and_on_error():
    loaded = loaded_tiny("qwen2")
    before = hook_count(loaded.model)
    objects = [Scale(site="mlp_output", layer=1, positions=[3], factor=2.0), AttentionMask(layer=1, positions=[4])]
    with edit(loaded, objects):
        assert hook_count(loaded.model) == before + 1 and attention_edits(loaded.model) == 1
    assert hook_count(loaded.model) == before and attention_edits(loaded.model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with edit(loaded, objects):
            raise RuntimeError("boom")
    assert hook_count(loaded.model) == before and attention_edits(loaded.model) == 0
    with pytest.raises(ValueError, match="is not one of"):  # a bad edit installs nothing
        with edit(loaded, [objects[1], Edit("zero", 1, [2], site="mlp_output"), Scale(site="nowhere", layer=0,
                                                                                           positions=[1], factor=2)]):
            pass
    assert hook_count(loaded.model) == before and attention_edits(loaded.model) == 0


def test_observe_keeps_only_what_the_names_ask_for():
    loaded = loaded_tiny("qwen3", layers=3)
    rec = observe(loaded, IDS, names=["mlp_output.*", "sink_scores"])
    assert isinstance(rec, Activations)
    assert rec.names == ["mlp_output.0", "mlp_output.1", "mlp_output.2", "sink_scores"]
    assert rec.logits is None and rec.profiles is None
    assert rec["mlp_output.1"].shape == (len(IDS), loaded.dims["hidden"])
    assert rec.stack("mlp_output").shape == (3, len(IDS), loaded.dims["hidden"])
    assert rec.sink_scores.shape == (3, loaded.dims["heads"], len(IDS))
    with pytest.raises(KeyError, match="'block_output.0' was not observed"):
        rec["block_output.0"]
    only = observe(loaded, IDS, names=lambda n: n == "block_output.2")
    assert only.names == ["block_output.2"]
    full = observe(loaded, IDS)
    assert {"logits", "profiles", "sink_scores", "attention_output.0"} <= set(full.names)
    # the last layer's output, observed, is what the final norm + head turn into the logits
    head = loaded.model.lm_head(loaded.model.model.norm(full["block_output.2"]))
    assert (head - full.logits).abs().max() < 1e-4
    assert "mlp_output: layers 0-2" in repr(rec)
    # inside edit(), the observed values are the edited ones
    plain = observe(loaded, IDS, names="mlp_output.1")  # the same forward as below, without the edit
    with edit(loaded, [Scale(site="mlp_output", layer=1, positions=[6], factor=3.0)]):
        scaled = observe(loaded, IDS, names="mlp_output.1")
    assert torch.allclose(scaled["mlp_output.1"][6], 3 * plain["mlp_output.1"][6], atol=1e-6)
    assert torch.equal(scaled["mlp_output.1"][:6], plain["mlp_output.1"][:6])
    assert torch.allclose(plain["mlp_output.1"], rec["mlp_output.1"], atol=1e-5)  # sink scores on or off


def test_load_model_takes_a_loaded_model_and_puts_its_attention_back():
    model = tiny_model("llama", layers=2)
    assert model.config._attn_implementation == "sdpa"
    with load_model(model, tokenizer=byte_tokenizer(), dtype=torch.float32) as loaded:
        assert loaded.model is model and loaded.dtype == "float32"
        assert model.config._attn_implementation == "interventions-sdpa"
        rec = observe(loaded, "a sink?", names="sink_scores")
        assert rec.sink_scores.shape[0] == 2
    assert model.config._attn_implementation == "sdpa"
    other = tiny_model("llama", layers=2)  # an unrelated model was never touched
    assert other.config._attn_implementation == "sdpa"
    # a bare HF model works directly too, wrapped only for the call
    rec = observe(model, IDS, names="logits", tokenizer=byte_tokenizer())
    assert rec.logits.shape[0] == len(IDS) and model.config._attn_implementation == "sdpa"
    with pytest.raises(Exception, match="dtype"):
        load_model(model, dtype=torch.int8)


def test_run_spec_is_in_memory_and_leaves_global_random_state_alone(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = Spec.from_dict({**PLANTED_BASE, "report": True, "interventions": [
        {"kind": "zero", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"], "controls": "ctrl"}]})
    torch.manual_seed(1234)
    np.random.seed(1234)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    from interventions.pipeline import run_spec

    result = run_spec(spec, progress=False)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert result.out is None and result.report is None and list(tmp_path.iterdir()) == []
    assert len(result.effects) > 0 and result.stats["verdicts"]["H1"]["verdict"]
    assert "RunResult(kind_check" in repr(result) and "in memory" in repr(result)
