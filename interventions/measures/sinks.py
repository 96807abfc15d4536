"""``sinks``: whether a target is sink-aligned at each layer, and its sink level in both forwards."""

from __future__ import annotations

from interventions.detection.rules import aligned_layers
from interventions.spec.measures import Measure, register_measure


def _layers(obs, config, reference):
    # membership uses the detection rule itself (cosine to the primary sink and norm vs the layer's median)
    return {"is_sink": aligned_layers(obs, config)}


def _target(view):
    (l_start, lifetime), (c_start, c_life) = view.level, view.clean_level
    return {"l_start": l_start, "lifetime": lifetime, "clean_l_start": c_start, "clean_lifetime": c_life,
            "suppressed": bool(c_life > 0 and lifetime == 0)}


SINKS = register_measure(Measure(
    name="sinks", meaning="sink membership per layer and the sink level (l_start, lifetime)",
    layer_columns={"is_sink": "target is sink-aligned at this layer (detection rule)"},
    target_columns={
        "l_start": "first sink layer of the target's longest aligned run after the intervention (-1: not a sink)",
        "lifetime": "length of that run (0: not a sink)",
        "suppressed": "target was a sink in the clean run and is none after the intervention",
    },
    layer_values=_layers, target_values=_target, statistics=True,
))
