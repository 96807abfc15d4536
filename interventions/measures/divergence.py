"""``kl`` and ``delta_nll``: how much the edit changed the next-token predictions from the target on.

Both come from one pass over the two forwards' logits (:func:`next_token_divergence`), run once
per condition whichever of the two a spec asks for.
"""

from __future__ import annotations

import numpy as np
import torch

from interventions.models.memory import DIVERGENCE_CHUNK
from interventions.spec.measures import Measure, register_measure


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


def mean_after(values: np.ndarray | None, position: int) -> float:
    """Mean of the finite ``values`` from ``position`` on (NaN when there are none, or no values)."""
    if values is None:
        return float("nan")
    tail = values[position:]
    tail = tail[np.isfinite(tail)]
    return float(tail.mean()) if tail.size else float("nan")


def _positions(clean, edited):
    kl, delta = next_token_divergence(clean.logits, edited.logits, clean.token_ids)
    return {"kl": kl, "delta_nll": delta}


def _divergence(name: str, meaning: str, per_target: str, per_position: str) -> Measure:
    """``kl`` or ``delta_nll``: the per-position array of :func:`next_token_divergence`, and its mean from the
    target on."""
    return register_measure(Measure(
        name=name, meaning=meaning, target_columns={name: per_target}, position_columns={name: per_position},
        target_values=lambda view: {name: mean_after(view.positions.get(name), view.position)},
        position_values=_positions, needs=("logits",),
    ))


KL = _divergence("kl", "KL(clean || intervened) of the next-token distributions",
                 "mean KL(clean || intervened) of next-token distributions at positions >= target",
                 "KL(clean || intervened) of the next-token distribution at this position")
DELTA_NLL = _divergence("delta_nll", "change in NLL of the trace's own next tokens",
                        "mean change in NLL of the actual next tokens at positions >= target",
                        "change in NLL of the actual next token (intervened minus clean)")
