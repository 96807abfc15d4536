"""``kv_norm``: the key and value norms of each target, per layer.

Sinks draw attention while contributing little: their keys and values have small norms
(Sun et al. 2024; the paper's Sec. 2). This measure writes both, so an edit's effect on them is
tested like any other per-layer measure. Not in a spec's default measures (ask for it).
"""

from __future__ import annotations

from interventions.spec.measures import Measure, register_measure


def _layers(obs, config, reference):
    return {"key_norm": obs.profiles["key_norm"], "value_norm": obs.profiles["value_norm"]}


KV_NORM = register_measure(Measure(
    name="kv_norm", meaning="key and value norms of the target (mean over KV heads)",
    layer_columns={"key_norm": "mean over KV heads of ||k|| of the target at this layer (after rotary, as attended)",
                   "value_norm": "mean over KV heads of ||v|| of the target at this layer"},
    layer_values=_layers, default=False,
))
