"""Noisy negative testbeds: one hypothesis false by construction, while its edit still moves activations.

The exact-null negatives (:mod:`.negative`: ``negative-h1`` zeroes an MLP that writes nothing, the
planted model's attention writes nothing for H4) give bit-identical forwards under the edit, so a
"not supported" there only shows that an identical forward is not an effect. Here the edit changes
the forward (never bit-identical to clean), some sinks sit near the 0.95 cosine threshold so the
edit moves some of them across it, and still the claimed mechanism is absent:

* **noisy-h1** (H1 false): ``negative-h1``'s layer-4 attention head writes the sinks (it copies 22 x
  BOS's sink coordinate into every trigger). The trigger embeddings carry ``TRIGGER_CONTENT`` x their
  content (RMSNorm makes every x unchanged, only the residual norm grows), a layer-3 previous-token
  head adds ``PREV_COPY`` x the previous token's content to every token, and the layer-4 MLP writes a
  random linear function of that content (``NOISE_NEURONS`` neurons gated by x[SINK], so only sinks
  and BOS fire, and BOS has no content): token- and context-dependent, with a d component of either
  sign (mean 0 over occurrences). Trigger cosines lie around 0.95; zeroing the MLP moves some of them
  across (both ways), but the MLP does not write the sinks: over occurrences it pushes as many over the
  threshold as under, and a random direction of the same norm added at the same site loses more sinks
  than zeroing does. The verdict's placebo is matched to the change's part orthogonal to the sink
  direction, which is small here: the clean sinks (selected on the outcome, so pushed up on average)
  lose more under zeroing than under it, and H1 is "supported" in 20 of 40 draws at G = 30 (README,
  calibration; ``benchmarks/h1_occurrences.py`` reads the same edit over every occurrence).
* **noisy-h4** (H4 false): the planted model plus an o_proj in every head from layer 1 on that writes
  ordinary content (``HEAD_OUT`` x a random map of the head's value, whose read-out is the planted random
  content read-out), so attention writes something everywhere and masking any key changes the forward.
  Nothing reads the secondary sinks specifically: their values are their content shrunk by RMSNorm
  (|h| ~ N), so masking them removes less than masking ordinary tokens of the same attention mass.
* **noisy-h3** (H3 false): ``negative-h3`` (the token after ``" $"`` becomes a sink through a layer-4
  previous-token head reading the GATE feature of ``" $"``) with the noisy-h1 content path (every
  token's content x ``H3_CONTENT`` except ``" $"``'s, layer-4 noise MLP gated by x[SINK]; no
  previous-token copy). A mean swap at
  the sink's own position before layer 4 changes its content and so the noise MLP's output: near-
  threshold sinks cross either way, but the decision (the copy of ``" $"``'s GATE) is never at the sink's
  own position.
* **noisy-h2** (H2 false): ``negative-h2`` (every secondary sink ends at layer 8, where BOS turns,
  whatever its norm) with the layer-4 MLP also writing random content (``NOISE_NEURONS`` gated by
  x[TRIG], what the trigger neuron reads: only trigger-class tokens) in the same output, so scaling it scales content and sink
  direction together: cosines move (the embedding's share changes), lifetimes do not follow the norm.

Each is built per weight ``seed`` (``testbed:noisy-h1@seed3``; the embeddings, the content maps
and the noise directions are drawn from it) so calibration can draw new weights per simulated run.
``truth.json`` records what was planted and the measured cosines of every role token at its l_start.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from . import planted as P
from .negative import (EDITS as NEGATIVE_EDITS, atomic_folder, every_role_token_gated, previous_token_attention,
                       save_variant)
from .tokenizer import BOS, save_tokenizer

NOISY_VERSION = 1
NOISIES = ("noisy-h1", "noisy-h2", "noisy-h3", "noisy-h4")
WHAT = {
    "noisy-h1": "H1 false, noisy: a layer-4 attention head writes the sinks; the layer-4 MLP writes token- and "
                "context-dependent content with a d component of either sign, so zeroing it moves near-threshold "
                "sinks both ways without preventing them",
    "noisy-h2": "H2 false, noisy: every secondary sink ends at layer 8 whatever its norm; the layer-4 MLP output "
                "also carries random content, so scaling it moves cosines but lifetime does not follow the norm",
    "noisy-h3": "H3 false, noisy: the token after ' $' becomes a sink through a layer-4 previous-token head; its "
                "own content feeds a layer-4 noise MLP, so own-position swaps move near-threshold cosines both "
                "ways, but the decision is never at the sink's own position",
    "noisy-h4": "H4 false, noisy: every head from layer 1 writes ordinary content (masking any key changes the "
                "forward); nothing reads the secondary sinks specifically",
}

TRIGGER_CONTENT = 7.5        # trigger-class embeddings: content x this (norm grows; RMSNorm input unchanged)
PREV_LAYER = P.L_START - 1   # layer of the content-copying previous-token head
PREV_HEAD = 1                # head 1 (kv head 0); value dims 1.. carry content
PREV_DIMS = 15               # value dims 1..15 of kv head 0 at PREV_LAYER
PREV_COPY = 4.0              # norm of the previous token's (projected) content added to every token
NOISE_NEURONS = tuple(range(8, 24))
NOISE_GAIN = 0.7             # down_proj scale of the noise neurons
NOISE_D_SHARE = 0.95         # share of each noise direction along d (sign random per neuron)
H3_CONTENT = 6.5             # noisy-h3: content factor of the role tokens that follow " $"
H3_NOISE_GAIN = 0.7          # noisy-h3: down_proj scale of the noise neurons
H2_NOISE_GAIN = 0.4          # noisy-h2: down_proj scale of the noise neurons (gated by x[TRIG])
H2_D_SHARE = 0.3             # noisy-h2: share of each noise direction along d
HEAD_OUT = 2.0               # noisy-h4: o_proj gain of the content every head writes


def _gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * seed + salt)


def _scale_trigger_content(w, ids, tokens, factor: float | None = None) -> None:
    """Trigger-class embeddings: the content part x TRIGGER_CONTENT (named features kept as planted)."""
    emb = w["model.embed_tokens.weight"]
    content = torch.tensor(P.CONTENT)
    for tok in tokens:
        emb[ids[tok], content] *= TRIGGER_CONTENT if factor is None else factor


def _prev_content_head(w, gen) -> None:
    """Head PREV_HEAD of PREV_LAYER attends to the previous token and adds PREV_COPY x its content
    (projected on PREV_DIMS random directions) to every token; BOS (no content) adds nothing."""
    layer = PREV_LAYER
    previous_token_attention(w, layer, PREV_HEAD)
    basis, _ = torch.linalg.qr(torch.randn(len(P.CONTENT), PREV_DIMS, generator=gen))   # [56, 15] orthonormal
    v = w.layer(layer, "self_attn.v_proj.weight")
    content = torch.tensor(P.CONTENT)
    v[1:1 + PREV_DIMS] = 0
    v[1:1 + PREV_DIMS, content] = basis.T
    o = w.layer(layer, "self_attn.o_proj.weight")
    # x = RMSNorm(h) = 8 h / |h|: a value of 8 x (content . basis) comes back as PREV_COPY / 8 x it
    scale = PREV_COPY / P.S_UNIT / math.sqrt(PREV_DIMS / len(P.CONTENT))
    o[content[:, None], torch.arange(PREV_HEAD * P.HEAD_DIM + 1, PREV_HEAD * P.HEAD_DIM + 1 + PREV_DIMS)[None, :]] = (
        scale * basis)


def _noise_mlp(w, gen, gate_dim: int, gain: float | None = None, d_share: float | None = None) -> None:
    """Layer-4 neurons NOISE_NEURONS: gate x[gate_dim], up a random content read-out, down a random
    direction with NOISE_D_SHARE along d (random sign): a random linear map of the content, only
    where x[gate_dim] is large."""
    layer, gain = P.L_START, NOISE_GAIN if gain is None else gain
    d_share = NOISE_D_SHARE if d_share is None else d_share
    content = torch.tensor(P.CONTENT)
    for j in NOISE_NEURONS:
        w.layer(layer, "mlp.gate_proj.weight")[j, gate_dim] = 1.0
        up = torch.randn(len(P.CONTENT), generator=gen)
        w.layer(layer, "mlp.up_proj.weight")[j, content] = up / up.norm()
        down = torch.zeros(P.HIDDEN)
        orth = torch.randn(len(P.CONTENT), generator=gen)
        down[content] = orth / orth.norm() * math.sqrt(1 - d_share**2)
        down[P.SINK] = d_share * (1.0 if torch.rand(1, generator=gen).item() < 0.5 else -1.0)
        w.layer(layer, "mlp.down_proj.weight")[:, j] = gain * down


def _noisy_h1(w, ids, seed: int) -> None:
    NEGATIVE_EDITS["negative-h1"](w, ids)
    _scale_trigger_content(w, ids, [*P.TRIGGERS])
    _prev_content_head(w, _gen(seed, 1))
    _noise_mlp(w, _gen(seed, 2), P.SINK)


def _noisy_h3(w, ids, seed: int) -> None:
    NEGATIVE_EDITS["negative-h3"](w, ids)
    # the sink's own content feeds the noise MLP (no previous-token copy: the previous token is always " $",
    # whose copied content would give every sink of a seed the same push). Every token's content is scaled
    # (BOS has none; " $" keeps norm 1 so the copied x[GATE] keeps its planted size): a role token alone
    # at 6.5x the median would be born massive at layer 0 and count as a primary sink.
    emb, content = w["model.embed_tokens.weight"], torch.tensor(P.CONTENT)
    keep = ids[P.GATE_TOKEN]
    for idx in range(emb.shape[0]):
        if idx != keep:
            emb[idx, content] *= H3_CONTENT
    _noise_mlp(w, _gen(seed, 2), P.SINK, gain=H3_NOISE_GAIN)


def _noisy_h2(w, ids, seed: int) -> None:
    NEGATIVE_EDITS["negative-h2"](w, ids)
    # no previous-token copy here: content added before layer 4 would shrink x[TRIG] and so N itself
    # gated by x[TRIG] (what the trigger neuron reads): the noise rides in the same output as N u
    _noise_mlp(w, _gen(seed, 2), P.TRIG, gain=H2_NOISE_GAIN, d_share=H2_D_SHARE)


def _noisy_h4(w, ids, seed: int) -> None:
    gen = _gen(seed, 3)
    for layer in range(P.ONSET_LAYER, P.N_LAYERS):
        o = w.layer(layer, "self_attn.o_proj.weight")
        content = torch.tensor(P.CONTENT)
        for h in range(P.N_HEADS):
            if layer == P.GATE_LAYER and h == 0:
                continue   # the planted previous-token head (PREV_GATE) keeps its o_proj
            cols = torch.arange(h * P.HEAD_DIM + 1, (h + 1) * P.HEAD_DIM)
            o[content[:, None], cols[None, :]] = HEAD_OUT * torch.randn(len(content), len(cols), generator=gen) / \
                math.sqrt(len(content))


EDITS = {"noisy-h1": _noisy_h1, "noisy-h2": _noisy_h2, "noisy-h3": _noisy_h3, "noisy-h4": _noisy_h4}


def _role_cosines(folder: Path, truth: P.PlantedTruth, n: int = 4) -> dict:
    """Cosine to BOS at l_start of every role-token occurrence on the testbed's own traces (min, max,
    share above 0.95), per token: the near-threshold spread the testbed is built to have."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    roles = {t["token"] for t in [*truth.triggers, *truth.sub_threshold, *truth.gated]}
    by_token: dict[str, list[float]] = {}
    for text in P.planted_traces(truth, n, gated=True):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1:]
        h = torch.stack(hs)[P.L_START, 0]
        cos = torch.nn.functional.cosine_similarity(h, h[:1], dim=-1)
        for t in range(1, len(ids)):
            piece = tok.decode([ids[t]])
            if piece in roles:
                by_token.setdefault(piece, []).append(float(cos[t]))
    return {k: {"n": len(v), "min": round(min(v), 4), "max": round(max(v), 4),
                "share_above": round(sum(c > P.COS_MIN for c in v) / len(v), 3)} for k, v in sorted(by_token.items())}


def noisy_folder_name(name: str, seed: int) -> str:
    """Cache folder name of a noisy testbed build."""
    return f"{name}-v{NOISY_VERSION}-seed{seed}"


def build_noisy(out_dir: str | Path, name: str, *, seed: int = 0) -> P.PlantedTruth:
    """Build noisy testbed ``name`` with weight seed ``seed`` into ``out_dir`` (HF folder + ``truth.json``)."""
    if name not in EDITS:
        raise ValueError(f"unknown noisy testbed {name!r}")
    with atomic_folder(out_dir) as tmp:
        vocab = save_tokenizer(tmp, P._pieces(), tokenizer_class="Qwen2Tokenizer")
        w, _ = P.make_weights(vocab, "qwen2", seed)
        ids = P._PieceIds(vocab)
        EDITS[name](w, ids, seed)
        save_variant(tmp, vocab, w)
        triggers = [{"token": t, "token_id": ids[t]} for t in P.TRIGGERS]
        gated = [{"token": t, "token_id": ids[t], "gate_token": P.GATE_TOKEN, "gate_token_id": ids[P.GATE_TOKEN],
                  "gate_layer": P.GATE_LAYER} for t in P.GATED]
        if name == "noisy-h3":  # sinks only after the gate: put every role token behind it once
            gated, triggers = every_role_token_gated(ids), []
        truth = P.PlantedTruth(
            arch="qwen2", n_layers=P.N_LAYERS, onset_layer=P.ONSET_LAYER, l_start=P.L_START, bos_token=BOS,
            triggers=triggers, sub_threshold=[{"token": t, "token_id": ids[t]} for t in P.SUB_THRESHOLD],
            fillers=list(P.FILLERS), positions_rule=WHAT[name], gated=gated, version=NOISY_VERSION)
        design = {"trigger_content": TRIGGER_CONTENT, "prev_layer": PREV_LAYER, "prev_head": PREV_HEAD,
                  "prev_copy": PREV_COPY, "noise_neurons": list(NOISE_NEURONS), "noise_gain": NOISE_GAIN,
                  "noise_d_share": NOISE_D_SHARE, "h3_content": H3_CONTENT, "h3_noise_gain": H3_NOISE_GAIN,
                  "h2_noise_gain": H2_NOISE_GAIN, "h2_d_share": H2_D_SHARE,
                  "head_out": HEAD_OUT, "seed": seed}
        data = {**asdict(truth), "noisy": name, "what": WHAT[name], "design": design,
                "cosines_at_l_start": _role_cosines(tmp, truth)}
        (tmp / "truth.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return truth
