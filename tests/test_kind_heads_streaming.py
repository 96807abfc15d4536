"""``head_ablation`` and ``streaming``: exact against their oracles, and the planted facts they must
reproduce (the gate head carries the " &" sink; a query that cannot see the gate loses it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions.api import edit
from interventions.compile.kind_edits import HeadAblation, Streaming
from interventions.observation import Observer
from interventions.spec import Spec

from .conditions_helpers import PLANTED_BASE
from .conftest import loaded_tiny

IDS = torch.arange(2, 34)[None]


@pytest.mark.parametrize("family", ["qwen2", "llama", "gemma3_text"])
def test_zeroing_a_head_equals_zeroing_its_output_projection_columns(family):
    loaded = loaded_tiny(family, layers=3)
    o_proj = loaded.model.model.layers[1].self_attn.o_proj
    dh = o_proj.weight.shape[1] // loaded.dims["heads"]
    with torch.inference_mode():
        clean = loaded.model(input_ids=IDS).logits
        with edit(loaded, [HeadAblation(layer=1, positions=range(IDS.shape[1]), heads=[2])]):
            ablated = loaded.model(input_ids=IDS).logits
        saved = o_proj.weight[:, 2 * dh:3 * dh].clone()
        o_proj.weight[:, 2 * dh:3 * dh] = 0
        try:
            oracle = loaded.model(input_ids=IDS).logits
        finally:
            o_proj.weight[:, 2 * dh:3 * dh] = saved
        assert (ablated - oracle).abs().max() < 1e-5 and (ablated - clean).abs().max() > 1e-4
        # at the target positions only: nothing before the first one changes
        with edit(loaded, [HeadAblation(layer=1, positions=[20, 25], heads=[0, 1])]):
            part = loaded.model(input_ids=IDS).logits
    assert torch.equal(part[0, :20], clean[0, :20]) and (part[0, 20:] - clean[0, 20:]).abs().max() > 1e-4
    assert loaded.model.model.layers[1].self_attn.o_proj._forward_pre_hooks == {}


def test_streaming_keeps_the_first_and_the_recent_keys_only():
    loaded = loaded_tiny("qwen2", layers=2)
    T = IDS.shape[1]
    with torch.inference_mode():
        clean = loaded.model(input_ids=IDS).logits
        with edit(loaded, [Streaming(layer=[0, 1], positions=[], keep_first=2, window=T)]):
            assert (loaded.model(input_ids=IDS).logits - clean).abs().max() < 1e-5  # the window holds everything
        with edit(loaded, [Streaming(layer=[0, 1], positions=[], keep_first=0, window=1)]), \
                Observer(loaded) as observer:  # every query sees only itself
            loaded.model(input_ids=IDS, use_cache=False)
        scores = observer.collect(IDS[0].tolist()).sink_scores  # [L, H, T]
        expected = 1.0 / (T - np.arange(T))
        np.testing.assert_allclose(scores, np.broadcast_to(expected, scores.shape), rtol=1e-5)
        with edit(loaded, [Streaming(layer=[0, 1], positions=[], keep_first=1, window=4)]):
            k1 = loaded.model(input_ids=IDS).logits
    assert torch.equal(k1[0, :5], clean[0, :5]) or (k1[0, :5] - clean[0, :5]).abs().max() < 1e-5
    assert (k1[0, 5:] - clean[0, 5:]).abs().max() > 1e-4  # queries past k + w lose keys


def test_planted_gate_head_and_streaming_window_decide_the_gated_sink(cache_dir):
    from interventions.pipeline import run_spec

    targets = {**PLANTED_BASE["targets"], "gated": {"select": "tokens", "tokens": [" &"]}}
    spec = Spec.from_dict({**PLANTED_BASE, "targets": targets, "interventions": [
        {"kind": "head_ablation", "layers": 2, "heads": [0], "targets": ["gated"]},          # the gate head
        {"kind": "head_ablation", "layers": 2, "heads": [1], "targets": ["gated"]},          # a sink head writing 0
        {"kind": "streaming", "layers": [2], "keep_first": 0, "window": 1, "targets": ["gated"]},
        {"kind": "streaming", "layers": [2], "keep_first": 0, "window": 2, "targets": ["gated"]},
    ]})
    ids = [c.id for c in spec.conditions()]
    assert ids == ["head_ablation.zero.L2.h0.targets", "head_ablation.zero.L2.h1.targets",
                   "streaming.L2.k0.w1", "streaming.L2.k0.w2"]
    result = run_spec(spec, progress=False)
    e = result.effects
    gated = e[e.clean_lifetime > 0].drop_duplicates(["condition", "trace", "position"])
    assert len(gated) and set(gated.condition) == set(ids)
    by = {c: g for c, g in gated.groupby("condition")}
    assert (by["head_ablation.zero.L2.h0.targets"].lifetime == 0).all()   # gate head silenced: no sink
    assert (by["head_ablation.zero.L2.h1.targets"].lifetime == by["head_ablation.zero.L2.h1.targets"].clean_lifetime).all()
    assert set(by["head_ablation.zero.L2.h0.targets"].heads) == {"2.0"}
    assert (by["streaming.L2.k0.w1"].lifetime == 0).all()                  # cannot see the previous token
    assert (by["streaming.L2.k0.w2"].lifetime == by["streaming.L2.k0.w2"].clean_lifetime).all()


def test_readme_heads_section_runs_as_written(tmp_path, cache_dir):
    """The bash block of the README's "Attention heads and streaming" section, verbatim."""
    import json
    import os
    import re
    import shlex
    import subprocess
    import sys

    from .conftest import REPO

    section = (REPO / "README.md").read_text().split("## Attention heads and streaming", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    env = dict(os.environ, INTERVENTIONS_CACHE=str(cache_dir))
    for command in [c for c in block.splitlines() if c.strip()]:
        proc = subprocess.run([sys.executable, "-m", "interventions.cli.main", *shlex.split(command)[1:]],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "results" / "heads-demo" / "summary.json").read_text())
    assert summary["counts"] == {"sink": 0, "dormant": 43, "other": 5}  # the section's planted claim


def test_streaming_experiment_runs_in_one_command_on_a_real_model(tmp_path):
    """``intervene experiment experiments/streaming_sinks --real --config smollm2``: window attention alone
    breaks prediction, the first token kept restores most of it (the section's table, one model)."""
    import json
    import subprocess
    import sys

    from .conftest import REPO

    if not (REPO / ".cache" / "real" / "smollm2-135m-instruct" / "config.json").is_file():
        pytest.skip("SmolLM2 not cached: run `intervene testbed fetch-gguf` (.ci/run does)")
    traces = REPO.parent / "shared" / "data" / "secondary-sinks-paper" / "aime24_traces_qwen3-4b-base.jsonl"
    if not traces.is_file():   # the study's traces (experiments/streaming_sinks/experiment.yaml)
        pytest.skip(f"shared traces not found at {traces}")
    proc = subprocess.run([sys.executable, "-m", "interventions.cli.main", "experiment",
                           str(REPO / "experiments" / "streaming_sinks"), "--real", "--config", "smollm2",
                           "--results", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (found,) = list(tmp_path.rglob("experiment.json"))
    summary = json.loads(found.read_text())["measured"]["models"]["smollm2"]["summary"]
    assert summary["delta_nll_k0"] > 1.0 and summary["recovery_k1"] > 0.7
