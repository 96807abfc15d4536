"""Measures: what changed between the clean and an intervened forward, per target and layer.

In: clean and edited observations of one trace. Out: effects rows and per-position rows
(:mod:`.compute`, the driver that reads the registry). Each measure a spec's ``measures:`` can
name is one file here that registers itself in :data:`interventions.spec.measures.MEASURES`,
imported on first read of the registry: a new measure is a new file here, nothing else to edit.
"""

import importlib
import pkgutil

# Import order is registration order (a spec's default measures, the effects columns): the paper's
# measures first, then every other module of this package.
from . import sinks, sink_score, hidden, divergence, primary_sink_score  # noqa: I001,F401 - registers them

_NOT_MEASURES = {"compute"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _NOT_MEASURES and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
