"""Security checks, the memory estimate, device independence and prefix reuse from the clean forward."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from interventions.cli.main import app
from interventions.compile import Edit
from interventions.errors import UserError
from interventions.models.adapters import adapter_for
from interventions.models.attention import make_hookable
from interventions.models.load import LoadedModel, ModelSource
from interventions.models.memory import GIB, check_memory, estimate_memory, parameter_count
from interventions.run.execute import TraceExecutor
from interventions.testbed.tiny import TINY_CONFIGS, save_tiny, tiny_model
from interventions.testbed.tokenizer_bytes import byte_tokenizer

PACKAGE = Path(__file__).resolve().parent.parent / "interventions"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def wrap(model) -> LoadedModel:
    make_hookable(model)
    return LoadedModel(model, byte_tokenizer(), adapter_for(model.config), ModelSource("tiny", "tiny"), "float32",
                       "cpu", "sdpa")


# -- security --------------------------------------------------------------------------------


def _grep(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [f"{p.relative_to(PACKAGE.parent)}:{i}: {line.strip()}" for p in SOURCES
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if rx.search(line)]


def test_yaml_is_only_safe_loaded():
    assert _grep(r"yaml\.(load|unsafe_load|full_load|load_all)\(|yaml\.(Unsafe|Full)?Loader\b") == []
    assert _grep(r"yaml\.safe_load\("), "the spec loader uses yaml.safe_load"


def test_no_pickle_and_no_torch_load_without_weights_only():
    assert _grep(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b|pd\.read_pickle|allow_pickle\s*=\s*True") == []
    unsafe = [hit for hit in _grep(r"torch\.load\(") if "weights_only=True" not in hit]
    assert unsafe == []


def test_trust_remote_code_is_never_switched_on_by_the_code():
    assert _grep(r"trust_remote_code\s*=\s*True") == []


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, cache_dir) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "tiny"
    save_tiny("qwen2", folder, layers=2)
    (folder.parent / "traces.jsonl").write_text('{"text": "hello there, general kenobi"}\n')
    return folder


def _spec(tiny_folder: Path, **over) -> dict:
    return {"name": "secure", "model": "tiny", "traces": "traces.jsonl", "dtype": "float32", "report": False,
            "targets": {"fixed": {"select": "positions", "positions": [4]}},
            "interventions": [{"kind": "zero", "site": "mlp_output", "layer": 1, "targets": ["fixed"]}], **over}


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_only_when_the_spec_says_so_and_with_a_warning(tiny_folder, tmp_path, monkeypatch, trust):
    import transformers

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    from interventions.models import load as models

    monkeypatch.setattr(models, "_REMOTE_CODE_WARNED", set())
    spec = tiny_folder.parent / f"trust-{trust}.yaml"  # relative paths in a spec resolve against its folder
    spec.write_text(yaml.safe_dump(_spec(tiny_folder, trust_remote_code=trust)))
    monkeypatch.chdir(tmp_path)  # ... not against the working directory
    result = CliRunner().invoke(app, ["run", str(spec), "--results", str(tmp_path / "results"), "-q"])
    assert result.exit_code == 0, result.output
    assert seen == [trust]
    warned = [line for line in result.output.splitlines() if "trust_remote_code is on" in line]
    assert len(warned) == (1 if trust else 0), result.output


def test_a_run_writes_only_inside_its_results_folder(tiny_folder, tmp_path, monkeypatch):
    spec = tiny_folder.parent / "inside.yaml"
    spec.write_text(yaml.safe_dump(_spec(tiny_folder)))
    before = {p for p in tiny_folder.parent.rglob("*")}
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(spec), "--results", "results", "-q"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["results"]
    assert {p for p in tiny_folder.parent.rglob("*")} == before
    escaped = [p for p in (tmp_path / "results").rglob("*") if not p.resolve().is_relative_to(tmp_path / "results")]
    assert escaped == []


# -- memory estimate --------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_parameter_count_from_the_config_is_exact(family):
    model = tiny_model(family, layers=2)
    assert parameter_count(model.config) == sum(p.numel() for p in model.parameters())


def test_memory_estimate_of_a_known_config(monkeypatch):
    from transformers import Qwen2Config

    # Qwen2.5-1.5B's published shape (tied embeddings): 1,543,714,304 parameters.
    config = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True)
    est = estimate_memory(config, dtype=torch.bfloat16, tokens=4096)
    assert est.parameters == 1_543_714_304
    assert est.parts["weights"] == 2 * 1_543_714_304
    assert est.parts["attention_block"] == 3 * 256 * 4096 * 12 * 4
    assert est.parts["kv_cache"] == 2 * 2 * 28 * 2 * 128 * 4096 * 2
    assert est.parts["logits"] == 3 * 4096 * 151936 * 2 + 5 * 1024 * 151936 * 4
    assert est.describe().startswith("10.0 GiB (weights 2.9 GiB: 1.54B parameters in bfloat16; working set 7.1 GiB")
    detect = estimate_memory(config, dtype=torch.bfloat16, tokens=4096, run=False)
    assert detect.total_bytes < est.total_bytes  # detect keeps only the last position's logits
    from interventions.models import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: (GIB, "this machine's RAM"))
    with pytest.raises(UserError, match=r"^memory: this needs about 10\.0 GiB .* only 1\.0 GiB is free .* --force"):
        check_memory(est, "cpu")
    check_memory(estimate_memory(config, dtype=torch.bfloat16, tokens=16), "cpu", force=True)


# -- devices ----------------------------------------------------------------------------------


def test_hooks_and_interventions_follow_each_module_device_under_accelerate_dispatch(tmp_path):
    """accelerate's dispatch_model over a CPU-only map with one layer offloaded to disk (its weights on
    the meta device, streamed in by hooks): observation and every kind give the undispatched numbers.
    A real multi-GPU split is the same code path with cuda devices (pending GPU verification)."""
    from accelerate import dispatch_model

    from interventions.kinds.mean_swap import site_means

    base = tiny_model("qwen2", layers=3)
    plain = wrap(copy.deepcopy(base))
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    spread = wrap(dispatch_model(copy.deepcopy(base), device_map=device_map, main_device="cpu",
                                 offload_dir=str(tmp_path)))
    assert spread.model.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    ids = list(range(2, 42))
    means = site_means(spread, ids, {0}, ["mlp_output"])
    for edits in ([Edit("scale", 1, [10, 20], site="mlp_output", factor=4.0)],
                  [Edit("zero", 2, [30], site="attention_output")],
                  [Edit("mean_swap", 1, [12], site="mlp_output", vector=means["mlp_output"][1])],
                  [Edit("attention_mask", 1, [5], redirect_to=0)]):
        a = TraceExecutor(plain, ids, starts=[edits[0].positions[0]]).intervened(edits)
        b = TraceExecutor(spread, ids, starts=[edits[0].positions[0]]).intervened(edits)
        for name in a.profiles:
            np.testing.assert_array_equal(a.profiles[name], b.profiles[name], err_msg=f"{edits[0].kind} {name}")
        np.testing.assert_array_equal(a.sink_scores, b.sink_scores)
        assert torch.equal(a.logits, b.logits)


# -- prefix reuse from the clean forward --------------------------------------------------------


def test_clean_forward_as_prefix_equals_prefix_forwards_and_the_naive_path():
    loaded = wrap(tiny_model("llama", layers=3))
    ids = list(np.random.default_rng(0).integers(2, 250, size=300))  # > one 256-query block
    edit_lists = [[Edit("scale", 1, [p], site="mlp_output", factor=3.0)] for p in (40, 255, 256, 257, 290)]
    edit_lists.append([Edit("attention_mask", 2, [120, 200], redirect_to=None)])
    starts = [e[0].positions[0] for e in edit_lists]
    reuse = TraceExecutor(loaded, ids, starts=starts)
    prefix = TraceExecutor(loaded, ids)  # no starts: one prefix forward per start
    naive = TraceExecutor(loaded, ids, reuse_prefix=False)
    for edits in edit_lists:
        a, b, c = reuse.intervened(edits), prefix.intervened(edits), naive.intervened(edits)
        for name in c.profiles:
            np.testing.assert_allclose(a.profiles[name], c.profiles[name], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(b.profiles[name], c.profiles[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.sink_scores, c.sink_scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.sink_scores, b.sink_scores, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a.logits, c.logits, rtol=1e-5, atol=1e-5)
    assert reuse.forwards["prefix"] == 0 and reuse.forwards["full"] == 1
    assert prefix.forwards["prefix"] == len(edit_lists)
    assert reuse.forwards["tokens"] == len(ids) + sum(len(ids) - s for s in starts)
