"""The declarative spec: one YAML file per causal question, validated by these pydantic models.

Every model forbids unknown keys and documents each field (``Field(description=...)``), so
``spec_json_schema()`` gives editors completion and hover text for free.

The spec is split by job: :mod:`.fields` (base model, message helpers, sites, layer specs),
:mod:`.target_sets` (``targets:`` selectors), :mod:`.conditions` (the kind registry and
condition expansion), and this module (the top-level :class:`Spec` and its cross-field checks).
Intervention kinds live one per file in ``interventions/kinds/``; ``interventions:`` accepts
any kind registered in :data:`KINDS` at validation time, ``targets:`` any selector in :data:`TARGETS`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from .conditions import (
    KINDS,
    Condition,
    EffectColumn,
    Intervention,
    InterventionBase,
    condition_problems,
    expand_conditions,
    register_kind,
)
from .fields import (
    SITES,
    LayerRange,
    MeasureName,
    Site,
    SpecModel,
    SweepRange,
    absolute_layers,
    did_you_mean,
    fail,
    layer_label,
    layer_spec_validator,
    resolve_layers,
    show,
)
from .hypotheses import Hypothesis
from .measures import MEASURES, default_measures
from .target_sets import (
    TARGETS,
    MatchedControls,
    Positions,
    PrimarySinks,
    SameTokenNonSinks,
    SecondarySinks,
    TargetBase,
    TargetSet,
    Tokens,
    register_target,
)

TESTBED_PREFIX = "testbed:"
"""Models named ``testbed:NAME`` are built locally (``interventions/testbed``)."""
TESTBED_TRACES = "testbed"
"""``traces: testbed`` uses the planted model's own traces (only with a testbed model)."""

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
SET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
DEVICE_RE = re.compile(r"^(cpu|cuda|auto|cuda:\d+)$")

_SKIP_CROSS = "interventions.spec.skip_cross_checks"
"""Validation-context flag: the loader runs the cross-field checks itself (to collect them all)."""

VALIDATOR: list = []
"""The loader's ``validate_spec_data``, installed by ``spec/load.py`` when it is imported (the
``interventions.spec`` package imports it first), so :meth:`Spec.from_dict` reports problems
exactly as a file would without this module importing the loader back."""


class GeneratedTraceSource(SpecModel):
    """``traces: {generate: random_tokens, length: 64, n: 100, seed: 0}``: Gu et al.'s input controls
    (see :mod:`interventions.spec.trace_sources`): the tokenizer's own special prefix, then ``length``
    random vocabulary tokens, or one random token repeated."""

    generate: Literal["random_tokens", "repeated_token"] = Field(
        description="random_tokens (independent draws) or repeated_token (one token per trace, repeated).")
    length: int = Field(64, ge=2, description="Generated tokens per trace, after the tokenizer's special prefix.")
    n: int = Field(100, ge=1, description="Number of traces (a spec's limit takes the first N).")
    seed: int = Field(0, description="Seed of the generator; trace i uses (seed, i).")


# --------------------------------------------------------------------------------------------
# the spec


class Detection(SpecModel):
    """How secondary sinks are detected in the clean run."""

    cos_threshold: float = Field(0.95, gt=0, le=1, description="Min cosine to the reference primary sink's state.")
    norm_ratio: float | None = Field(None, gt=1, description="Optional norm gate: min hidden-state norm over the "
                                     "layer's median norm (default: none; the ratio is reported).")
    min_lifetime: int = Field(1, ge=1, description="Min length of the longest aligned run of a secondary sink.")
    rule: Literal["default", "paper-code", "legacy"] = Field(
        "default", description="default (cos > cos_threshold, longest run), or paper-code (the paper's released "
                               "detector: |cos| > 0.9 in the BOS norm window, labels by L-15); legacy = paper-code.")
    massive_ratio: float = Field(5.0, gt=1, description="Primary sink: norm above this x the layer median from its "
                                 "onset through the end of the network.")
    reference: int | Literal["auto"] = Field("auto", description="Cosine reference: auto (the primary sink with the "
                                             "earliest onset, ties to the largest norm) or a position.")


class Spec(SpecModel):
    """One causal question: model, traces, target sets, interventions, measures."""

    name: str = Field(description="Safe folder name ([A-Za-z0-9_.-]); results go to results/<name>/<run id>/.")
    description: str = Field("", description="What this spec asks, in a sentence (goes into the report).")
    model: str = Field(description="Hub id, local folder, .gguf file, testbed:planted or testbed:planted-llama.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin; hub models only.")
    traces: str | GeneratedTraceSource = Field(
        description="A JSONL traces file (relative to the spec file), testbed (the planted model's), or "
                    "{generate: random_tokens | repeated_token, length, n, seed}.")
    limit: int | None = Field(None, ge=1, description="Use only the first N traces.")
    max_tokens: int | None = Field(None, ge=2,
                                   description="Truncate longer traces to this many tokens (with a warning).")
    chat_template: bool = Field(False, description="Wrap each trace in the tokenizer's chat template.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto (float32 on CPU, the checkpoint's on GPU), float32, bfloat16 or float16.")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto (layers spread over all GPUs).")
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa",
                                                          description="Attention implementation: sdpa or eager.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the checkpoint (off unless asked).")
    seed: int = Field(0, description="Global random seed of the run.")
    detection: Detection = Field(default_factory=Detection, description="Sink detection thresholds and rule.")
    targets: dict[str, TargetSet] = Field(min_length=1, description="Named target sets, resolved per trace.")
    interventions: list[Intervention] = Field(min_length=1,
                                              description="The interventions; each expands into conditions.")
    measures: list[MeasureName] = Field(
        default_factory=default_measures,
        description="What to compute and write: registered measures (spec/measures.py); default: every one "
                    "marked default. Statistics need the ones marked statistics (sinks, hidden, sink_score, "
                    "primary_sink_score).")
    report: bool = Field(True, description="Write the HTML/markdown report after the run.")
    hypotheses: list[Hypothesis] = Field(default_factory=list, description=(
        "Pre-declared hypotheses (spec/hypotheses.py); none: H1-H4 generated from the interventions."))

    _source_path: Path | None = PrivateAttr(None)
    _raw_text: str | None = PrivateAttr(None)
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v) or set(v) == {"."}:
            raise fail(f"{show(v)} is not a safe folder name — use only letters, digits, _ . and - "
                        "(results go to results/<name>/)")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise fail("'' is empty — give a hub id, a local folder, a .gguf file or testbed:planted")
        if v.startswith(TESTBED_PREFIX) and not v[len(TESTBED_PREFIX):]:
            raise fail(f"{show(v)} names no testbed model — use testbed:planted or testbed:planted-llama")
        return v

    @field_validator("traces")
    @classmethod
    def _traces(cls, v):
        if isinstance(v, str) and not v.strip():
            raise fail("'' is empty — give a JSONL traces file or testbed")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_RE.match(v):
            raise fail(f"{show(v)} is not a known device — use cpu, cuda, cuda:N or auto"
                        f"{did_you_mean(v, ('cpu', 'cuda', 'auto'))}")
        return v

    @field_validator("measures")
    @classmethod
    def _measures(cls, v: list[str]) -> list[str]:
        if not v:
            raise fail(f"[] is empty — give at least one of {', '.join(MEASURES)} (or leave measures out for the "
                       "defaults)")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Spec:
        if info.context and info.context.get(_SKIP_CROSS):
            return self
        problems = reference_problems(self.model_dump()) + condition_problems(self)
        if problems:
            raise fail("; ".join(problems))
        return self

    # -- provenance (not part of the spec's value: equality and the hash ignore it) --

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]

    @property
    def source_path(self) -> Path | None:
        """The spec file this spec was loaded from (None when built from text or a dict)."""
        return self._source_path

    @property
    def raw_text(self) -> str | None:
        """The YAML text exactly as written (None when built from a dict)."""
        return self._raw_text

    @property
    def warnings(self) -> list[str]:
        """One-line warnings found while loading (e.g. a scale factor of 1); not errors."""
        return list(self._warnings)

    def canonical_json(self) -> str:
        """The validated spec as canonical JSON (sorted keys, no whitespace)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def spec_hash(self) -> str:
        """sha256 of :meth:`canonical_json`, 16 hex chars. Paths are resolved, so it names the files used."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    @property
    def uses_testbed(self) -> bool:
        """Whether the model is a built-in testbed model."""
        return self.model.startswith(TESTBED_PREFIX)

    @classmethod
    def from_dict(cls, data: Any, *, base_dir: str | Path | None = None, check_files: bool = False,
                  source_name: str = "spec") -> Spec:
        """Validate a dict (e.g. parsed YAML); raise :class:`SpecError` listing every problem.

        With ``base_dir`` the model and traces paths resolve relative to it (and with
        ``check_files`` must exist); without it they are kept as given.
        """
        return VALIDATOR[0](data, base_dir=base_dir, check_files=check_files, source_name=source_name)

    def conditions(self) -> list[Condition]:
        """Shorthand for :func:`expand_conditions`."""
        return expand_conditions(self)

    def __repr__(self) -> str:
        conditions = self.conditions()
        lines = [f"Spec({self.name!r}: {self.model} on {self.traces}"
                 f"{f' (first {self.limit})' if self.limit else ''}, {self.dtype} on {self.device})"]
        lines.append("  targets: " + ", ".join(f"{k} ({getattr(v, 'select', '?')})" for k, v in self.targets.items()))
        shown = [c.id for c in conditions[:8]]
        more = f" ... +{len(conditions) - 8}" if len(conditions) > 8 else ""
        lines.append(f"  {len(self.interventions)} interventions -> {len(conditions)} conditions: "
                     + ", ".join(shown) + more)
        lines.append(f"  measures: {', '.join(self.measures)}; seed {self.seed}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# cross-field checks (work on raw, possibly invalid, dicts so every problem is reported)


def reference_problems(data: Any) -> list[str]:
    """Problems with names that refer to other parts of the spec: target sets, traces vs model."""
    if not isinstance(data, dict):
        return []
    problems: list[str] = []
    targets = data.get("targets")
    names = [k for k in targets if isinstance(k, str)] if isinstance(targets, dict) else None
    defined = ", ".join(names) if names else "(none)"

    def ref(path: str, value: Any, what: str) -> None:
        if isinstance(value, str) and names is not None and value not in names:
            problems.append(f"{path}: {show(value)} is not a defined target set — {what} names a key of "
                            f"targets: {defined}{did_you_mean(value, names)}")

    if isinstance(targets, dict):
        for name, t in targets.items():
            if isinstance(name, str) and not SET_NAME_RE.match(name):
                problems.append(f"targets.{name}: {show(name)} is not a usable set name — start with a letter "
                                "or _, then letters, digits, _ . -")
            if isinstance(t, dict) and t.get("select") == "matched_controls":
                match = t.get("match")
                if match == name:
                    problems.append(f"targets.{name}.match: {show(match)} is this set itself — match the "
                                    "target set the controls stand in for")
                elif isinstance(match, str) and match in targets:
                    other = targets[match]
                    if isinstance(other, dict) and other.get("select") == "matched_controls":
                        problems.append(f"targets.{name}.match: {show(match)} is itself matched_controls — "
                                        "match a set of real targets")
                else:
                    ref(f"targets.{name}.match", match, "match")
    interventions = data.get("interventions")
    if isinstance(interventions, list):
        for i, iv in enumerate(interventions):
            if not isinstance(iv, dict):
                continue
            tl = iv.get("targets")
            if isinstance(tl, list):
                for j, t in enumerate(tl):
                    ref(f"interventions[{i}].targets[{j}]", t, "each target")
                for t in sorted({t for t in tl if isinstance(t, str) and tl.count(t) > 1}):
                    problems.append(f"interventions[{i}].targets: {show(t)} is listed twice — list each set once")
            ref(f"interventions[{i}].controls", iv.get("controls"), "controls")
            kind = KINDS.get(iv.get("kind")) if isinstance(iv.get("kind"), str) else None
            for path, value in (kind.referenced_sets(iv) if kind is not None else []):
                ref(f"interventions[{i}].{path}", value, path)
    model, traces = data.get("model"), data.get("traces")
    if traces == TESTBED_TRACES and isinstance(model, str) and not model.startswith(TESTBED_PREFIX):
        problems.append(f"traces: 'testbed' needs a testbed model, but model is {show(model)} — give a JSONL "
                        "traces file, or use model: testbed:planted")
    return problems




def spec_warnings(spec: Spec) -> list[str]:
    """One-line warnings about a valid spec: settings that do nothing or probably were not meant."""
    out: list[str] = []
    for i, iv in enumerate(spec.interventions):
        out += iv.warnings(i)
    if spec.detection.rule == "legacy":
        out.append("detection.rule: legacy is deprecated — it now means paper-code; write rule: paper-code")
    if spec.detection.rule in ("legacy", "paper-code"):
        ignored = sorted(spec.detection.model_fields_set & {"cos_threshold", "norm_ratio", "min_lifetime", "reference"})
        for name in ignored:
            out.append(f"detection.{name}: ignored by rule: paper-code (|cos| > 0.9 in the BOS window, labels by "
                       "L-15) — remove it or use rule: default")
    if spec.revision and spec.model.startswith(TESTBED_PREFIX):
        out.append("revision: ignored for a testbed model")
    return out


def spec_json_schema() -> dict:
    """The JSON Schema of :class:`Spec` (for editors: completion, hover docs, validation)."""
    schema = Spec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("title", "Spec")
    return schema
