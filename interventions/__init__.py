"""interventions: a causal intervention framework for attention sinks.

The pipeline, one module each: spec -> compile -> run -> measure -> statistics -> report.
The Python API mirrors the CLI::

    from interventions import load_model, detect, observe_tokens
    result = detect("testbed:planted", "traces.jsonl")        # in memory
    result.secondary()[["trace", "position", "token", "l_start", "lifetime"]]
"""

from importlib import metadata as _metadata

from .detect import DetectionResult, detect, load_detection, load_sink_scores
from .detection import DetectionConfig, Sink, detect_sinks
from .errors import SpecError, UserError
from .models import LoadedModel, load_model
from .observe import Observation, observe_tokens
from .traces import Trace, load_traces

try:
    __version__ = _metadata.version("interventions")
except _metadata.PackageNotFoundError:  # running from a checkout without install
    __version__ = "0.0.0+checkout"

__all__ = [
    "DetectionConfig", "DetectionResult", "LoadedModel", "Observation", "Sink", "SpecError", "Trace", "UserError",
    "detect", "detect_sinks", "load_detection", "load_model", "load_sink_scores", "load_traces", "observe_tokens",
]
