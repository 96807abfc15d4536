"""Measures: what changed between the clean and an intervened forward, per target and layer.

In: clean and edited observations of one trace. Out: effects rows and per-position rows
(:mod:`.compute`, the driver that reads the registry). Each measure a spec's ``measures:`` can
name is one file here that registers itself in :data:`interventions.spec.measures.MEASURES`
(the built-ins below, imported on first read of the registry): add a file, import it here.
"""

from . import sinks, sink_score, hidden, divergence, primary_sink_score, kv_norm  # noqa: F401  (registration order)
