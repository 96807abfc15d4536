"""``hidden``: norm and sink cosine of each target's hidden state, and the norm of its MLP output."""

from __future__ import annotations

import math

from interventions.spec.measures import Measure, register_measure


def _layers(obs, config, reference):
    return {name: obs.profiles[name] for name in ("hidden_norm", "hidden_cos", "mlp_out_norm")}


def _target(view):
    ref, p = view.ref_layer, view.position
    if ref is None:
        return {"ref_layer": -1, "ref_mlp_out_norm": math.nan, "clean_ref_mlp_out_norm": math.nan}
    return {"ref_layer": ref, "ref_mlp_out_norm": float(view.edited["mlp_out_norm"][ref, p]),
            "clean_ref_mlp_out_norm": float(view.clean["mlp_out_norm"][ref, p])}


HIDDEN = register_measure(Measure(
    name="hidden", meaning="hidden-state norm, cosine to the primary sink, MLP output norm",
    layer_columns={
        "hidden_norm": "||h|| of the target at this layer",
        "hidden_cos": "cosine of h to the primary sink's h at this layer",
        "mlp_out_norm": "||MLP output|| of the target at this layer",
    },
    target_columns={
        "ref_layer": "layer where ref_mlp_out_norm is read: the intervened layer, else the clean l_start",
        "ref_mlp_out_norm": "||MLP output|| at ref_layer after the intervention",
    },
    layer_values=_layers, target_values=_target, statistics=True,
))
