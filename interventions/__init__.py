"""interventions: a causal intervention framework for attention sinks.

The pipeline, one subpackage per stage (see docs/architecture.md):
spec -> observation -> detection -> compile (+ kinds) -> run -> measures -> stats -> report.
The Python API mirrors the CLI::

    from interventions import load_model, detect, run_spec, load_spec, analyze_run

    model = load_model("testbed:planted")
    found = detect(model, "models/planted/traces.jsonl")          # in memory
    found.secondary()[["trace", "position", "token", "l_start", "lifetime"]]
    result = run_spec(load_spec("specs/norm_scale.yaml"))

Names are imported on first use (PEP 562), so ``import interventions`` and ``intervene --help``
load neither torch nor transformers; ``from interventions import load_model`` loads what
``load_model`` needs.
"""

from __future__ import annotations

from importlib import import_module
from importlib import metadata as _metadata
from typing import TYPE_CHECKING

# The public API: name -> module that defines it. Add a public name here (and nowhere else).
_EXPORTS: dict[str, str] = {
    # models and traces
    "load_model": ".models.load",
    "wrap_model": ".models.load",
    "LoadedModel": ".models.load",
    "load_traces": ".spec.traces",
    "Trace": ".spec.traces",
    # observation and detection
    "observe": ".api",
    "edit": ".api",
    "Activations": ".api",
    "observe_tokens": ".observation",
    "Observation": ".observation",
    "detect": ".detection.job",
    "DetectionResult": ".detection.job",
    "load_detection": ".detection.job",
    "load_sink_scores": ".detection.job",
    "detect_sinks": ".detection.rules",
    "DetectionConfig": ".detection.rules",
    "Sink": ".detection.rules",
    # specs, runs, statistics and reports
    "load_spec": ".spec",
    "Spec": ".spec",
    "run_spec": ".pipeline",
    "RunResult": ".run.job",
    "analyze_run": ".pipeline",
    # errors
    "UserError": ".errors",
    "SpecError": ".errors",
}

__all__ = sorted(_EXPORTS)

try:
    __version__ = _metadata.version("interventions")
except _metadata.PackageNotFoundError:  # running from a checkout without install
    __version__ = "0.0.0+checkout"


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'interventions' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .api import Activations, edit, observe
    from .detection.job import DetectionResult, detect, load_detection, load_sink_scores
    from .detection.rules import DetectionConfig, Sink, detect_sinks
    from .errors import SpecError, UserError
    from .models.load import LoadedModel, load_model, wrap_model
    from .observation import Observation, observe_tokens
    from .pipeline import analyze_run, run_spec
    from .run.job import RunResult
    from .spec import Spec, load_spec
    from .spec.traces import Trace, load_traces
