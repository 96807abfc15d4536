"""Next-token NLL under streaming eviction (StreamingLLM's StartRecent cache), against full attention.

For each trace: one forward with full attention and one per ``keep_first`` value ``k`` with the
``streaming`` kind in every layer (a query sees the first ``k`` tokens and the ``window`` most
recent ones). NLL is averaged over the same positions in every condition: those whose query has
lost keys under every setting (``position >= max(k) + window``), so the numbers compare. Per
setting: ``delta_nll_k = nll_k - nll_full`` and, for ``k >= 1``, ``recovery_k = 1 - delta_k /
delta_0`` (1: the kept sinks restore full attention's NLL; 0: no better than the window alone).
"""

from __future__ import annotations

import numpy as np
import torch


@torch.inference_mode()
def _nll(loaded, ids: torch.Tensor, start: int) -> float:
    logits = loaded.model(input_ids=ids).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    return float(nll[start - 1:].mean())  # predictions of tokens start.. (made at positions start-1..)


def streaming_nll(loaded, traces: list[list[int]], *, keep_first=(0, 1, 2, 4), window: int = 32,
                  progress: bool = True) -> dict:
    """Per trace and setting, the mean NLL of the evaluated positions; summary medians over traces."""
    from interventions.api import edit
    from interventions.compile.kind_edits import Streaming
    from interventions.progress import track

    L = loaded.dims["layers"]
    start = max(keep_first) + window
    rows = []
    for i, ids_list in enumerate(track(traces, description="streaming", enabled=progress)):
        if len(ids_list) <= start + 1:
            continue
        ids = torch.tensor([ids_list], device=loaded.input_device)
        row = {"trace": i, "full": _nll(loaded, ids, start)}
        for k in keep_first:
            with edit(loaded, [Streaming(layer=range(L), positions=[], keep_first=k, window=window)]):
                row[f"k{k}"] = _nll(loaded, ids, start)
        rows.append(row)
    if not rows:
        return {"n_traces": 0, "reason": f"no trace is longer than {start + 1} tokens"}
    summary = {"nll_full": float(np.median([r["full"] for r in rows]))}
    deltas = {k: [r[f"k{k}"] - r["full"] for r in rows] for k in keep_first}
    for k in keep_first:
        summary[f"nll_k{k}"] = float(np.median([r[f"k{k}"] for r in rows]))
        summary[f"delta_nll_k{k}"] = float(np.median(deltas[k]))
    if 0 in keep_first:
        for k in keep_first:
            if k > 0:
                rec = [1 - dk / d0 for dk, d0 in zip(deltas[k], deltas[0]) if d0 > 0]
                summary[f"recovery_k{k}"] = float(np.median(rec)) if rec else None
    return {"n_traces": len(rows), "window": window, "keep_first": list(keep_first), "first_evaluated": start,
            "summary": summary, "traces": rows}


def run_streaming_experiment(exp, mode: str, settings: dict, out, progress: bool, overrides: dict) -> dict:
    """``kind: streaming`` of :mod:`interventions.studies.experiments`: the default mode runs every real
    configuration of the study in turn, ``--real --config NAME`` one of them; measured values are
    ``models.<config name>.summary.*``."""
    from .per_model import run_per_model

    def measure(loaded, traces, cfg):
        return streaming_nll(loaded, [t.token_ids for t in traces], keep_first=tuple(cfg.get("keep_first", (0, 1, 2, 4))),
                             window=int(cfg.get("window", 32)), progress=progress)

    return run_per_model(exp, mode, settings, out, overrides, measure)
