"""The declarative intervention spec: one YAML file per causal question.

>>> spec = load_spec("specs/norm_scale.yaml")        # raises SpecError listing every problem
>>> problems = check_against_model(spec, dims)        # once the model config is read
>>> conditions = expand_conditions(spec)              # one Condition per experimental setting

See ``schema.py`` for the fields (and how to add an intervention kind), ``load.py`` for loading
and error messages.
"""

from ..errors import SpecError
from .load import (
    SpecWarning,
    check_against_model,
    load_spec,
    load_spec_text,
    parse_yaml,
    translate_errors,
    validate_spec_data,
)
from .schema import (
    KINDS,
    MEASURES,
    SITES,
    TARGETS,
    AttentionMask,
    Condition,
    Detection,
    InterventionBase,
    LayerRange,
    MatchedControls,
    MeanSwap,
    Positions,
    PrimarySinks,
    SameTokenNonSinks,
    Scale,
    SecondarySinks,
    Spec,
    SweepRange,
    TargetBase,
    Tokens,
    Zero,
    expand_conditions,
    layer_label,
    register_kind,
    register_target,
    resolve_layers,
    spec_json_schema,
    spec_warnings,
)

__all__ = [
    "KINDS", "MEASURES", "SITES", "TARGETS", "AttentionMask", "Condition", "Detection", "InterventionBase",
    "LayerRange", "MatchedControls", "MeanSwap", "Positions", "PrimarySinks", "SameTokenNonSinks", "Scale",
    "SecondarySinks", "Spec", "SpecError", "SpecWarning", "SweepRange", "TargetBase", "Tokens", "Zero",
    "check_against_model", "expand_conditions", "layer_label", "load_spec", "load_spec_text", "parse_yaml",
    "register_kind", "register_target", "resolve_layers", "spec_json_schema", "spec_warnings",
    "translate_errors", "validate_spec_data",
]
