"""H4-positive testbed: the planted model changed so that masking secondary sinks matters downstream.

Loaded like the other testbeds (``testbed:positive-h4``). It starts from the planted weights
(:mod:`.planted`), keeps every planted sink mechanism, and adds one attention path that carries
what the secondary sinks hold to the primary sink and to the predictions. ``truth.json`` lists
the sinks a forward pass of the saved weights shows under the cosine rule alone (every decision
clears 0.95 by >= 0.005) and the primary sink's norm ratio (> 5 x the layer median by a wide
margin), measured, not assumed.

What is planted on top of the planted model (x = RMSNorm(h) = 8 h / |h|; scores in nats):

* **A clean feature X** (residual dimension ``X_DIM`` = 63, taken out of CONTENT): every
  embedding has 0 there (the content part of each row is rescaled so that the row keeps unit norm
  and every named feature keeps its planted value, so N = 12 / 22 / 35 are unchanged) and every
  random query/key/value weight reading it is zeroed. Only the reader head writes X.
* **Reader head** (layer ``READER_LAYER`` = 5, head ``READER_HEAD`` = 3 on kv head 1: the first
  attention that reads h[4], where the layer-4 MLP wrote the secondary sinks). It keeps the
  planted sink-attention query; value dim 0 of kv head 1 reads x[TAG] (a secondary sink at h[4]:
  8 * 0.0995 N / sqrt(N^2 + 1) ~ 0.79 for every N; BOS and ordinary tokens: 0) and o_proj writes
  ``READER_GAIN`` = 1.5 times it into X. So a query t after secondary sinks s carries
  X(t) = 1.5 * 0.79 * sum_s a5[t, s] (head 3 gives ~0.03 to a " ^", ~0.10 to a " #", ~0.18 to a
  " @" late in a 60-token trace): X ~ 0.05 .. 0.6 (``measured_primary.max_abs_x``). Every
  secondary sink lives at layer 5 (l_start 4, lifetime >= 2), so masking them in their lifetime
  layers sets X to 0 downstream (the sub-threshold " ~", TAG-marked too, has key ~ -6 and
  contributes < 1e-3).
* **Shield**: a sink-aligned query (x[SINK] ~ 8: secondary sinks, " ~") looks at BOS in the
  reader head instead: query dim 15 (the position-invariant partner of rotary pair 7) =
  ``SHIELD_Q`` 0.5 x[SINK], key dim 15 = x[SINK] - ``SHIELD_K`` 10 x[TAG] (8 for BOS, ~0 for a
  secondary sink) adds ~8 to BOS's score from those queries only (head 2, sharing kv head 1, has
  no query there). So the sinks themselves get X < 1e-3 and keep their planted cosines (without
  it " @" reached cos 0.951 at layer 10, 0.001 from the threshold; with it 0.959 as planted).
* **X lowers attention to the primary sink** in layers ``MOD_LAYERS`` = 6..11: every head's
  sink-attention query (bias BETA[h] on rotary pair 7) gets ``MOD_WEIGHT`` (-1.0) x[X] more, so
  BOS's score moves by -1.0 x[X] * ALPHA * 8 / 4 = -0.67 x[X] (x[X] ~ 8 X: down to ~ -3 late in a
  trace); ordinary keys have 0 on that pair and do not move, secondary sinks' keys move in
  proportion. Clean BOS score (mean over heads and queries, 8 traces) at layers 6..11: 0.71 0.77
  0.82 0.86 0.89 0.91, against the planted 0.79 0.85 0.90 0.94 0.97 0.98.
* **The LM head reads X**: lm_head column X is ``LM_GAIN`` (0.15) times a fixed N(0, 1) vector
  (seed + 4), the rest the planted read-out (the embeddings), so a query's logits shift by
  0.15 * 8 X / |h| * r_v.

Why H4 is true here: masking attention to the secondary sinks in their lifetime layers removes
X, so from layer 6 on BOS's score is higher than renormalising the clean layer's attention
predicts (by 0.05-0.07 in layers 6..10, where renormalisation alone is exact in the planted
model) and higher than clean at layer 11, where nothing is masked and renormalisation predicts no
change (+0.07); next-token predictions move (mean KL 0.17 nats at positions >= a sink). Masking
matched random tokens (TAG 0, so no X lost) moves the primary score by < 0.004 and KL by ~1e-7
(only the reader head's renormalisation). Numbers from specs/attn_mask.yaml, limit 8
(tests/test_positive_h4.py). Side effects, measured in ``truth.json``: ordinary tokens' norms
grow to sqrt(1 + X^2) < 1.2 (BOS stays 100 d, > 90 x the median); the sink levels are the
planted ones (" ^" 4/2, " #" 4/4, " @" 4/7, " &" after " $" 4/3; " ~" no sink).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from . import planted as P
from .negative import _measure, atomic_folder, save_variant
from .tokenizer import BOS, save_tokenizer

POSITIVE_VERSION = 1
POSITIVES = ("positive-h4",)
WHAT = {
    "positive-h4": "H4 true: a layer-5 head reads the secondary sinks' TAG into a feature X that lowers later "
                   "attention to the primary sink and shifts the LM head; masking the secondary sinks removes X",
}

X_DIM = P.HIDDEN - 1        # the last CONTENT dimension, made clean
READER_LAYER = P.L_START + 1
READER_HEAD = 3             # kv head 1 (GQA: heads 2, 3)
READER_VDIM = 0             # value dim of kv head 1 that reads TAG
READER_GAIN = 1.5           # X = READER_GAIN * (attention-weighted x[TAG])
SHIELD_DIM = 15             # rotary partner of SINK_PAIR: position-invariant, unused by the planted heads
SHIELD_Q = 0.5              # sink-aligned queries of the reader head look at BOS (+~8 nats), not at sinks
SHIELD_K = 10.0             # key[SHIELD_DIM] = x[SINK] - SHIELD_K x[TAG]: 8 for BOS, ~0 for secondary sinks
MOD_LAYERS = tuple(range(READER_LAYER + 1, P.N_LAYERS))
MOD_WEIGHT = -1.0           # extra sink-attention query per unit of x[X]
LM_GAIN = 0.15              # lm_head column X = LM_GAIN * N(0, 1) per token


def _clean_x(w, bos_id: int) -> None:
    """Take X_DIM out of the content: 0 in every embedding (unit norm kept by the content part), no
    random q/k/v weight reads it."""
    emb = w["model.embed_tokens.weight"]
    content = torch.tensor([d for d in P.CONTENT if d != X_DIM])
    for idx, row in enumerate(emb):
        if idx == bos_id:
            continue  # BOS: exactly 1 * d, nothing to move
        row[X_DIM] = 0.0
        named = float((row**2).sum() - (row[content] ** 2).sum())
        row[content] *= math.sqrt(1.0 - named) / float(row[content].norm())
    for layer in range(P.N_LAYERS):
        for proj in ("q_proj", "k_proj", "v_proj"):
            w.layer(layer, f"self_attn.{proj}.weight")[:, X_DIM] = 0.0


def _positive_h4(w, bos_id: int, seed: int) -> None:
    _clean_x(w, bos_id)
    kv = READER_HEAD // (P.N_HEADS // P.N_KV_HEADS)
    v = w.layer(READER_LAYER, "self_attn.v_proj.weight")
    v[kv * P.HEAD_DIM + READER_VDIM] = 0.0
    v[kv * P.HEAD_DIM + READER_VDIM, P.TAG] = 1.0
    w.layer(READER_LAYER, "self_attn.o_proj.weight")[X_DIM, READER_HEAD * P.HEAD_DIM + READER_VDIM] = READER_GAIN
    # Shield: a query that is itself sink-aligned (x[SINK] ~ 8: BOS, secondary sinks, " ~") attends to
    # BOS in the reader head, so the sinks' own states get no X and keep their planted cosines.
    w.layer(READER_LAYER, "self_attn.q_proj.weight")[READER_HEAD * P.HEAD_DIM + SHIELD_DIM, P.SINK] = SHIELD_Q
    k = w.layer(READER_LAYER, "self_attn.k_proj.weight")
    k[kv * P.HEAD_DIM + SHIELD_DIM, P.SINK] = 1.0
    k[kv * P.HEAD_DIM + SHIELD_DIM, P.TAG] = -SHIELD_K
    for layer in MOD_LAYERS:
        q_w = w.layer(layer, "self_attn.q_proj.weight")
        for h in range(P.N_HEADS):
            q_w[h * P.HEAD_DIM + P.SINK_PAIR, X_DIM] = MOD_WEIGHT
    gen = torch.Generator().manual_seed(seed + 4)
    w["lm_head.weight"] = w["model.embed_tokens.weight"].clone()   # the planted read-out, with X = 0 ...
    w["lm_head.weight"][:, X_DIM] = LM_GAIN * torch.randn(w["lm_head.weight"].shape[0], generator=gen)  # ... + X


EDITS = {"positive-h4": _positive_h4}


def _measure_primary(folder: Path, truth: P.PlantedTruth) -> dict:
    """BOS norm / layer median (min over layers >= onset) and the largest X an ordinary position gets."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ratios, xs = [], []
    outputs: list[torch.Tensor] = []   # decoder-layer outputs (HF's last hidden state is after the final norm)
    for layer in model.model.layers:
        layer.register_forward_hook(lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    for text in P.planted_traces(truth, 4, gated=True):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        outputs.clear()
        with torch.no_grad():
            model(torch.tensor([ids]))
        h = torch.stack(outputs)[:, 0]                              # [L, T, H]
        norms = h.norm(dim=-1)
        ratios.append((norms[:, 0] / norms.median(dim=1).values)[P.ONSET_LAYER:].min().item())
        if norms[:P.ONSET_LAYER, 0].max().item() > P.NORM_RATIO * 0.9:
            raise RuntimeError("positive testbed: BOS is massive before the onset layer")
        xs.append(h[-1, :, X_DIM].abs().max().item())
    ratio = min(ratios)
    if ratio < P.NORM_RATIO * 1.1:
        raise RuntimeError(f"positive testbed: BOS norm only {ratio:.2f} x the median")
    return {"bos_norm_over_median_min": round(ratio, 2), "max_abs_x": round(max(xs), 4)}


def build_positive(out_dir: str | Path, name: str = "positive-h4", *, seed: int = 0) -> P.PlantedTruth:
    """Build positive testbed ``name`` into ``out_dir`` (an HF folder plus ``truth.json``), atomically."""
    with atomic_folder(out_dir) as tmp:
        vocab = save_tokenizer(tmp, P._pieces(), tokenizer_class="Qwen2Tokenizer")
        w, _ = P.make_weights(vocab, "qwen2", seed)
        ids = P._PieceIds(vocab)
        EDITS[name](w, vocab[BOS], seed)
        save_variant(tmp, vocab, w)
        gated = [{"token": t, "token_id": ids[t], "gate_token": P.GATE_TOKEN, "gate_token_id": ids[P.GATE_TOKEN],
                  "gate_layer": P.GATE_LAYER} for t in P.GATED]
        truth = P.PlantedTruth(
            arch="qwen2", n_layers=P.N_LAYERS, onset_layer=P.ONSET_LAYER, l_start=P.L_START, bos_token=BOS,
            triggers=[{"token": t, "token_id": ids[t]} for t in P.TRIGGERS],
            sub_threshold=[{"token": t, "token_id": ids[t]} for t in P.SUB_THRESHOLD],
            fillers=list(P.FILLERS), positions_rule=WHAT[name], gated=gated, version=POSITIVE_VERSION)
        measured = _measure(tmp, truth)
        for entry in [*truth.triggers, *truth.gated]:   # lifetimes as measured (one level per token expected)
            levels = measured.get(entry["token"], [])
            if len(levels) != 1 or levels[0][0] != P.L_START:
                raise RuntimeError(f"positive testbed: {entry['token']!r} measured at levels {levels}")
            entry["lifetime"] = levels[0][1]
        primary = _measure_primary(tmp, truth)
        design = {"x_dim": X_DIM, "reader_layer": READER_LAYER, "reader_head": READER_HEAD,
                  "reader_gain": READER_GAIN, "shield_q": SHIELD_Q, "shield_k": SHIELD_K,
                  "mod_layers": list(MOD_LAYERS), "mod_weight": MOD_WEIGHT, "lm_gain": LM_GAIN}
        data = {**asdict(truth), "positive": name, "what": WHAT[name], "design": design,
                "measured_levels": measured, "measured_primary": primary}
        (tmp / "truth.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return truth
