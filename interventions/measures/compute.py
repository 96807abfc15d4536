"""The driver: every selected measure (:data:`interventions.spec.measures.MEASURES`) on one trace's forwards.

All functions are pure (observations in, arrays or rows out); what each column is, and how it is
computed, is the measure's own file. The sink level of a target, which several measures read,
has one definition: :func:`interventions.detection.rules.sink_level` of its per-layer membership
under the detection rule (:func:`~interventions.detection.rules.aligned_layers`).
"""

from __future__ import annotations

import numpy as np
import torch

from interventions.detection.rules import DetectionConfig, aligned_layers, sink_level
from interventions.observation import Observation
from interventions.spec.measures import MEASURES, TargetView


def per_layer(obs: Observation, config: DetectionConfig, *, primary_position: int = 0,
              measures=None) -> dict[str, np.ndarray]:
    """Every per-layer column of ``measures`` (default: all registered) as an [L, T] array, plus ``is_sink``
    (the membership a target's level is read from) whatever the measures."""
    out = {"is_sink": aligned_layers(obs, config)}
    for name in MEASURES if measures is None else measures:
        m = MEASURES[name]
        if m.layer_values is not None and not set(m.layer_columns) <= set(out):
            out.update(m.layer_values(obs, config, primary_position))
    return out


def per_position(clean: Observation, edited: Observation, measures) -> dict[str, np.ndarray]:
    """Every per-position column of ``measures`` for one condition ([T] arrays); a function that several
    measures share runs once."""
    out, done = {}, set()
    for name in measures:
        m = MEASURES[name]
        if m.position_values is not None and m.position_values not in done:
            done.add(m.position_values)
            out.update(m.position_values(clean, edited))
    wanted = {c for name in measures for c in MEASURES[name].position_columns}
    return {c: v for c, v in out.items() if c in wanted}


def target_rows(*, clean: dict[str, np.ndarray], edited: dict[str, np.ndarray], positions: dict[str, np.ndarray],
                position: int, ref_layer: int | None, base: dict, measures) -> list[dict]:
    """One row per layer for one target: every selected measure's intervened and ``clean_`` values side by side."""
    L = clean["is_sink"].shape[0]
    level, clean_level = sink_level(edited["is_sink"][:, position]), sink_level(clean["is_sink"][:, position])
    ref = ref_layer if ref_layer is not None and 0 <= ref_layer < L else (clean_level[0] if clean_level[0] >= 0
                                                                          else None)
    # Within a layer attention runs before the MLP, so an edit at layer l is first seen by the
    # attention of layer l + 1: that is where its effect on the sink score is read.
    view = TargetView(clean=clean, edited=edited, positions=positions, position=position, level=level,
                      clean_level=clean_level, ref_layer=ref, seen_layer=None if ref is None else min(ref + 1, L - 1))
    per_target, layer_cols = dict(base), []
    for name in measures:
        m = MEASURES[name]
        if m.target_values is not None:
            per_target.update(m.target_values(view))
        layer_cols += [c for c in m.layer_columns if c not in layer_cols]
    rows = []
    for layer in range(L):
        row = dict(per_target, layer=layer)
        for name in layer_cols:
            value, clean_value = edited[name][layer, position], clean[name][layer, position]
            row[name] = _scalar(value)
            row["clean_" + name] = _scalar(clean_value)
        rows.append(row)
    return rows


def _scalar(value):
    return bool(value) if isinstance(value, (bool, np.bool_)) else float(value)


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

