"""``sink_score``: the Eq. 1 sink score of each target (mean over heads), per layer and where an edit is first seen."""

from __future__ import annotations

import math

from interventions.spec.measures import Measure, register_measure


def _layers(obs, config, reference):
    return {"sink_score": obs.mean_sink_scores()}


def _target(view):
    p, seen = view.position, view.seen_layer
    if seen is None:
        return {"ref_sink_score": math.nan, "clean_ref_sink_score": math.nan}
    return {"ref_sink_score": float(view.edited["sink_score"][seen, p]),
            "clean_ref_sink_score": float(view.clean["sink_score"][seen, p])}


SINK_SCORE = register_measure(Measure(
    name="sink_score", meaning="sink score of the target (Eq. 1, mean over heads)",
    layer_columns={"sink_score": "Eq. 1 sink score of the target (mean over heads) at this layer"},
    target_columns={"ref_sink_score": "sink score at ref_layer + 1, the first attention that sees an edit at "
                                      "ref_layer"},
    layer_values=_layers, target_values=_target, statistics=True,
))
