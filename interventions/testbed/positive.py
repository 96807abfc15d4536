"""H4-positive testbed: the planted model changed so that masking secondary sinks matters downstream.

Loaded like the other testbeds (``testbed:positive-h4``). It starts from the planted weights
(:mod:`.planted`), keeps every planted sink mechanism, and adds one attention path that carries
what the secondary sinks hold to the primary sink and to the predictions. ``truth.json`` lists
the sinks a forward pass of the saved weights shows under the cosine rule alone (every decision
clears 0.95 by >= 0.005) and the primary sink's norm ratio (> 5 x the layer median by a wide
margin), measured, not assumed.

What is planted on top of the planted model (x = RMSNorm(h) ~ 8 h / |h|):

* **A clean feature X** (residual dimension ``X_DIM`` = 63, taken out of CONTENT): every
  embedding has 0 there (the content part of each row is rescaled so that the row keeps unit norm
  and every named feature keeps its planted value, so N = 12 / 22 / 35 are unchanged) and every
  random query/key/value weight reading it is zeroed. Nothing but the reader head writes X.
* **Reader head** (layer ``READER_LAYER`` = 5, head ``READER_HEAD`` = 3 on kv head 1: the first
  attention that reads h[4], where the layer-4 MLP wrote the secondary sinks). It keeps the
  planted sink-attention query; value dim ``READER_VDIM`` reads x[TAG] (secondary sinks at h[4]:
  8 N 0.0995 / sqrt(N^2 + 1) ~ 0.79 for every N; BOS and ordinary tokens: 0) and o_proj writes
  ``READER_GAIN`` (1.5) times it into X. So every query t after a secondary sink carries
  X(t) ~ 1.5 * 0.79 * sum_s a5[t, s] (a5: head 3's attention at layer 5; ~0.05 to " ^", ~0.25 to
  " @" from a query that sees one of them), i.e. X ~ 0.05 .. 0.4. Masking the secondary sinks
  at layer 5 (every sink lives there: l_start = 4, lifetime >= 2) sets X to 0 downstream, except
  the tiny share the sub-threshold " ~" (N = 2.8, also TAG-marked, key ~ -6 nats) contributes.
* **X lowers attention to the primary sink** in layers ``MOD_LAYERS`` = 6..11: every head's
  sink-attention query (bias BETA[h] on rotary pair 7) gets ``MOD_WEIGHT`` (-0.5) x[X] more, so
  BOS's logit moves by -0.5 x[X] * ALPHA * 8 / 4 = -0.33 x[X] nats (x[X] ~ 8 X: up to ~ -1 nat;
  ordinary keys have 0 on that pair and do not move). In the clean run BOS's share from a query
  after a secondary sink is thus *lower* than in the planted model; masking the sinks removes X
  and the primary sink score rises, in the masked layers (on top of softmax renormalisation, which
  removing a key also causes) and after them (layer 11, where nothing is masked and
  renormalisation predicts no change at all).
* **The LM head reads X**: lm_head column X is ``LM_GAIN`` (0.4) times a fixed random normal
  vector, so the logits of a query carrying X shift by ~0.4 * 8 X * r_v nats; removing X changes
  next-token predictions (KL of a few hundredths of a nat and more after a secondary sink),
  while masking ordinary tokens removes no X (their TAG is 0) and changes them only through the
  tiny renormalisation of the reader head.

Why H4 is true here: masking attention to the secondary sinks in their lifetime layers changes
the primary sink's score beyond what renormalisation predicts (its direction is even opposite to
what a pure renormalisation-free reading of the clean layer would expect in layer 11, where the
clean and masked attention differ only through X), and changes the predictions far more than
masking matched random tokens, which carry no TAG. Side effects, all measured in ``truth.json``:
ordinary tokens' norms grow to at most sqrt(1 + X^2) (< 1.1), BOS stays exactly 100 d (its X is 0:
it attends only to itself), secondary sinks get X too (their cosine to BOS falls by < 0.004).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from . import planted as P
from .negative import _measure
from .tokenizer import BOS, EOS, save_tokenizer

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
SHIELD_Q = 0.5              # sink-aligned queries of the reader head look at BOS (+~16 nats), not at sinks
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
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        vocab = save_tokenizer(tmp, P._pieces(), tokenizer_class="Qwen2Tokenizer")
        w, _ = P.make_weights(vocab, "qwen2", seed)
        ids = P._PieceIds(vocab)
        EDITS[name](w, vocab[BOS], seed)
        cfg = P._config("qwen2", vocab)
        cfg.save_pretrained(tmp)
        gen = {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS], "do_sample": False}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
        save_file({k: v.contiguous() for k, v in w.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
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
                  "reader_gain": READER_GAIN, "mod_layers": list(MOD_LAYERS), "mod_weight": MOD_WEIGHT,
                  "lm_gain": LM_GAIN}
        data = {**asdict(truth), "positive": name, "what": WHAT[name], "design": design,
                "measured_levels": measured, "measured_primary": primary}
        (tmp / "truth.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return truth
