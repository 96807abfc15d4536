"""The planted-sink testbed does what its truth.json says, checked with plain transformers.

Only AutoModelForCausalLM, AutoTokenizer and forward hooks are used here (not the project's
observation code), with the project's detection rule written out in :func:`aligned`.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from interventions import testbed
from interventions.errors import UserError
from interventions.testbed.planted import PLANTED_VERSION, build_planted, load_truth, planted_traces

ARCHS = ("qwen2", "llama")
HF_CLASS = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    for arch in ARCHS:
        build_planted(root / arch, arch=arch)
    return {arch: root / arch for arch in ARCHS}


@pytest.fixture(scope="module")
def models(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for arch, folder in built.items():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        out[arch] = (model.eval(), AutoTokenizer.from_pretrained(folder), load_truth(folder))
    return out


def encode(tok, text: str) -> list[int]:
    """What the project's trace reader does: tokenise, prepend BOS unless already there."""
    ids = tok(text).input_ids
    return ids if ids and ids[0] == tok.bos_token_id else [tok.bos_token_id, *ids]


def forward(model, ids, *, mlp_scale=None, attn_patch=None, hidden_patch=None, attentions=False):
    """Hidden states [L, T, D] (decoder-layer outputs) and optionally eager attentions.

    mlp_scale: (layer, positions, factor) multiplies that layer's MLP output there.
    attn_patch / hidden_patch: (layer, position, vector) replaces that layer's attention
    output / that layer's output at one position.
    """
    layers = model.model.layers
    hidden: dict[int, torch.Tensor] = {}
    hooks = []

    def first(o):
        return o[0] if isinstance(o, tuple) else o

    def keep(layer):
        def hook(_m, _i, out):
            h = first(out)
            if hidden_patch is not None and hidden_patch[0] == layer:
                h = h.clone()
                h[0, hidden_patch[1]] = hidden_patch[2]
                hidden[layer] = h[0].detach()
                return (h, *out[1:]) if isinstance(out, tuple) else h
            hidden[layer] = h[0].detach()
        return hook

    for layer, block in enumerate(layers):
        hooks.append(block.register_forward_hook(keep(layer)))
    if mlp_scale is not None:
        l_start, positions, factor = mlp_scale

        def scale(_m, _i, out):
            out = out.clone()
            out[0, positions] *= factor
            return out
        hooks.append(layers[l_start].mlp.register_forward_hook(scale))
    if attn_patch is not None:
        layer, pos, vec = attn_patch

        def patch(_m, _i, out):
            o = out[0].clone()
            o[0, pos] = vec
            return (o, *out[1:])
        hooks.append(layers[layer].self_attn.register_forward_hook(patch))
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_attentions=attentions)
    finally:
        for h in hooks:
            h.remove()
    hs = torch.stack([hidden[layer] for layer in range(len(layers))])
    return hs, (out.attentions if attentions else None)


def aligned(hs: torch.Tensor) -> torch.Tensor:
    """The detection rule: [L, T] bool, cos to position 0 (the planted primary sink) > 0.95."""
    cos = torch.nn.functional.cosine_similarity(hs, hs[:, :1], dim=-1)
    return cos > 0.95


def massive(hs: torch.Tensor) -> torch.Tensor:
    """[L, T] bool: norm > 5 x the layer's median norm (a massive activation)."""
    norms = hs.norm(dim=-1)
    return norms > 5 * norms.median(dim=-1).values[:, None]


def sink_level(flags) -> tuple[int | None, int]:
    """(first aligned layer, length of the contiguous run from it) of one position's [L] flags."""
    flags = [bool(f) for f in (flags.tolist() if isinstance(flags, torch.Tensor) else flags)]
    if not any(flags):
        return None, 0
    start = flags.index(True)
    run = 0
    while start + run < len(flags) and flags[start + run]:
        run += 1
    return start, run


def sink_scores(attentions, layer: int) -> torch.Tensor:
    """Mean over heads of (1/(T-k)) sum_{t>=k} a[t,k], per key k."""
    a = attentions[layer][0].float().mean(0)
    t = a.shape[-1]
    return a.sum(0) / torch.arange(t, 0, -1, dtype=torch.float32)


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_folder_loads_as_ordinary_hf_model(models, built, arch):
    model, tok, truth = models[arch]
    assert type(model).__name__ == HF_CLASS[arch]
    assert truth.arch == arch and truth.version == PLANTED_VERSION
    cfg = json.loads((built[arch] / "config.json").read_text())
    assert cfg["model_type"] == arch and cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    for name in ("model.safetensors", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                 "generation_config.json", "truth.json"):
        assert (built[arch] / name).is_file(), name
    assert tok.bos_token == truth.bos_token == "<|bos|>"
    assert len(truth.triggers) >= 3 and len({t["lifetime"] for t in truth.triggers}) == len(truth.triggers)
    assert sum(truth.l_start + t["lifetime"] < truth.n_layers for t in truth.triggers) >= 2  # not censored


@pytest.mark.parametrize("arch", ARCHS)
def test_detection_gives_exactly_the_planted_sinks(models, arch):
    model, tok, truth = models[arch]
    planted = {t["token_id"]: (truth.l_start, t["lifetime"]) for t in truth.triggers}
    seen = {tid: 0 for tid in planted}
    sub_ids = {s["token_id"] for s in truth.sub_threshold}
    n_sub = 0
    for text in planted_traces(truth, 8):
        ids = encode(tok, text)
        hs, _ = forward(model, ids)
        flags = aligned(hs)
        norms = hs.norm(dim=-1)
        median = norms.median(dim=-1).values
        # Primary sink: position 0, massive from the planted onset to the end, >= 50x the median after.
        assert sink_level(massive(hs)[:, 0]) == (truth.onset_layer, truth.n_layers - truth.onset_layer)
        assert not massive(hs)[-2, 1:].any()  # the only position massive at the end of the network
        ratio = norms[truth.onset_layer:, 0] / median[truth.onset_layer:]
        assert float(ratio.min()) >= 50
        direction = hs[truth.onset_layer:, 0] / norms[truth.onset_layer:, 0, None]
        assert float((direction @ direction[0]).min()) > 0.999  # one fixed direction d
        by_position = flags.T.tolist()
        for pos in range(1, len(ids)):
            level = sink_level(by_position[pos])
            if ids[pos] in planted:
                seen[ids[pos]] += 1
                assert level == planted[ids[pos]], (pos, tok.convert_ids_to_tokens(ids[pos]))
                assert sum(by_position[pos]) == level[1]  # aligned nowhere outside its run
            else:
                assert level == (None, 0), (pos, tok.convert_ids_to_tokens(ids[pos]), level)
                n_sub += ids[pos] in sub_ids
    assert min(seen.values()) >= 8 and n_sub >= 8


def test_eager_and_sdpa_agree(built, models):
    from transformers import AutoModelForCausalLM

    for arch in ARCHS:
        model, tok, truth = models[arch]
        sdpa = AutoModelForCausalLM.from_pretrained(built[arch], dtype=torch.float32, attn_implementation="sdpa")
        ids = encode(tok, planted_traces(truth, 1)[0])
        a, _ = forward(model, ids)
        b, _ = forward(sdpa.eval(), ids)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)
        assert torch.equal(aligned(a), aligned(b))
    qwen, llama = (forward(models[a][0], ids)[0] for a in ARCHS)
    assert torch.allclose(qwen, llama, atol=1e-4)  # same weights, same computation


@pytest.mark.parametrize("arch", ARCHS)
def test_sub_threshold_scaling_gives_recorded_lifetimes(models, arch):
    model, tok, truth = models[arch]
    (sub,) = truth.sub_threshold
    per_factor = {int(f): life for f, life in sub["lifetime_at_factor"].items()}
    assert sorted(per_factor) == [2, 5, 10]
    lives = [per_factor[f] for f in sorted(per_factor)]
    assert lives == sorted(lives) and per_factor[5] > 0 and per_factor[10] > 0
    for text in planted_traces(truth, 3):
        ids = encode(tok, text)
        positions = [p for p, i in enumerate(ids) if i == sub["token_id"]]
        assert positions
        base, _ = forward(model, ids)
        assert not bool(aligned(base)[:, positions].any())
        for factor, life in per_factor.items():
            hs, _ = forward(model, ids, mlp_scale=(truth.l_start, positions, float(factor)))
            flags = aligned(hs)
            for p in positions:
                assert sink_level(flags[:, p]) == ((truth.l_start, life) if life else (None, 0)), factor
            others = [p for p in range(1, len(ids)) if p not in positions]
            assert torch.equal(flags[:, others], aligned(base)[:, others])


@pytest.mark.parametrize("arch", ARCHS)
def test_sink_scores(models, arch):
    model, tok, truth = models[arch]
    # The first attention that reads h[l_start] (the output of layer l_start) is layer l_start + 1.
    layer = truth.l_start + 1
    by_token = {t["token_id"]: [] for t in truth.triggers}
    ordinary = []
    for text in planted_traces(truth, 8):
        ids = encode(tok, text)
        _, att = forward(model, ids, attentions=True)
        for lay in range(truth.onset_layer, truth.n_layers):
            assert float(sink_scores(att, lay)[0]) > 0.3, lay
        scores = sink_scores(att, layer)
        for pos in range(1, len(ids) - 4):  # the last few keys have too few queries to compare
            (by_token[ids[pos]] if ids[pos] in by_token else ordinary).append(float(scores[pos]))
    means = {tid: sum(v) / len(v) for tid, v in by_token.items()}
    ranked = sorted(truth.triggers, key=lambda t: t["mlp_out_norm"])
    ranked_scores = [means[t["token_id"]] for t in ranked]
    assert ranked_scores == sorted(ranked_scores) and len(set(ranked_scores)) == len(ranked_scores)
    assert min(ranked_scores) > 5 * max(ordinary)

    # Scaling the sub-threshold token's MLP output raises its score with the factor.
    (sub,) = truth.sub_threshold
    ids = encode(tok, planted_traces(truth, 1)[0])
    positions = [p for p, i in enumerate(ids) if i == sub["token_id"]]
    scaled = []
    for factor in (1.0, 2.0, 5.0, 10.0):
        _, att = forward(model, ids, mlp_scale=(truth.l_start, positions, factor), attentions=True)
        scaled.append(float(sink_scores(att, layer)[positions].mean()))
    assert scaled == sorted(scaled) and scaled[0] < scaled[-1] / 10


@pytest.mark.parametrize("arch", ARCHS)
def test_primary_sink_key_and_value_are_small(models, arch):
    model, tok, truth = models[arch]
    ids = encode(tok, planted_traces(truth, 1)[0])
    keys, values = {}, {}
    hooks = []
    for layer, block in enumerate(model.model.layers):
        hooks.append(block.self_attn.k_proj.register_forward_hook(
            lambda _m, _i, o, layer=layer: keys.__setitem__(layer, o[0].norm(dim=-1))))
        hooks.append(block.self_attn.v_proj.register_forward_hook(
            lambda _m, _i, o, layer=layer: values.__setitem__(layer, o[0].norm(dim=-1))))
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    for layer in range(truth.onset_layer, truth.n_layers):
        assert float(keys[layer][0]) < float(keys[layer].median())
        assert float(values[layer][0]) < 0.1 * float(values[layer].median())


@pytest.mark.parametrize("arch", ARCHS)
def test_gated_trigger_progressive_formation(models, arch):
    model, tok, truth = models[arch]
    (g,) = truth.gated
    for text in planted_traces(truth, 3, gated=True):
        ids = encode(tok, text)
        hs, _ = forward(model, ids)
        flags = aligned(hs)
        gated_pos = [p for p in range(1, len(ids)) if ids[p] == g["token_id"] and ids[p - 1] == g["gate_token_id"]]
        lone_pos = [p for p in range(1, len(ids)) if ids[p] == g["token_id"] and ids[p - 1] != g["gate_token_id"]]
        assert gated_pos and lone_pos
        for p in gated_pos:
            assert sink_level(flags[:, p]) == (truth.l_start, g["lifetime"])
        for p in lone_pos:
            assert sink_level(flags[:, p]) == (None, 0)
        sinks = {0} | {p for p in range(len(ids)) if bool(flags[:, p].any())}
        non_sink = [p for p in range(len(ids)) if p not in sinks]

        # Mean-ablate the gate layer's attention output at the gated trigger: no sink.
        attn_out = {}
        h = model.model.layers[g["gate_layer"]].self_attn.register_forward_hook(
            lambda _m, _i, o: attn_out.__setitem__("o", o[0][0].detach()))
        with torch.no_grad():
            model(torch.tensor([ids]))
        h.remove()
        mean_attn = attn_out["o"][non_sink].mean(0)
        for p in gated_pos:
            patched, _ = forward(model, ids, attn_patch=(g["gate_layer"], p, mean_attn))
            assert sink_level(aligned(patched)[:, p]) == (None, 0)
            # Same with the hidden state between the gate layer and l_start.
            for layer in range(g["gate_layer"], truth.l_start):
                patched, _ = forward(model, ids, hidden_patch=(layer, p, hs[layer, non_sink].mean(0)))
                assert sink_level(aligned(patched)[:, p]) == (None, 0)


def test_tokenizer_round_trip_qwen2(built, models):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    folder = built["qwen2"]
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(tok).__name__ == "Qwen2Tokenizer"  # what transformers 5 forces on qwen2 folders
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    truth = models["qwen2"][2]
    for text in planted_traces(truth, 4, gated=True) + ["plain text, with punctuation! and 123 digits ^^ café"]:
        ids = tok(text).input_ids
        assert ids == raw.encode(text).ids
        assert ids[0] == tok.bos_token_id == tok.convert_tokens_to_ids("<|bos|>")
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(ids) == "<|bos|>" + text
    for role in truth.triggers + truth.sub_threshold + truth.gated:
        assert tok(role["token"], add_special_tokens=False).input_ids == [role["token_id"]]
    for word in truth.fillers:
        assert len(tok(" " + word, add_special_tokens=False).input_ids) == 1
    llama_tok = AutoTokenizer.from_pretrained(built["llama"])
    text = planted_traces(truth, 1)[0]
    assert llama_tok(text).input_ids == tok(text).input_ids


def test_traces_are_deterministic(models):
    truth = models["qwen2"][2]
    assert planted_traces(truth, 3, seed=1) == planted_traces(truth, 3, seed=1)
    assert planted_traces(truth, 3, seed=1) != planted_traces(truth, 3, seed=2)
    for text in planted_traces(truth, 3):
        assert "<|bos|>" not in text


def test_build_is_deterministic_and_atomic(tmp_path, built):
    truth = build_planted(tmp_path / "again", arch="qwen2")
    weights = (tmp_path / "again" / "model.safetensors").read_bytes()
    assert weights == (built["qwen2"] / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "again" / "truth.json").read_text()) == json.loads(
        (built["qwen2"] / "truth.json").read_text())
    build_planted(tmp_path / "again", arch="qwen2")  # rebuilding over a planted folder replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temp folders left behind
    assert truth == load_truth(tmp_path / "again")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(UserError):
        build_planted(tmp_path / "other")


def test_testbed_folder_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERVENTIONS_CACHE", str(tmp_path))
    assert testbed.TESTBEDS == {"planted": "qwen2", "planted-llama": "llama"}
    folder = testbed.testbed_folder("planted-llama")
    assert folder == tmp_path / "testbed" / f"planted-llama-v{PLANTED_VERSION}-seed0"
    stamp = os.stat(folder / "model.safetensors").st_mtime_ns
    assert testbed.testbed_folder("planted-llama") == folder
    assert os.stat(folder / "model.safetensors").st_mtime_ns == stamp
    assert load_truth(folder).arch == "llama"
    with pytest.raises(UserError, match="unknown testbed 'nope'; known: planted, planted-llama"):
        testbed.testbed_folder("nope")
