"""Negative-control testbeds: the planted model changed so that one hypothesis is false by construction.

Loaded like the planted model (``testbed:negative-h1`` ...). ``negative-h1`` (and the planted model
as H4's negative) are **exact-null tests**: the edit's forward is bit-identical to clean (the zeroed
MLP writes nothing; masked keys carry no value into the residual stream), so a "not supported" there
only shows that an identical forward is not an effect. The noisy negatives of :mod:`.noisy`
(``testbed:noisy-h1`` .. ``noisy-h4``), where the edit moves activations and some sink cosines cross
0.95 while the claim stays false, are the negatives that can fool a verdict path (issue 18).
``negative-h2`` and ``negative-h3`` do change the forward under their edits. Each starts from the planted
weights (:mod:`.planted`) and changes one mechanism; ``truth.json`` says what was changed and
lists the sinks a forward pass of the saved weights shows under the cosine rule alone
(cos(h[l,t], h[l,0]) > 0.95; every decision clears 0.95 by >= 0.005), so the truth does not
depend on a norm gate.

* **negative-h1** (H1 false; exact null): the layer-4 MLP writes nothing. Head 1 of layer 4 attends from
  each trigger token (``" ^" " #" " @"``) to BOS (its query reads TRIG - c ONE, its key BOS's
  sink coordinate) and copies BOS's sink coordinate into the trigger (o_proj writes 2.75 x it
  along d). Triggers become sinks at layer 4 (norm ~22, no TAG so no decay: lifetime 8) whatever
  the layer-4 MLP does, so zeroing that MLP cannot prevent them. BOS attends to itself and gets
  +22 d, staying exactly along d.
* **negative-h2** (H2 false): the decay MLPs are removed and the MLP of layer 8 turns BOS by 45
  degrees (it writes 100 along the GATE coordinate, firing only when x[SINK] > 2 x[TAG] x 10,
  i.e. for BOS alone); ``" ~"`` is weakened to N = 1.5 (no sink; x2 is none either). Every secondary sink, whatever its norm (12, 22, 35, or any scaled
  value that makes it a sink), is aligned from layer 4 to 7 and ends at layer 8: lifetime 4.
  The pre-norm MLPs see only the direction of their input, so nothing reads the norm.
* **negative-h3** (H3 false): no MLP writes a sink. Head 1 of layer 4 is a previous-token head
  that copies the GATE feature of the previous token and writes 5.5 x it along u: the token
  right after ``" $"`` becomes a sink (norm 22, planted decay: lifetime 4) whatever its own
  activations were. A mean swap at the sink's own position before layer 4 cannot reach the
  decision (it lives in the previous token); only edits at layer 4 itself can.
* H4 false (exact null): the planted model itself (attention writes nothing into the residual stream
  after layer 2, so masking attention to sinks cannot change later layers or predictions).
  Its positive counterpart is ``testbed:positive-h4`` (:mod:`.positive`): a layer-5 head reads
  the secondary sinks into a feature that lowers later attention to the primary sink and shifts
  the LM head, so masking them changes both beyond renormalisation and beyond controls.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from . import planted as P
from .tokenizer import BOS, EOS, save_tokenizer

NEGATIVE_VERSION = 1
NEGATIVES = ("negative-h1", "negative-h2", "negative-h3")
WHAT = {
    "negative-h1": "H1 false: secondary sinks written by a layer-4 attention head copying BOS's sink coordinate; "
                   "the layer-4 MLP writes nothing",
    "negative-h2": "H2 false: every secondary sink ends at layer 8, where the primary sink turns, whatever its norm",
    "negative-h3": "H3 false: the token after ' $' becomes a sink through a layer-4 previous-token head; nothing at "
                   "the sink's own position before layer 4 matters",
}
HEAD = 1
COPY_DIM = 15        # rotary partner of SINK_PAIR (7): position-invariant, unused by the planted heads
ROT_NEURON = 5
ROT_LAYER = 8


def _trigger_tau(n: float) -> float:
    return P._solve(lambda t: P._trigger_mlp_norm(t), n)


def _negative_h1(w, ids) -> None:
    layer = P.L_START
    down = w.layer(layer, "mlp.down_proj.weight")
    down[:, P.N_TRIGGER] = 0
    down[:, P.N_GATED] = 0
    taus = [_trigger_tau(n) for n in P.TRIGGERS.values()]
    sub = _trigger_tau(min(P.SUB_THRESHOLD.values()))
    c = (P.S_UNIT * (min(taus) + sub) / 2) / (P.S_UNIT * P.O_VAL)   # midway between " ~" and the weakest trigger
    q_w, q_b = w.layer(layer, "self_attn.q_proj.weight"), w.layer(layer, "self_attn.q_proj.bias")
    rows = slice(HEAD * P.HEAD_DIM, (HEAD + 1) * P.HEAD_DIM)
    q_w[rows], q_b[rows] = 0, 0
    gap = P.S_UNIT * (min(taus) - sub) / 2                      # smallest |x[TRIG] - c x[ONE]| of a role token
    amp = 40.0 * 4 / (gap * 8.0)                                 # >= 40 nats between BOS and any other key
    q_w[HEAD * P.HEAD_DIM + COPY_DIM, P.TRIG] = amp
    q_w[HEAD * P.HEAD_DIM + COPY_DIM, P.ONE] = -amp * c
    w.layer(layer, "self_attn.k_proj.weight")[COPY_DIM, P.SINK] = 1.0        # kv head 0
    v = w.layer(layer, "self_attn.v_proj.weight")
    v[0] = 0
    v[0, P.SINK] = 1.0
    w.layer(layer, "self_attn.o_proj.weight")[P.SINK, HEAD * P.HEAD_DIM + 0] = 22.0 / P.S_UNIT


def _negative_h2(w, ids) -> None:
    # " ~" weaker than planted (N 1.5, cos 0.83 to BOS): a non-sink under the cosine rule alone too.
    row = w["model.embed_tokens.weight"][ids[next(iter(P.SUB_THRESHOLD))]]
    row[P.TRIG] = _trigger_tau(1.5)
    content = torch.tensor(P.CONTENT)
    rest = 1.0 - float((row**2).sum() - (row[content] ** 2).sum())
    row[content] *= math.sqrt(rest) / float(row[content].norm())
    w.layer(P.L_START, "mlp.down_proj.weight")[:, P.N_GATED] = 0
    for layer in range(P.L_START + 1, P.N_LAYERS):
        w.layer(layer, "mlp.down_proj.weight")[:, P.N_DECAY] = 0
    a = 1.0
    w.layer(ROT_LAYER, "mlp.gate_proj.weight")[ROT_NEURON, P.SINK] = a
    w.layer(ROT_LAYER, "mlp.gate_proj.weight")[ROT_NEURON, P.TAG] = -20.0 * a
    w.layer(ROT_LAYER, "mlp.up_proj.weight")[ROT_NEURON, P.SINK] = 1.0
    x = P.S_UNIT   # BOS: x = S_UNIT * d at every layer (RMSNorm of a pure-d state)
    w.layer(ROT_LAYER, "mlp.down_proj.weight")[P.GATE, ROT_NEURON] = 100.0 / (P._silu(a * x) * x)


def _negative_h3(w, ids) -> None:
    layer = P.L_START
    down = w.layer(layer, "mlp.down_proj.weight")
    down[:, P.N_TRIGGER] = 0
    down[:, P.N_GATED] = 0
    previous_token_attention(w, layer, HEAD)
    v = w.layer(layer, "self_attn.v_proj.weight")
    v[0] = 0
    v[0, P.GATE] = 1.0
    w.layer(layer, "self_attn.o_proj.weight")[:, HEAD * P.HEAD_DIM + 0] = 22.0 / (P.S_UNIT * P.GATE_VAL) * P._u()


EDITS = {"negative-h1": _negative_h1, "negative-h2": _negative_h2, "negative-h3": _negative_h3}


def _measure(folder: Path, truth: P.PlantedTruth) -> dict:
    """Sinks a forward pass of the saved weights shows (cosine rule only) on the testbed's own traces."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    levels: dict[str, set] = {}
    for text in P.planted_traces(truth, 4, gated=True):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1:]
        h = torch.stack(hs)[:, 0]                                   # [L, T, H]
        cos = torch.nn.functional.cosine_similarity(h, h[:, :1], dim=-1)[:, 1:]
        margin = (cos - P.COS_MIN).abs().min().item()
        if margin < 0.005:
            raise RuntimeError(f"negative testbed decision within {margin:.4f} of the cosine threshold")
        for t in range(cos.shape[1]):
            aligned = (cos[:, t] > P.COS_MIN).tolist()
            if any(aligned):
                start = aligned.index(True)
                life = next((i for i, a in enumerate(aligned[start:]) if not a), len(aligned) - start)
                levels.setdefault(tok.decode([ids[t + 1]]), set()).add((start, life))
    return {k: sorted(v) for k, v in sorted(levels.items())}


@contextmanager
def atomic_folder(out_dir: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` that replaces it when the block succeeds (removed on error)."""
    out = Path(out_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_variant(folder: Path, vocab: dict[str, int], w) -> None:
    """Config, generation config and weights of a planted variant (a ``Qwen2ForCausalLM``) into ``folder``."""
    from safetensors.torch import save_file

    P._config("qwen2", vocab).save_pretrained(folder)
    gen = {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS], "do_sample": False}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.contiguous() for k, v in w.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})


def build_negative(out_dir: str | Path, name: str, *, seed: int = 0) -> P.PlantedTruth:
    """Build negative testbed ``name`` into ``out_dir`` (an HF folder plus ``truth.json``), atomically."""
    with atomic_folder(out_dir) as tmp:
        vocab = save_tokenizer(tmp, P._pieces(), tokenizer_class="Qwen2Tokenizer")
        w, _ = P.make_weights(vocab, "qwen2", seed)
        ids = P._PieceIds(vocab)
        EDITS[name](w, ids)
        save_variant(tmp, vocab, w)
        triggers = [{"token": t, "token_id": ids[t]} for t in P.TRIGGERS]
        gated = []
        if name == "negative-h3":  # sinks only after the gate: put every role token behind it once
            gated, triggers = every_role_token_gated(ids), []
        truth = P.PlantedTruth(
            arch="qwen2", n_layers=P.N_LAYERS, onset_layer=P.ONSET_LAYER, l_start=P.L_START, bos_token=BOS,
            triggers=triggers, sub_threshold=[{"token": t, "token_id": ids[t]} for t in P.SUB_THRESHOLD],
            fillers=list(P.FILLERS), positions_rule=WHAT[name], gated=gated, version=NEGATIVE_VERSION)
        measured = _measure(tmp, truth)
        data = {**asdict(truth), "negative": name, "what": WHAT[name], "measured_levels": measured}
        (tmp / "truth.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return truth


def previous_token_attention(w, layer: int, head: int) -> None:
    """Make head ``head`` of ``layer`` attend to the previous token: its query is a constant rotary bias whose
    phase matches one position back, and the keys of the planted previous-token pairs read only a bias."""
    half = P.HEAD_DIM // 2
    q_w, q_b = w.layer(layer, "self_attn.q_proj.weight"), w.layer(layer, "self_attn.q_proj.bias")
    rows = slice(head * P.HEAD_DIM, (head + 1) * P.HEAD_DIM)
    q_w[rows], q_b[rows] = 0, 0
    k_b, k_w = w.layer(layer, "self_attn.k_proj.bias"), w.layer(layer, "self_attn.k_proj.weight")
    inv_freq = 1.0 / (P.ROPE_THETA ** (torch.arange(0, P.HEAD_DIM, 2, dtype=torch.float64) / P.HEAD_DIM))
    key_bias = 4.0
    for pair, weight in zip(P.PREV_PAIRS, P.PREV_WEIGHTS):
        theta = float(inv_freq[pair])
        amp = weight * math.sqrt(P.HEAD_DIM) / key_bias
        q_b[head * P.HEAD_DIM + pair] = amp * math.cos(theta)
        q_b[head * P.HEAD_DIM + pair + half] = -amp * math.sin(theta)
        k_b[pair], k_w[pair], k_w[pair + half] = key_bias, 0, 0


def every_role_token_gated(ids) -> list[dict]:
    """``truth.json``'s ``gated`` entries when the sink is decided by the previous token: every role token
    (gated and trigger) placed once behind the gate token, deciding at l_start."""
    return [{"token": t, "token_id": ids[t], "gate_token": P.GATE_TOKEN, "gate_token_id": ids[P.GATE_TOKEN],
             "gate_layer": P.L_START} for t in [*P.GATED, *P.TRIGGERS]]
