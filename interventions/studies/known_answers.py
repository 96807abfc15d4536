"""Known answers on real weights: three causal facts about primary sinks that the literature settled.

Each check edits a real model and compares it with a matched control edit; ``experiments/primary_sink_checks``
states, before any number was seen, what counts as "as expected".

(a) **Where the massive activation is written** (Sun et al. 2024, Sec. 2: a few early layers write it).
    Zeroing the MLP output of the onset layer at the primary sink only removes the massive norm
    downstream; zeroing the MLP of a later layer (halfway from the onset to the last layer) there does not.
    Effect: the sink's hidden-state norm after the later layer, edited / clean (median over layers).
(b) **Set to zero vs set to mean** (Sun et al., Table 3). Setting the massive channels of the sink's
    hidden state at the onset layer to zero collapses next-token prediction; setting them to their
    mean over the traces does not. Effect: the change in mean next-token NLL (nats).
(c) **Attention to the sink is load-bearing** (StreamingLLM, Xiao et al. 2024). Removing every query's
    attention to the primary sink in every layer from the onset raises NLL far more than removing the
    attention to a matched ordinary position (the first later token whose norm is never above 2x the
    layer median). Effect: the change in mean next-token NLL (nats).

NLL is scored on the tokens after both edited positions (the same tokens for every edit). The edits
use the compiled kinds (``zero`` on ``mlp_output``, ``attention_mask``); setting *channels* to a value
has no kind, so (b) is a small forward hook on the block output (:func:`_set_channels`).

The primary sink is the detector's (:func:`interventions.detection.rules.find_primary_sinks` and
:func:`~interventions.detection.rules.choose_reference` on the plain hidden states' norms: the same rule,
onset and reference as ``intervene detect``); :func:`find_primary_sink` adds only the massive channels
that check (b) edits.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch

from interventions.compile import Edit, compile_edits
from interventions.detection.rules import DetectionConfig, choose_reference, find_primary_sinks
from interventions.models.adapters import decoder_layers


@dataclass
class PrimarySink:
    position: int
    token: str
    onset_layer: int
    """The detector's onset: the first layer of the massive run that persists to the end of the network."""
    peak_ratio: float
    """Largest hidden-state norm over the layer's median norm, over layers."""
    median_ratio: float
    channels: list[int]
    """The massive channels of its hidden state at the onset layer (|value| >= 100x the layer's median |value|)."""
    values: list[float]


def _block_outputs(model, adapter, run):
    """Run ``run()`` with hooks keeping every decoder layer's output [L, T, D] (float32, batch of one)."""
    kept = []
    handles = [b.register_forward_hook(lambda m, a, o: kept.append((o[0] if isinstance(o, tuple) else o)[0].float()))
               for b in decoder_layers(model, adapter)]
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    return torch.stack(kept), out


def find_primary_sink(hidden: torch.Tensor, tokens: list[str], *, max_channels: int = 8,
                      channel_ratio: float = 100.0, config: DetectionConfig = DetectionConfig()) -> PrimarySink:
    """The detector's reference primary sink of one trace from plain hidden states (``hidden``: [L, T, D]), with
    its massive channels at the onset layer."""
    norms = hidden.norm(dim=-1)  # [L, T]
    primaries = find_primary_sinks(norms.cpu().numpy(), config)
    position = choose_reference(primaries, config)
    if position is None:
        raise ValueError("no primary sink in this trace (no massive activation persists to the end of the network)")
    onset = next(p.onset for p in primaries if p.position == position)
    ratio = norms / norms.median(dim=1, keepdim=True).values
    state = hidden[onset, position]
    floor = channel_ratio * hidden[onset].abs().median()
    order = state.abs().argsort(descending=True)[:max_channels]
    channels = [int(c) for c in order if state[c].abs() >= floor] or [int(order[0])]
    return PrimarySink(position=position, token=tokens[position], onset_layer=onset,
                       peak_ratio=float(ratio[:, position].max()), median_ratio=float(ratio[:, position].median()),
                       channels=channels, values=[float(state[c]) for c in channels])


def ordinary_position(hidden: torch.Tensor, sink: int, *, skip: int = 3, max_ratio: float = 2.0) -> int:
    """The matched control for (c): the first position after ``sink + skip`` never above ``max_ratio`` x median."""
    norms = hidden.norm(dim=-1)
    ratio = (norms / norms.median(dim=1, keepdim=True).values).amax(dim=0)
    for p in range(sink + skip, hidden.shape[1]):
        if ratio[p] < max_ratio:
            return p
    raise ValueError("no ordinary position in this trace")


def _nll(logits: torch.Tensor, ids: torch.Tensor, start: int) -> float:
    """Mean next-token NLL of the tokens at positions >= ``start``."""
    return float(torch.nn.functional.cross_entropy(logits[0, start - 1:-1].float(), ids[0, start:]))


@contextmanager
def _set_channels(loaded, layer: int, position: int, channels: list[int], values: torch.Tensor):
    """Overwrite ``channels`` of the hidden state at (``layer`` output, ``position``) with ``values``."""
    block = decoder_layers(loaded.model, loaded.adapter)[layer]

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        h[0, position, channels] = values.to(h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def run_known_answers(loaded, traces, *, progress: bool = True) -> dict:
    """Measure (a), (b), (c) on ``traces`` (lists of token ids); per-trace values and their medians."""
    from interventions.progress import track

    model, adapter = loaded.model, loaded.adapter
    L = loaded.dims["layers"]
    device = loaded.input_device
    clean = []
    for ids_list in track(traces, description="clean forwards", enabled=progress):
        ids = torch.as_tensor(ids_list, device=device)[None]
        with torch.inference_mode():
            hidden, out = _block_outputs(model, adapter, lambda: model(input_ids=ids, use_cache=False))
        tokens = loaded.tokenizer.convert_ids_to_tokens(ids_list)
        sink = find_primary_sink(hidden, tokens)
        control = ordinary_position(hidden, sink.position)
        clean.append({"ids": ids, "hidden_norm": hidden.norm(dim=-1), "logits": out.logits, "sink": sink,
                      "control": control, "sink_states": hidden[:, sink.position]})  # [L, D]
    # (b) the mean of each massive channel over traces, at each trace's own onset layer and sink position
    per_trace = []
    for c in track(clean, description="edited forwards", enabled=progress):
        ids, sink, control = c["ids"], c["sink"], c["control"]
        onset, pos = sink.onset_layer, sink.position
        start = max(pos, control) + 2
        base_nll = _nll(c["logits"], ids, start)
        later = (onset + L) // 2
        window = slice(later + 1, L - 1) if later + 1 < L - 1 else slice(L - 1, L)

        def forward(edits, extra=None):
            plan = compile_edits(loaded, edits)
            with torch.inference_mode(), (extra if extra is not None else _nothing()):
                hidden, out = _block_outputs(model, adapter, lambda: plan.forward(input_ids=ids, use_cache=False))
            return hidden.norm(dim=-1), out.logits

        def downstream(norms):
            return float((norms[window, pos] / c["hidden_norm"][window, pos]).median())

        # (a)
        n_onset, _ = forward([Edit("zero", onset, [pos], site="mlp_output")])
        n_later, _ = forward([Edit("zero", later, [pos], site="mlp_output")])
        # (b)
        # Sun et al.'s set-to-mean: the channels' mean over traces, at this layer, at each trace's primary sink
        mean_values = torch.stack([x["sink_states"][onset, sink.channels] for x in clean]).mean(0)
        _, logits_zero = forward([], _set_channels(loaded, onset, pos, sink.channels, torch.zeros_like(mean_values)))
        _, logits_mean = forward([], _set_channels(loaded, onset, pos, sink.channels, mean_values))
        # Reported, not a criterion (added after the first SmolLM2 run showed the mean can equal the value:
        # a position-0 sink's state depends on no other token, so identical first tokens give identical
        # states): zeroing as many *ordinary* channels of the sink (those nearest the median |value|).
        state = c["sink_states"][onset]
        ordinary = [int(i) for i in (state.abs() - state.abs().median()).abs().argsort()
                    if int(i) not in sink.channels][:len(sink.channels)]
        _, logits_ordinary = forward([], _set_channels(loaded, onset, pos, ordinary, torch.zeros(len(ordinary))))
        # (c)
        _, logits_mask_sink = forward([Edit("attention_mask", l, [pos]) for l in range(onset, L)])
        _, logits_mask_ctrl = forward([Edit("attention_mask", l, [control]) for l in range(onset, L)])
        per_trace.append({
            "sink": asdict(sink), "control_position": control,
            "control_token": loaded.tokenizer.convert_ids_to_tokens([int(ids[0, control])])[0],
            "later_layer": later, "scored_from": start, "clean_nll": base_nll,
            "mlp_zero_onset_norm_ratio": downstream(n_onset), "mlp_zero_later_norm_ratio": downstream(n_later),
            "mean_values": [float(v) for v in mean_values],
            "mean_minus_value_max": float((mean_values - state[sink.channels]).abs().max()),
            "set_zero_ordinary_channels_delta_nll": _nll(logits_ordinary, ids, start) - base_nll,
            "set_zero_delta_nll": _nll(logits_zero, ids, start) - base_nll,
            "set_mean_delta_nll": _nll(logits_mean, ids, start) - base_nll,
            "mask_sink_delta_nll": _nll(logits_mask_sink, ids, start) - base_nll,
            "mask_control_delta_nll": _nll(logits_mask_ctrl, ids, start) - base_nll,
        })
    keys = ("clean_nll", "mlp_zero_onset_norm_ratio", "mlp_zero_later_norm_ratio", "set_zero_delta_nll",
            "set_mean_delta_nll", "set_zero_ordinary_channels_delta_nll", "mean_minus_value_max",
            "mask_sink_delta_nll", "mask_control_delta_nll")
    summary = {k: float(np.median([t[k] for t in per_trace])) for k in keys}
    summary["range"] = {k: [float(min(t[k] for t in per_trace)), float(max(t[k] for t in per_trace))] for k in keys}
    ratio = summary["mask_control_delta_nll"]
    summary["mask_sink_over_control"] = (summary["mask_sink_delta_nll"] / ratio) if ratio > 0 else None
    summary["sink_positions"] = sorted({t["sink"]["position"] for t in per_trace})
    summary["onset_layers"] = sorted({t["sink"]["onset_layer"] for t in per_trace})
    summary["n_traces"] = len(per_trace)
    return {"summary": summary, "traces": per_trace}


@contextmanager
def _nothing():
    yield


def run_known_answers_experiment(exp, mode: str, settings: dict, out, progress: bool, overrides: dict) -> dict:
    """``kind: known_answers`` of :mod:`interventions.studies.experiments`: the default mode runs every real
    configuration of the study in turn, ``--real --config NAME`` one of them.

    Measured: ``models.<config name>.summary.*`` (medians over traces, ``range`` = min/max) and
    ``models.<config name>.traces`` (every per-trace value); each model's record is also written to
    ``<out>/<config name>.json``.
    """
    from .per_model import run_per_model

    return run_per_model(exp, mode, settings, out, overrides,
                         lambda loaded, traces, cfg: run_known_answers(loaded, [t.token_ids for t in traces],
                                                                       progress=progress))
