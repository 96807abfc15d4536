"""``primary_sink_score``: the sink score of the trace's reference primary sink, beside every target row."""

from __future__ import annotations

import numpy as np

from interventions.spec.measures import Measure, register_measure


def _layers(obs, config, reference):
    scores = obs.mean_sink_scores()
    return {"primary_sink_score": np.repeat(scores[:, reference:reference + 1], scores.shape[1], axis=1)}


PRIMARY_SINK_SCORE = register_measure(Measure(
    name="primary_sink_score", meaning="sink score of the reference primary sink",
    layer_columns={"primary_sink_score": "sink score of the reference primary sink at this layer"},
    layer_values=_layers, statistics=True,
))
