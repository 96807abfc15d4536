"""The declarative intervention spec: one YAML file per causal question.

>>> spec = load_spec("specs/norm_scale.yaml")        # raises SpecError listing every problem
>>> problems = check_against_model(spec, dims)        # once the model config is read
>>> conditions = expand_conditions(spec)              # one Condition per experimental setting

Modules by job: ``fields.py`` (base model, sites, layer specs), ``target_sets.py`` (selectors),
``conditions.py`` (the kind registry and condition expansion), ``measures.py`` (the measure registry),
``outcomes.py`` and ``hypotheses.py`` (what a hypothesis tests), ``schema.py`` (the top-level
:class:`Spec`), ``load.py`` (reading files, one-line error messages). The kinds themselves live
one per file in ``interventions/kinds/`` (``from interventions.kinds import Scale``); :data:`KINDS`
loads them on first use.
"""

from interventions.errors import SpecError

from .conditions import KINDS, Condition, EffectColumn, InterventionBase, expand_conditions, register_kind
from .fields import SITES, LayerRange, SweepRange, layer_label, resolve_layers
from .measures import MEASURES, Measure, register_measure
from .load import (
    SpecWarning,
    check_against_model,
    load_spec,
    load_spec_text,
    parse_yaml,
    translate_errors,
    validate_spec_data,
)
from .schema import Detection, Spec, spec_json_schema, spec_warnings
from .target_sets import (
    TARGETS,
    MatchedControls,
    Positions,
    PrimarySinks,
    SameTokenNonSinks,
    SecondarySinks,
    TargetBase,
    Tokens,
    register_target,
)

__all__ = [
    "KINDS", "MEASURES", "SITES", "TARGETS", "Condition", "Detection", "EffectColumn",
    "InterventionBase", "LayerRange", "MatchedControls", "Measure", "Positions", "PrimarySinks",
    "SameTokenNonSinks", "SecondarySinks", "Spec", "SpecError", "SpecWarning", "SweepRange", "TargetBase",
    "Tokens", "check_against_model", "expand_conditions", "layer_label", "load_spec", "load_spec_text",
    "parse_yaml", "register_kind", "register_measure", "register_target", "resolve_layers", "spec_json_schema", "spec_warnings",
    "translate_errors", "validate_spec_data",
]
