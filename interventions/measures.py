"""Measures: what changed between the clean and an intervened forward, per target and layer.

All functions are pure (observations in, arrays or rows out). Sink membership per layer uses
the same rule as detection (cosine to the primary sink and norm vs the layer's median).
"""

from __future__ import annotations

import numpy as np
import torch

from .detection import DetectionConfig, aligned_layers
from .observe import Observation

PER_LAYER = ("hidden_norm", "hidden_cos", "mlp_out_norm", "sink_score", "primary_sink_score", "is_sink")


def first_run(column: np.ndarray) -> tuple[int, int]:
    """(l_start, lifetime) of the first run of True; (-1, 0) when there is none."""
    hits = np.flatnonzero(column)
    if not hits.size:
        return -1, 0
    start = int(hits[0])
    n = 0
    while start + n < column.shape[0] and column[start + n]:
        n += 1
    return start, n


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
    lp_clean = torch.log_softmax(clean_logits.float(), dim=-1)
    lp = torch.log_softmax(logits.float(), dim=-1)
    kl = (lp_clean.exp() * (lp_clean - lp)).sum(-1).clamp_min(0).cpu().numpy()
    ids = torch.as_tensor(np.asarray(token_ids), device=lp.device)
    nxt = ids[1:, None]
    delta = torch.full((lp.shape[0],), float("nan"))
    delta[:-1] = (lp_clean[:-1].gather(1, nxt) - lp[:-1].gather(1, nxt))[:, 0].cpu()
    return kl.astype(np.float64), delta.numpy().astype(np.float64)


def mean_after(values: np.ndarray, position: int) -> float:
    tail = values[position:]
    tail = tail[np.isfinite(tail)]
    return float(tail.mean()) if tail.size else float("nan")


def target_rows(*, clean: dict[str, np.ndarray], edited: dict[str, np.ndarray], kl: np.ndarray,
                delta_nll: np.ndarray, position: int, ref_layer: int | None, base: dict) -> list[dict]:
    """One row per layer for one target: intervened and ``clean_`` values side by side."""
    L = clean["is_sink"].shape[0]
    l_start, lifetime = first_run(edited["is_sink"][:, position])
    c_start, c_life = first_run(clean["is_sink"][:, position])
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
