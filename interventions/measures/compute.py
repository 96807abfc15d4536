"""Measures: what changed between the clean and an intervened forward, per target and layer.

All functions are pure (observations in, arrays or rows out). Sink membership per layer uses
the same rule as detection (cosine to the primary sink and norm vs the layer's median).
"""

from __future__ import annotations

import numpy as np
import torch

from interventions.detection.rules import DetectionConfig, aligned_layers, sink_level
from interventions.models.memory import DIVERGENCE_CHUNK
from interventions.observation import Observation

PER_LAYER = ("hidden_norm", "hidden_cos", "mlp_out_norm", "sink_score", "primary_sink_score", "is_sink")


def per_layer(obs: Observation, config: DetectionConfig, *, primary_position: int = 0) -> dict[str, np.ndarray]:
    """Every per-layer measure as an [L, T] array (``primary_sink_score`` broadcast over T)."""
    scores = obs.mean_sink_scores()
    L, T = scores.shape
    return {
        "hidden_norm": obs.profiles["hidden_norm"],
        "hidden_cos": obs.profiles["hidden_cos"],
        "mlp_out_norm": obs.profiles["mlp_out_norm"],
        "sink_score": scores,
        "primary_sink_score": np.repeat(scores[:, primary_position:primary_position + 1], T, axis=1),
        "is_sink": aligned_layers(obs, config),
    }




def next_token_divergence(clean_logits: torch.Tensor, logits: torch.Tensor, token_ids) -> tuple[np.ndarray, np.ndarray]:
    """Per position t: KL(clean || intervened) of the next-token distribution, and the change in
    NLL of the actual next token (intervened minus clean; NaN at the last position)."""
    T = clean_logits.shape[0]
    ids = torch.as_tensor(np.asarray(token_ids), device=logits.device)
    kl = np.empty(T, dtype=np.float64)
    delta = np.full(T, np.nan, dtype=np.float64)
    for t0 in range(0, T, DIVERGENCE_CHUNK):  # float32 log-softmaxes of T x vocab would dwarf the logits
        t1 = min(T, t0 + DIVERGENCE_CHUNK)
        lp_clean = torch.log_softmax(clean_logits[t0:t1].to(logits.device).float(), dim=-1)
        lp = torch.log_softmax(logits[t0:t1].float(), dim=-1)
        kl[t0:t1] = (lp_clean.exp() * (lp_clean - lp)).sum(-1).clamp_min(0).cpu().numpy()
        n = min(t1, T - 1) - t0  # rows with a next token
        if n > 0:
            nxt = ids[t0 + 1:t0 + 1 + n, None]
            delta[t0:t0 + n] = (lp_clean[:n].gather(1, nxt) - lp[:n].gather(1, nxt))[:, 0].cpu().numpy()
    return kl, delta


def first_non_finite(obs: Observation, clean: Observation) -> dict | None:
    """Where an intervened forward first went NaN/inf while the clean one stayed finite, else None.

    Returns ``{"quantity", "layer", "position", "value"}`` for the earliest layer (then position)
    over every profile, the sink scores and the logits (layer = number of layers for logits).
    """
    found = []
    L = obs.n_layers
    arrays = dict(obs.profiles)
    arrays["sink_score"] = obs.sink_scores
    for name, values in arrays.items():
        ref = clean.profiles.get(name) if name != "sink_score" else clean.sink_scores
        bad = ~np.isfinite(values) & (np.isfinite(ref) if ref is not None and ref.shape == values.shape else True)
        if bad.any():
            hit = np.argwhere(bad)[0]
            found.append((int(hit[0]), int(hit[-1]), name, float(values[tuple(hit)])))
    if obs.logits is not None:
        bad = ~torch.isfinite(obs.logits).all(dim=-1)
        if clean.logits is not None and clean.logits.shape == obs.logits.shape:
            bad &= torch.isfinite(clean.logits).all(dim=-1).to(bad.device)
        if bool(bad.any()):
            pos = int(torch.nonzero(bad)[0, 0])
            row = obs.logits[pos].float()
            found.append((L, pos, "logits", float(row[~torch.isfinite(row)][0])))
    if not found:
        return None
    layer, position, name, value = min(found)
    return {"quantity": name, "layer": layer, "position": position, "value": str(value)}


def mean_after(values: np.ndarray | None, position: int) -> float:
    """Mean of the finite ``values`` from ``position`` on (NaN when there are none, or no values)."""
    if values is None:
        return float("nan")
    tail = values[position:]
    tail = tail[np.isfinite(tail)]
    return float(tail.mean()) if tail.size else float("nan")


def target_rows(*, clean: dict[str, np.ndarray], edited: dict[str, np.ndarray], kl: np.ndarray | None,
                delta_nll: np.ndarray | None, position: int, ref_layer: int | None, base: dict) -> list[dict]:
    """One row per layer for one target: intervened and ``clean_`` values side by side."""
    L = clean["is_sink"].shape[0]
    # the one definition of a level (the longest aligned run), as detection and target selection use it
    l_start, lifetime = sink_level(edited["is_sink"][:, position])
    c_start, c_life = sink_level(clean["is_sink"][:, position])
    ref = ref_layer if ref_layer is not None and 0 <= ref_layer < L else (c_start if c_start >= 0 else None)
    # Within a layer attention runs before the MLP, so an edit at layer l is first seen by the
    # attention of layer l + 1: that is where its effect on the sink score is read.
    seen = None if ref is None else min(ref + 1, L - 1)
    per_target = {
        **base,
        "l_start": l_start, "lifetime": lifetime, "clean_l_start": c_start, "clean_lifetime": c_life,
        "ref_layer": -1 if ref is None else ref,
        "ref_mlp_out_norm": float("nan") if ref is None else float(edited["mlp_out_norm"][ref, position]),
        "clean_ref_mlp_out_norm": float("nan") if ref is None else float(clean["mlp_out_norm"][ref, position]),
        "ref_sink_score": float("nan") if seen is None else float(edited["sink_score"][seen, position]),
        "clean_ref_sink_score": float("nan") if seen is None else float(clean["sink_score"][seen, position]),
        "kl": mean_after(kl, position),
        "delta_nll": mean_after(delta_nll, position),
        "suppressed": bool(c_life > 0 and lifetime == 0),
    }
    rows = []
    for layer in range(L):
        row = dict(per_target, layer=layer)
        for name in PER_LAYER:
            value, clean_value = edited[name][layer, position], clean[name][layer, position]
            row[name] = bool(value) if name == "is_sink" else float(value)
            row["clean_" + name] = bool(clean_value) if name == "is_sink" else float(clean_value)
        rows.append(row)
    return rows
