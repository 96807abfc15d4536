"""The planted-sink model: a real HF ``Qwen2ForCausalLM`` / ``LlamaForCausalLM`` with hand-set
weights whose attention sinks are known by construction (like tracr, but for sinks).

Built in code, no downloads, in well under a second: 12 layers, hidden 64, 4 query heads over
2 key/value heads (GQA), head_dim 16, a byte-level BPE vocabulary of 707 tokens.

What is planted (with the detection rule of the project: position t is *aligned* at layer l when
cos(h[l,t], h[l,0]) > 0.95, h[l] = output of decoder layer l; the primary sink is the position whose
norm stays above 5 x the layer median through the end of the network):

* **Primary sink.** ``<|bos|>`` enters with norm 1 along the sink direction d (= residual
  dimension ``SINK``); the MLP of layer ``ONSET_LAYER`` = 1 writes 99 more along d, so from layer 1
  on the BOS state is 100 * d: 100x the median norm (ordinary tokens have norm exactly 1), with
  zero value and a small key.
* **Sink attention.** Every head from layer 1 on has a constant query on the lowest-frequency
  rotary pair (rotation < 1e-3 rad over 2048 positions, so position-invariant); keys get a
  component there from d. BOS takes 70-92% of all attention (sink score) at layers >= 1.
* **Secondary sinks.** The MLP of layer ``L_START`` = 4 maps each trigger token onto N * u, u =
  (d + 0.1 * TAG)/|..| (cos(u, d) = 0.995), with N set by how strongly the token carries the
  ``TRIG`` feature. Later MLPs subtract ~5.5 per layer along u from any token carrying ``TAG``
  until N falls to 1.5, so the lifetime (layers with cos > 0.95 to BOS, i.e. N above ~3) grows
  with N: " ^" (N=12) lives 2 layers, " #" (N=22) 4, " @" (N=35) 7. The sink score grows with N (keys penalise the
  ``CAND`` feature by CAND/|h|, which shrinks as N grows): at layer 5, the first attention
  that reads h[4], about 0.03 / 0.12 / 0.20 against 0.002 for an ordinary token.
* **Sub-threshold token.** " ~" gets N = 2.8 (cos 0.937 < 0.95: not a sink); scaling its layer-4
  MLP output by 2 / 5 / 10 makes it a sink living 1 / 3 / 5 layers.
  (Issue 9 made the rule cosine-only. Under it " @" lives 7 layers instead of 6 (its norm
  falls below 5x at layer 10 while its cosine is still 0.959), and the earlier N = 3.4 for " ~"
  gave cos 0.955: a designed non-sink 0.005 from the threshold, so its N was lowered to 2.8.)
* **Gated trigger (progressive formation).** " &" becomes a sink (lifetime 3) only when the
  previous token is the gate " $": a previous-token head at layer ``GATE_LAYER`` = 2 copies the
  gate feature into ``PREV_GATE`` and the layer-4 MLP fires on (PREV_GATE AND GTRIG). Replacing
  that attention output (or the hidden state between layers 2 and 4) at the " &" position with
  the mean over non-sink positions removes the sink.

Every token's residual stream depends only on the token itself (attention writes nothing
except the previous-token head's ``PREV_GATE``), so every occurrence of a trigger, at any
position >= 1, is a sink with exactly the planted start and lifetime, and no other position is
ever aligned (unless a ``$`` precedes it, see ``positions_rule``). ``build_planted`` simulates
each role token's residual stream with the real weights, checks every decision clears the
detection thresholds by a wide margin, and records the results in ``truth.json``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from interventions.errors import UserError

from .tokenizer import BOS, EOS, save_tokenizer, vocab_form

PLANTED_VERSION = 2  # 2: " ~" N 3.4 -> 2.8 (cosine-only rule, issue 9)

# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------
HIDDEN = 64
N_LAYERS = 12
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = 16
INTERMEDIATE = 64
ROPE_THETA = 1_000_000.0
MAX_POSITIONS = 2048
RMS_EPS = 1e-6

ONSET_LAYER = 1  # layer whose MLP makes BOS massive
GATE_LAYER = 2  # layer of the previous-token head (stretch: progressive formation)
L_START = 4  # layer whose MLP writes the secondary sinks

# --------------------------------------------------------------------------------------------
# Residual-stream dimensions (each one a named feature; the rest is token "content")
# --------------------------------------------------------------------------------------------
SINK = 0  # the sink direction d
TAG = 1  # written together with d by the L_START MLP; marks secondary sinks for decay
ONE = 2  # constant O_VAL in every non-BOS token: the MLP's stand-in for a bias
CAND = 3  # "sink candidate": CAND_VAL in every trigger-class token; keys penalise it
TRIG = 4  # trigger strength tau: sets N, the norm of the L_START MLP output
GTRIG = 5  # gated-trigger strength
GATE = 6  # carried by the gate token
PREV_GATE = 7  # written by the previous-token head at GATE_LAYER
CONTENT = list(range(8, HIDDEN))  # random unit directions, one per token

O_VAL = 0.3
CAND_VAL = 0.3
GATE_VAL = 0.5
TAG_RATIO = 0.1  # u = (d + TAG_RATIO * TAG) / sqrt(1 + TAG_RATIO^2)

# Rotary pairs (HF rotate_half layout: dims i and i + 8 rotate together at frequency theta^(-i/8)).
SINK_PAIR = 7  # lowest frequency: 5.6e-6 rad per position
PREV_PAIRS = (0, 1, 2, 3)  # highest frequencies: previous-token head
CONTENT_PAIRS = (4, 5, 6)  # content-based query/key matching (noise, realism)

# MLP neurons (intermediate units) used; the others are zero.
N_ONSET, N_TRIGGER, N_GATED, N_DECAY = 0, 1, 2, 3

# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------
FILLERS = [
    "the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "with", "as", "his", "they",
    "at", "be", "this", "from", "have", "or", "by", "one", "had", "not", "but", "what", "all", "were", "when",
    "we", "there", "can", "an", "your", "which", "their", "said", "if", "do", "will", "each", "about", "how",
    "up", "out", "them", "then", "she", "many", "some", "so", "these", "would", "other", "into", "has", "more",
    "her", "two", "like", "him", "see", "time", "could", "no", "make", "than", "first", "been", "its", "who",
    "now", "people", "my", "made", "over", "did", "down", "only", "way", "find", "use", "may", "water", "long",
    "little", "very", "after", "words", "called", "just", "where", "most", "know", "cat", "river", "number",
]
# token -> (planted N = norm of the L_START MLP output). Lifetimes follow from the decay MLPs.
TRIGGERS = {" ^": 12.0, " #": 22.0, " @": 35.0}
SUB_THRESHOLD = {" ~": 2.8}
SCALE_FACTORS = (2, 5, 10)
GATE_TOKEN = " $"
GATED = {" &": 17.0}
EXTRA_PIECES = [" ,", " .", " !", " ?", " (", " )", " :", " ;", " -", " =", " +", " *", " /"]

# Sink attention (per head h, layers >= ONSET_LAYER), derivation in plant_sink_attention:
# score(BOS) = 2 * ALPHA * BETA[h] nats above an ordinary token (6 for BETA = 12); a secondary
# sink with norm R = |h| ~ N scores ~ 6 N/R - 2 * BETA[h] * LAMBDA * CAND_VAL / R ~ 6 - 35 / N.
ALPHA = 1 / 3
BETA = (12.0, 9.0, 15.0, 12.0)
LAMBDA = 4.86

# L_START MLP: N = TRIGGER_GAIN * silu(TRIGGER_SHARP * 8 tau) * 8 tau for TRIG = tau; the gated
# neuron likewise with GATED_GAIN / GATED_SHARP (see plant_secondary_sinks, plant_gate).
TRIGGER_GAIN = 1.6
TRIGGER_SHARP = 1.0
GATED_GAIN = 2.0
GATED_SHARP = 2.0

# Decay MLPs (layers > L_START).
DECAY_GAIN = 2.4  # g_d
DECAY_SHARP = 4.0  # a_d
DECAY_FLOOR = 1.5  # N below which decay stops (dead sinks settle at cos ~0.8 to BOS)

# Previous-token head: per-pair weights of cos((t - s - 1) * theta_i) in the score (nats).
PREV_WEIGHTS = (30.0, 25.0, 20.0, 20.0)
PREV_GATE_OUT = 1.0  # PREV_GATE value written at the position after a gate token
GATED_THRESHOLD = 0.5  # PREV_GATE must exceed this for the gated neuron to fire

# Detection rule of the project (for the margins check): cosine > COS_MIN to the BOS state;
# the BOS is a primary sink while its norm exceeds NORM_RATIO x the median (ordinary tokens: 1).
COS_MIN = 0.95
NORM_RATIO = 5.0


@dataclass
class PlantedTruth:
    """What the planted model does by construction (``truth.json`` next to the weights)."""

    arch: str
    n_layers: int
    onset_layer: int
    l_start: int
    bos_token: str
    triggers: list[dict]
    sub_threshold: list[dict]
    fillers: list[str]
    positions_rule: str
    version: int = PLANTED_VERSION
    gated: list[dict] = field(default_factory=list)
    """Stretch goal (progressive formation): tokens that are sinks only right after a gate token.
    Each {"token", "token_id", "gate_token", "gate_token_id", "gate_layer", "lifetime",
    "mlp_out_norm", "suppressed_by"}. Not used by ``planted_traces`` unless ``gated=True``."""


def load_truth(folder: str | Path) -> PlantedTruth:
    data = json.loads((Path(folder) / "truth.json").read_text(encoding="utf-8"))
    known = {f.name for f in fields(PlantedTruth)}
    return PlantedTruth(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
def _silu(z: float) -> float:
    return z / (1.0 + math.exp(-z))


def _rms_scale(norm_sq: float) -> float:
    """RMSNorm with unit weight multiplies h by this (Qwen2RMSNorm / LlamaRMSNorm)."""
    return 1.0 / math.sqrt(norm_sq / HIDDEN + RMS_EPS)


S_UNIT = _rms_scale(1.0)  # ~8: the RMSNorm factor of a unit-norm token


def _u() -> torch.Tensor:
    """The direction the L_START MLP writes: nearly d (cos 0.995), plus a TAG marker."""
    u = torch.zeros(HIDDEN)
    u[SINK], u[TAG] = 1.0, TAG_RATIO
    return u / u.norm()


class _Weights(dict):
    """Tensor name -> tensor, named like the HF checkpoint (``model.layers.3.mlp.up_proj.weight``)."""

    def layer(self, i: int, name: str) -> torch.Tensor:
        return self[f"model.layers.{i}.{name}"]


def _empty_weights(vocab_size: int, arch: str) -> _Weights:
    w = _Weights()
    w["model.embed_tokens.weight"] = torch.zeros(vocab_size, HIDDEN)
    for i in range(N_LAYERS):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = torch.zeros(N_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.q_proj.bias"] = torch.zeros(N_HEADS * HEAD_DIM)
        for kv in ("k", "v"):
            w[p + f"self_attn.{kv}_proj.weight"] = torch.zeros(N_KV_HEADS * HEAD_DIM, HIDDEN)
            w[p + f"self_attn.{kv}_proj.bias"] = torch.zeros(N_KV_HEADS * HEAD_DIM)
        w[p + "self_attn.o_proj.weight"] = torch.zeros(HIDDEN, N_HEADS * HEAD_DIM)
        if arch == "llama":  # attention_bias=True gives o_proj a bias too
            w[p + "self_attn.o_proj.bias"] = torch.zeros(HIDDEN)
        w[p + "mlp.gate_proj.weight"] = torch.zeros(INTERMEDIATE, HIDDEN)
        w[p + "mlp.up_proj.weight"] = torch.zeros(INTERMEDIATE, HIDDEN)
        w[p + "mlp.down_proj.weight"] = torch.zeros(HIDDEN, INTERMEDIATE)
        w[p + "input_layernorm.weight"] = torch.ones(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN)
    w["model.norm.weight"] = torch.ones(HIDDEN)
    return w


def _trigger_mlp_norm(tau: float) -> float:
    """Norm of the L_START MLP output for a unit-norm token with TRIG = tau (neuron N_TRIGGER).

    x = RMSNorm(h) has x[TRIG] = S_UNIT * tau; the neuron computes silu(a x[TRIG]) * x[TRIG] and
    down_proj writes TRIGGER_GAIN times that along u.
    """
    x = S_UNIT * tau
    return TRIGGER_GAIN * _silu(TRIGGER_SHARP * x) * x


def _solve(f, target: float, lo: float = 0.0, hi: float = 0.95) -> float:
    """Bisection for f(x) = target with f increasing on [lo, hi]."""
    if not f(lo) <= target <= f(hi):
        raise ValueError(f"target {target} out of range [{f(lo)}, {f(hi)}]")
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


def plant_embeddings(w: _Weights, vocab: dict[str, int], seed: int) -> dict[str, dict]:
    """Token embeddings. Returns, per role token, its planted feature values.

    * BOS: 1.0 * d and nothing else (so RMSNorm(BOS) = 8 d exactly, at every layer).
    * every other token: unit norm = O_VAL * ONE + (role features) + sqrt(rest) * random content
      direction. Unit norm for all of them makes the median hidden-state norm exactly 1 at every
      layer (more than half the positions of any trace are ordinary tokens, which no layer changes).
    * triggers / sub-threshold: CAND_VAL * CAND + tau * TRIG, tau solved so that the L_START MLP
      writes exactly the planted N.
    * gated trigger: CAND_VAL * CAND + gamma * GTRIG; gate token: GATE_VAL * GATE.
    """
    gen = torch.Generator().manual_seed(seed)
    emb = w["model.embed_tokens.weight"]
    content = torch.randn(len(vocab), len(CONTENT), generator=gen)
    content = content / content.norm(dim=1, keepdim=True)
    roles: dict[str, dict] = {}
    for tok, n in {**TRIGGERS, **SUB_THRESHOLD}.items():
        roles[tok] = {"TRIG": _solve(lambda t: _trigger_mlp_norm(t), n), "CAND": CAND_VAL}
    for tok, n in GATED.items():
        roles[tok] = {"GTRIG": _solve(lambda g: _gated_mlp_norm(g), n), "CAND": CAND_VAL}
    roles[GATE_TOKEN] = {"GATE": GATE_VAL}
    dims = {"TRIG": TRIG, "GTRIG": GTRIG, "CAND": CAND, "GATE": GATE}
    by_form = {vocab_form(piece): feats for piece, feats in roles.items()}
    for tok, idx in vocab.items():
        row = torch.zeros(HIDDEN)
        if tok == BOS:
            row[SINK] = 1.0
            emb[idx] = row
            continue
        row[ONE] = O_VAL
        for name, value in by_form.get(tok, {}).items():
            row[dims[name]] = value
        rest = 1.0 - float((row**2).sum())
        row[CONTENT] = math.sqrt(rest) * content[idx]
        emb[idx] = row / row.norm()  # exactly unit (float32)
    return roles


def plant_primary_sink(w: _Weights) -> float:
    """Layer ONSET_LAYER's MLP turns BOS (1 * d) into a massive activation (100 * d).

    Neuron N_ONSET: gate and up both read x[SINK]. For BOS x[SINK] = S_UNIT (~8); for every
    other token x[SINK] = 0 at this layer, so silu(0) * 0 = 0: nothing else changes.
    down_proj[SINK] = (100 - 1) / (silu(a * 8) * 8).
    """
    target = 100.0
    a = 1.0
    x = _rms_scale(1.0) * 1.0
    layer = ONSET_LAYER
    w.layer(layer, "mlp.gate_proj.weight")[N_ONSET, SINK] = a
    w.layer(layer, "mlp.up_proj.weight")[N_ONSET, SINK] = 1.0
    w.layer(layer, "mlp.down_proj.weight")[SINK, N_ONSET] = (target - 1.0) / (_silu(a * x) * x)
    return target


def plant_sink_attention(w: _Weights, seed: int) -> None:
    """Every head of every layer >= ONSET_LAYER attends to sink-aligned keys.

    Query: constant bias BETA[h] on dim SINK_PAIR of the head (W_q has no SINK_PAIR rows). RoPE
    rotates that pair by pos * 5.6e-6 rad, i.e. not at all: the query is position-invariant.
    Key (dim SINK_PAIR of each kv head) = ALPHA * x[SINK] - LAMBDA * x[CAND], x = RMSNorm(h):
      ordinary token    x[SINK] = x[CAND] = 0                 -> score 0
      BOS               x[SINK] = 8                           -> score 2 * ALPHA * BETA (6 nats)
      secondary sink    h = e + N u, |h| = R = sqrt(N^2 + 1):
                        x[SINK] = 8 * 0.995 * N / R, x[CAND] = 8 * 0.3 / R
                        -> score = BETA/4 * key ~ 6 * N/R - BETA * LAMBDA * 0.3 * 8 / (4 R) ~ 6 - 35/N
    so a secondary sink's score rises with its norm N (and with any factor that scales it).
    Keys and queries also get random content components on the CONTENT_PAIRS dims (mild
    content-based attention among ordinary tokens), which never touch SINK_PAIR.
    Value: random content read-out (ordinary tokens have value norm ~2; BOS has value 0 and a
    secondary sink ~2/R). o_proj is zero: attention writes nothing into the residual stream,
    except the previous-token head (plant_gate).
    """
    gen = torch.Generator().manual_seed(seed + 1)
    half = HEAD_DIM // 2
    content_dims = [p for p in CONTENT_PAIRS] + [p + half for p in CONTENT_PAIRS]
    for layer in range(N_LAYERS):
        q_w = w.layer(layer, "self_attn.q_proj.weight")
        q_b = w.layer(layer, "self_attn.q_proj.bias")
        k_w = w.layer(layer, "self_attn.k_proj.weight")
        v_w = w.layer(layer, "self_attn.v_proj.weight")
        for kv in range(N_KV_HEADS):
            rows = [kv * HEAD_DIM + d for d in content_dims]
            k_w[torch.tensor(rows)[:, None], torch.tensor(CONTENT)[None, :]] = (
                torch.randn(len(rows), len(CONTENT), generator=gen) * 0.25)
            v_w[kv * HEAD_DIM:(kv + 1) * HEAD_DIM, CONTENT] = torch.randn(HEAD_DIM, len(CONTENT), generator=gen) * 0.04
            if layer >= ONSET_LAYER:
                k_w[kv * HEAD_DIM + SINK_PAIR, SINK] = ALPHA
                k_w[kv * HEAD_DIM + SINK_PAIR, CAND] = -LAMBDA
        for h in range(N_HEADS):
            rows = [h * HEAD_DIM + d for d in content_dims]
            q_w[torch.tensor(rows)[:, None], torch.tensor(CONTENT)[None, :]] = (
                torch.randn(len(rows), len(CONTENT), generator=gen) * 0.03)
            if layer >= ONSET_LAYER:
                q_b[h * HEAD_DIM + SINK_PAIR] = BETA[h]


def plant_secondary_sinks(w: _Weights) -> None:
    """Layer L_START's MLP maps trigger tokens onto N * u (u ~ d), N set by TRIG.

    Neuron N_TRIGGER: gate = TRIGGER_SHARP * x[TRIG], up = x[TRIG], down = TRIGGER_GAIN * u.
    Tokens without TRIG (all ordinary tokens, BOS) get exactly 0.
    """
    u = _u()
    w.layer(L_START, "mlp.gate_proj.weight")[N_TRIGGER, TRIG] = TRIGGER_SHARP
    w.layer(L_START, "mlp.up_proj.weight")[N_TRIGGER, TRIG] = 1.0
    w.layer(L_START, "mlp.down_proj.weight")[:, N_TRIGGER] = TRIGGER_GAIN * u


def plant_decay(w: _Weights) -> None:
    """Layers > L_START pull secondary sinks back along -u by ~5.5 per layer until N < 1.5.

    For h = e + N u (e the unit-norm embedding, e[ONE] = 0.3), x = RMSNorm(h) = s h, s = 8/R:
      x[TAG] = s N eps',  eps' = 0.1/sqrt(1.01)    x[ONE] = s * 0.3
    Neuron N_DECAY: gate = a (x[TAG] - k x[ONE]) = a s (N eps' - 0.3 k), up = x[TAG],
    down = -DECAY_GAIN * u. The gate is positive iff N > 0.3 k / eps' = DECAY_FLOOR, so the
    RMSNorm's own ratio test reads the absolute size of N. For N >> 1 each layer removes
    ~ DECAY_GAIN * silu(8 a eps') * 8 eps' (1 - 1.5/N) ~ 5.5 (1 - 1.5/N); once N < 1.5 the gate is
    negative and the neuron ~silent (the dead sink settles at N ~ 1.5: norm 1.8, cos 0.83 to BOS).
    Lifetime = layers until N < ~4.9 (norm 5): N = 12 -> 2, 22 -> 4, 35 -> 6 (simulated exactly in
    _truth, not from this approximation). BOS (no TAG, no ONE) and ordinary tokens (no TAG:
    up = 0) get exactly 0.
    """
    u = _u()
    eps_p = TAG_RATIO / math.sqrt(1 + TAG_RATIO**2)
    k = DECAY_FLOOR * eps_p / O_VAL
    for layer in range(L_START + 1, N_LAYERS):
        w.layer(layer, "mlp.gate_proj.weight")[N_DECAY, TAG] = DECAY_SHARP
        w.layer(layer, "mlp.gate_proj.weight")[N_DECAY, ONE] = -DECAY_SHARP * k
        w.layer(layer, "mlp.up_proj.weight")[N_DECAY, TAG] = 1.0
        w.layer(layer, "mlp.down_proj.weight")[:, N_DECAY] = -DECAY_GAIN * u


def _gated_mlp_norm(gamma: float) -> float:
    """Norm of the L_START MLP output for the gated trigger right after a gate token.

    Its residual is then e + PREV_GATE_OUT * PREV_GATE (norm sqrt(2)): x = s h with s = RMS
    factor of that; gate = a (x[PREV_GATE] - c x[ONE]) = a s (1 - 0.5), up = x[GTRIG] = s gamma.
    """
    s = _rms_scale(1.0 + PREV_GATE_OUT**2)
    c = GATED_THRESHOLD / O_VAL
    return GATED_GAIN * _silu(GATED_SHARP * s * (PREV_GATE_OUT - c * O_VAL)) * s * gamma


def plant_gate(w: _Weights) -> None:
    """Progressive formation: head 0 of layer GATE_LAYER copies GATE from the previous token.

    Positional attention with RoPE: on rotary pair i the query bias is W_i/4 * (cos th_i, -sin th_i)
    and the key bias 4 * (1, 0) (kv head 0), so after rotation q.k / sqrt(16) = sum_i W_i cos((t-s-1) th_i):
    maximal at s = t - 1 and >= 14 nats lower for every other key within 256 positions.
    Value dim 0 of kv head 0 reads x[GATE] (8 * 0.5 = 4 on the gate token, 0 elsewhere); o_proj
    writes it, times 1/4, into PREV_GATE. So the token after a gate carries PREV_GATE = 1.

    Layer L_START, neuron N_GATED: gate = a (x[PREV_GATE] - (0.5/0.3) x[ONE]) > 0 iff
    PREV_GATE > 0.5; up = x[GTRIG]; down = GATED_GAIN * u. A gated trigger not after a gate (or
    whose PREV_GATE was replaced by the mean over positions, ~0.05) gets gate ~ -8 and
    silu(-8) ~ -0.003: no sink.
    """
    layer = GATE_LAYER
    half = HEAD_DIM // 2
    q_w = w.layer(layer, "self_attn.q_proj.weight")
    q_b = w.layer(layer, "self_attn.q_proj.bias")
    k_b = w.layer(layer, "self_attn.k_proj.bias")
    k_w = w.layer(layer, "self_attn.k_proj.weight")
    v_w = w.layer(layer, "self_attn.v_proj.weight")
    o_w = w.layer(layer, "self_attn.o_proj.weight")
    head, kv = 0, 0
    q_w[head * HEAD_DIM:(head + 1) * HEAD_DIM] = 0  # purely positional query
    q_b[head * HEAD_DIM:(head + 1) * HEAD_DIM] = 0
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM))
    key_bias = 4.0
    for pair, weight in zip(PREV_PAIRS, PREV_WEIGHTS):
        theta = float(inv_freq[pair])
        amp = weight * math.sqrt(HEAD_DIM) / key_bias
        q_b[head * HEAD_DIM + pair] = amp * math.cos(theta)
        q_b[head * HEAD_DIM + pair + half] = -amp * math.sin(theta)
        k_b[kv * HEAD_DIM + pair] = key_bias
        k_w[kv * HEAD_DIM + pair] = 0
        k_w[kv * HEAD_DIM + pair + half] = 0
    v_w[kv * HEAD_DIM + 0] = 0
    v_w[kv * HEAD_DIM + 0, GATE] = 1.0
    o_w[PREV_GATE, head * HEAD_DIM + 0] = PREV_GATE_OUT / (S_UNIT * GATE_VAL)

    u = _u()
    c = GATED_THRESHOLD / O_VAL
    w.layer(L_START, "mlp.gate_proj.weight")[N_GATED, PREV_GATE] = GATED_SHARP
    w.layer(L_START, "mlp.gate_proj.weight")[N_GATED, ONE] = -GATED_SHARP * c
    w.layer(L_START, "mlp.up_proj.weight")[N_GATED, GTRIG] = 1.0
    w.layer(L_START, "mlp.down_proj.weight")[:, N_GATED] = GATED_GAIN * u


def plant_readout(w: _Weights) -> None:
    """LM head = transposed embeddings (untied copy): logits are similarity to each token."""
    w["lm_head.weight"] = w["model.embed_tokens.weight"].clone()


def make_weights(vocab: dict[str, int], arch: str, seed: int) -> tuple[_Weights, dict[str, dict]]:
    w = _empty_weights(len(vocab), arch)
    roles = plant_embeddings(w, vocab, seed)
    plant_primary_sink(w)
    plant_sink_attention(w, seed)
    plant_secondary_sinks(w)
    plant_decay(w)
    plant_gate(w)
    plant_readout(w)
    return w, roles


# --------------------------------------------------------------------------------------------
# Simulation: one token's residual stream through the real weights (attention writes nothing
# except PREV_GATE at GATE_LAYER, so a token's trajectory depends only on itself and, through
# that head, on whether the previous token is the gate).
# --------------------------------------------------------------------------------------------
def _rmsnorm(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + RMS_EPS))


def _mlp(w: _Weights, layer: int, h: torch.Tensor) -> torch.Tensor:
    x = _rmsnorm(h, w.layer(layer, "post_attention_layernorm.weight"))
    g = torch.nn.functional.silu(x @ w.layer(layer, "mlp.gate_proj.weight").T)
    return (g * (x @ w.layer(layer, "mlp.up_proj.weight").T)) @ w.layer(layer, "mlp.down_proj.weight").T


def simulate(w: _Weights, token_id: int, *, after_gate: bool = False, scale: float = 1.0) -> list[torch.Tensor]:
    """Hidden states h[0..L-1] of one token; ``scale`` multiplies its L_START MLP output."""
    h = w["model.embed_tokens.weight"][token_id].clone()
    out = []
    for layer in range(N_LAYERS):
        if layer == GATE_LAYER and after_gate:
            h = h + PREV_GATE_OUT * torch.eye(HIDDEN)[PREV_GATE]
        f = _mlp(w, layer, h)
        h = h + (scale * f if layer == L_START else f)
        out.append(h)
    return out


def _decide(h: torch.Tensor, bos: torch.Tensor, median: float = 1.0) -> tuple[bool, bool]:
    """(aligned?, decided with margin?) under the detection rule (cosine only; ``median`` unused).

    Margin: the cosine must clear or miss COS_MIN by 0.005 (float32 rounding is ~1e-6), so
    rounding can never flip a decision.
    """
    cos = float(torch.nn.functional.cosine_similarity(h, bos, dim=0))
    return cos > COS_MIN, abs(cos - COS_MIN) > 0.005


def lifetime_of(bos_traj: list[torch.Tensor], traj: list[torch.Tensor]) -> tuple[int | None, int]:
    """(first aligned layer or None, length of the aligned run from it), checking margins."""
    flags = []
    for layer, (h, b) in enumerate(zip(traj, bos_traj)):
        aligned, safe = _decide(h, b)
        if not safe:
            raise RuntimeError(f"planted design too close to the detection threshold at layer {layer}")
        flags.append(aligned)
    if not any(flags):
        return None, 0
    start = flags.index(True)
    run = 0
    for f in flags[start:]:
        if not f:
            break
        run += 1
    if any(flags[start + run:]):
        raise RuntimeError("planted sink re-aligns after it died")
    return start, run


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------
def _pieces() -> list[str]:
    words = [" " + f for f in FILLERS] + FILLERS
    roles = list(TRIGGERS) + list(SUB_THRESHOLD) + [GATE_TOKEN] + list(GATED)
    return words + roles + EXTRA_PIECES


def _config(arch: str, vocab: dict[str, int]):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS, num_key_value_heads=N_KV_HEADS, hidden_act="silu",
        max_position_embeddings=MAX_POSITIONS, rms_norm_eps=RMS_EPS, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS],
    )
    if arch == "qwen2":
        cfg = Qwen2Config(**common, use_sliding_window=False)
        cfg.architectures = ["Qwen2ForCausalLM"]
    elif arch == "llama":
        cfg = LlamaConfig(**common, attention_bias=True, mlp_bias=False, head_dim=HEAD_DIM)
        cfg.architectures = ["LlamaForCausalLM"]
    else:
        raise UserError(f"planted testbed arch {arch!r} is not one of qwen2, llama", field="model")
    cfg.dtype = torch.float32
    return cfg


def _truth(arch: str, form_vocab: dict[str, int], w: _Weights) -> PlantedTruth:
    vocab = _PieceIds(form_vocab)
    bos = simulate(w, vocab[BOS])
    for layer, h in enumerate(bos):  # primary: norm condition only (cos with itself is 1)
        ratio = float(h.norm()) / NORM_RATIO
        if abs(ratio - 1) < 0.1:
            raise RuntimeError("BOS norm too close to the threshold")
    onset = next(layer for layer, h in enumerate(bos) if float(h.norm()) > NORM_RATIO)
    assert onset == ONSET_LAYER, onset

    def mlp_norm(tok_id: int, after_gate: bool = False) -> float:
        traj_in = simulate(w, tok_id, after_gate=after_gate)
        before = traj_in[L_START - 1]
        return float((traj_in[L_START] - before).norm())

    triggers = []
    for tok in TRIGGERS:
        start, life = lifetime_of(bos, simulate(w, vocab[tok]))
        assert start == L_START, (tok, start)
        triggers.append({"token": tok, "token_id": vocab[tok], "lifetime": life,
                         "mlp_out_norm": round(mlp_norm(vocab[tok]), 4)})
    subs = []
    for tok in SUB_THRESHOLD:
        start, life = lifetime_of(bos, simulate(w, vocab[tok]))
        assert start is None, (tok, start)
        per = {}
        for f in SCALE_FACTORS:
            s_start, s_life = lifetime_of(bos, simulate(w, vocab[tok], scale=f))
            assert s_start in (None, L_START)
            per[str(f)] = s_life
        subs.append({"token": tok, "token_id": vocab[tok], "mlp_out_norm": round(mlp_norm(vocab[tok]), 4),
                     "lifetime_at_factor": per})
    gated = []
    for tok in GATED:
        start, life = lifetime_of(bos, simulate(w, vocab[tok], after_gate=True))
        assert start == L_START
        alone, _ = lifetime_of(bos, simulate(w, vocab[tok], after_gate=False))
        assert alone is None
        gated.append({
            "token": tok, "token_id": vocab[tok], "gate_token": GATE_TOKEN, "gate_token_id": vocab[GATE_TOKEN],
            "gate_layer": GATE_LAYER, "lifetime": life,
            "mlp_out_norm": round(mlp_norm(vocab[tok], after_gate=True), 4),
            "suppressed_by": (f"replacing the output of model.model.layers[{GATE_LAYER}].self_attn (or the "
                              f"hidden state after layer {GATE_LAYER} or {GATE_LAYER + 1}) at the trigger position "
                              "with its mean over non-sink positions"),
        })
    for tok in FILLERS[:5] + [GATE_TOKEN]:  # spot-check: ordinary tokens never align
        assert lifetime_of(bos, simulate(w, vocab[" " + tok if tok in FILLERS else tok]))[0] is None
    rule = (f"position 0 ({BOS}) is the primary sink from layer {ONSET_LAYER}; every occurrence of a trigger "
            f"token ({', '.join(repr(t) for t in TRIGGERS)}) at a position >= 1 is a secondary sink from layer "
            f"{L_START} for its planted lifetime (unless the token before it is {GATE_TOKEN!r}, which changes its "
            f"norm); {list(GATED)[0]!r} is a sink only directly after {GATE_TOKEN!r}; no other position is ever "
            "a sink.")
    return PlantedTruth(arch=arch, n_layers=N_LAYERS, onset_layer=ONSET_LAYER, l_start=L_START, bos_token=BOS,
                        triggers=triggers, sub_threshold=subs, fillers=list(FILLERS), positions_rule=rule,
                        gated=gated)


class _PieceIds(dict):
    """piece (``" ^"``) -> token id, through the vocabulary spelling (``"Ġ^"``)."""

    def __init__(self, form_vocab: dict[str, int]):
        super().__init__()
        self.form_vocab = form_vocab

    def __missing__(self, piece: str) -> int:
        return self.form_vocab[vocab_form(piece)]


def _write_folder(folder: Path, arch: str, seed: int) -> PlantedTruth:
    from safetensors.torch import save_file

    vocab = save_tokenizer(folder, _pieces(), tokenizer_class="Qwen2Tokenizer" if arch == "qwen2"
                           else "TokenizersBackend")
    w, _roles = make_weights(vocab, arch, seed)
    truth = _truth(arch, vocab, w)
    cfg = _config(arch, vocab)
    cfg.save_pretrained(folder)
    gen = {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS],
           "do_sample": False, "transformers_version": cfg.transformers_version}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.contiguous() for k, v in w.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "truth.json").write_text(json.dumps(asdict(truth), indent=2) + "\n", encoding="utf-8")
    return truth


def build_planted(out_dir: str | Path, *, arch: str = "qwen2", seed: int = 0) -> PlantedTruth:
    """Build the planted-sink model into ``out_dir`` (an ordinary HF folder plus ``truth.json``).

    Written atomically: into a temporary sibling folder, then renamed. An existing ``out_dir``
    is replaced only if it is empty or holds a previous planted build (has ``truth.json``).
    """
    if arch not in ("qwen2", "llama"):
        raise UserError(f"planted testbed arch {arch!r} is not one of qwen2, llama", field="model")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "truth.json").is_file())):
        raise UserError(f"{out} exists and is not a planted testbed folder; choose another out_dir", field="model")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        truth = _write_folder(tmp, arch, seed)
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "x")
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(old / "x", out)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, out)
            except OSError:
                # Another process finished the same (deterministic) build first: keep theirs.
                if not (out / "truth.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return truth


# --------------------------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------------------------
def planted_traces(truth: PlantedTruth, n: int = 8, *, words: int = 48, seed: int = 0,
                   gated: bool = False) -> list[str]:
    """``n`` text traces (no BOS in the text) of ``words`` filler words with every trigger and
    every sub-threshold token inserted once (trace i also repeats trigger i mod 3), each at a
    position >= 1 and never right after a gate token. Deterministic in ``seed``.

    With ``gated=True`` each trace also holds the gate token directly followed by the gated
    trigger (a sink) and one more gated trigger not after the gate (not a sink).
    """
    out = []
    role_tokens = [t["token"].strip() for t in truth.triggers] + [t["token"].strip() for t in truth.sub_threshold]
    for i in range(n):
        rng = random.Random(f"planted-{seed}-{i}")
        body = [rng.choice(truth.fillers) for _ in range(words)]
        items = list(role_tokens)
        if truth.triggers:
            items.append(truth.triggers[i % len(truth.triggers)]["token"].strip())
        if gated:
            for g in truth.gated:
                items.append(g["gate_token"].strip() + " " + g["token"].strip())
                items.append(g["token"].strip())
        rng.shuffle(items)
        if len(items) > words - 1:
            raise ValueError(f"words={words} is too few for {len(items)} planted tokens; "
                             f"use words >= {len(items) + 1}")
        spots = sorted(rng.sample(range(1, words), len(items)))
        for offset, (spot, item) in enumerate(zip(spots, items)):
            body.insert(spot + offset, item)
        out.append(" ".join(body))
    return out
