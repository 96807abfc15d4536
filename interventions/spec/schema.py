"""The declarative spec: one YAML file per causal question, validated by these pydantic models.

Every model forbids unknown keys and documents each field (``Field(description=...)``), so
``spec_json_schema()`` gives editors completion and hover text for free.

Intervention kinds are a discriminated union on ``kind`` built from :data:`KINDS`; target sets
are a discriminated union on ``select`` built from :data:`TARGETS`. To add a kind: write one
subclass of :class:`InterventionBase` with a ``kind: Literal["name"]`` field and a
``conditions()`` method, decorate it with :func:`register_kind` *above* the line that builds
``Intervention`` below, and the union, the JSON schema, the error messages ("use one of ...")
and :func:`expand_conditions` pick it up. Target selectors work the same way with
:func:`register_target`.

Layer specs
-----------
``layer`` (scale, zero) names the layers one condition acts on *together*: an int, a list of
ints, an inclusive range ``{from: a, to: b}``, or ``l_start`` (each sink's first sink layer,
from detection). ``layers`` of ``mean_swap`` is a *sweep*: one condition per layer (see
:class:`MeanSwap` for ``{from: a, to: l_start}``). ``layers`` of ``attention_mask`` is again
one condition over all the layers, or ``sink_lifetime`` (the layers where each target is a
sink: ``l_start .. l_start + lifetime - 1``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .hypotheses import Hypothesis, placebo_conditions

SITES: tuple[str, ...] = ("mlp_output", "attention_output", "block_output")
"""Canonical activation sites an intervention can edit (see ``interventions/adapters.py``)."""
MEASURES: tuple[str, ...] = ("sinks", "sink_score", "hidden", "kl", "delta_nll", "primary_sink_score")
"""Everything a run can measure; ``measures`` defaults to all of them."""
TESTBED_PREFIX = "testbed:"
"""Models named ``testbed:NAME`` are built locally (``interventions/testbed``)."""
TESTBED_TRACES = "testbed"
"""``traces: testbed`` uses the planted model's own traces (only with a testbed model)."""
DEFAULT_MAX_OFFSET = 8
"""How far below ``l_start`` a ``mean_swap`` sweep with ``to: l_start`` reaches by default."""

Site = Literal["mlp_output", "attention_output", "block_output"]
Measure = Literal["sinks", "sink_score", "hidden", "kl", "delta_nll", "primary_sink_score"]

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
SET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
DEVICE_RE = re.compile(r"^(cpu|cuda|auto|cuda:\d+)$")
RELATIVE_LAYER_RE = re.compile(r"^l_start(?:-(\d+))?$")

_SKIP_CROSS = "interventions.spec.skip_cross_checks"
"""Validation-context flag: the loader runs the cross-field checks itself (to collect them all)."""


# --------------------------------------------------------------------------------------------
# helpers shared with load.py


def show(value: Any, limit: int = 60) -> str:
    """A short one-line rendering of a YAML value for error messages (YAML-ish flow style)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (int, str)):
        text = repr(value)
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(show(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {show(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = repr(value)
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(word: Any, options: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` when ``word`` is close to one of ``options``, else ``''``."""
    if not isinstance(word, str) or not word:
        return ""
    match = get_close_matches(word, list(options), n=1, cutoff=0.6)
    if not match:
        low = word.lower()
        match = [o for o in options if o.lower().startswith(low) or (len(low) >= 3 and low in o.lower())][:1]
    return f" (did you mean {match[0]!r}?)" if match and match[0] != word else ""


def _fail(message: str) -> PydanticCustomError:
    """A validation error whose text the loader prints verbatim after the field path."""
    return PydanticCustomError("spec", "{msg}", {"msg": message})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------------
# base model


class SpecModel(BaseModel):
    """Base of every spec model: unknown keys are errors; dumps use YAML key names (``from``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def model_dump(self, **kwargs) -> dict[str, Any]:  # noqa: D102 - pydantic's, with by_alias on
        kwargs.setdefault("by_alias", True)
        return super().model_dump(**kwargs)

    def model_dump_json(self, **kwargs) -> str:  # noqa: D102
        kwargs.setdefault("by_alias", True)
        return super().model_dump_json(**kwargs)


# --------------------------------------------------------------------------------------------
# layer specs


class LayerRange(SpecModel):
    """An inclusive range of absolute layers, written ``{from: a, to: b}``."""

    from_: int = Field(alias="from", ge=0, description="First layer of the range (counting from 0).")
    to: int = Field(ge=0, description="Last layer of the range, inclusive.")

    def layers(self) -> list[int]:
        """The layers in the range, in order."""
        return list(range(self.from_, self.to + 1))


class SweepRange(SpecModel):
    """A ``mean_swap`` sweep range ``{from: a, to: b}``; ``to`` may be ``l_start`` (relative)."""

    from_: int = Field(alias="from", ge=0, description="First layer of the sweep (counting from 0).")
    to: int | Literal["l_start"] = Field(description="Last layer, inclusive: an int, or l_start (each sink's).")


def _layer_hint(names: tuple[str, ...], relative_to: bool) -> str:
    to = "b or l_start" if relative_to else "b"
    tail = " or ".join(names)
    return f"use an int, a list of ints, {{from: a, to: {to}}}" + (f" or {tail}" if tail else "")


def _check_layer_value(v: Any, hint: str) -> str | None:
    """Problem text for one absolute layer value, or None if it is a valid layer."""
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer() and v >= 0:
            return None
        return f"{show(v)} is not a layer — {hint}"
    if v < 0:
        return f"{v} is not a layer — layers count from 0 (0 is the first layer)"
    return None


def layer_spec_validator(names: tuple[str, ...] = (), *, relative_to: bool = False):
    """A before-validator for a layer-spec field; raises one clean error per bad field.

    ``names`` are the symbolic specs allowed (``l_start``, ``sink_lifetime``); ``relative_to``
    allows ``{from: a, to: l_start}`` (the ``mean_swap`` sweep).
    """
    hint = _layer_hint(names, relative_to)
    range_cls = SweepRange if relative_to else LayerRange

    def validate(v: Any) -> Any:
        if isinstance(v, (LayerRange, SweepRange)):
            return v
        if isinstance(v, str):
            if v in names:
                return v
            raise _fail(f"{show(v)} is not a layer spec — {hint}{did_you_mean(v, names)}")
        if isinstance(v, (list, tuple)):
            if not v:
                raise _fail(f"[] is empty — give at least one layer ({hint})")
            for item in v:
                problem = _check_layer_value(item, hint)
                if problem:
                    raise _fail(f"{show(v)}: {problem}")
            ints = [int(x) for x in v]
            dups = sorted({x for x in ints if ints.count(x) > 1})
            if dups:
                raise _fail(f"{show(v)}: layer {dups[0]} is listed twice — list each layer once")
            return ints
        if isinstance(v, dict):
            unknown = [k for k in v if k not in ("from", "to")]
            if unknown:
                k = unknown[0]
                raise _fail(f"unknown key {show(k)} in the range {show(v)} — a range is "
                            f"{{from: a, to: b}}{did_you_mean(k, ('from', 'to'))}")
            missing = [k for k in ("from", "to") if k not in v]
            if missing:
                raise _fail(f"{show(v)} has no {missing[0]!r} — a range is {{from: a, to: b}} (both inclusive)")
            problem = _check_layer_value(v["from"], hint)
            if problem:
                raise _fail(f"from: {problem}")
            to = v["to"]
            if not (relative_to and to == "l_start"):
                if isinstance(to, str):
                    allowed = "an int or l_start" if relative_to else "an int"
                    raise _fail(f"to: {show(to)} is not allowed — use {allowed}"
                                f"{did_you_mean(to, ('l_start',)) if relative_to else ''}")
                problem = _check_layer_value(to, hint)
                if problem:
                    raise _fail(f"to: {problem}")
                if int(v["from"]) > int(to):
                    raise _fail(f"{show(v)}: from {int(v['from'])} is after to {int(to)} — "
                                "a range runs upward, both ends inclusive")
            return range_cls.model_validate({"from": int(v["from"]), "to": to if to == "l_start" else int(to)})
        problem = _check_layer_value(v, hint)
        if problem:
            raise _fail(problem)
        return int(v)

    return validate


def _site_validator(allow_list: bool):
    def validate(v: Any) -> Any:
        if isinstance(v, str):
            if v in SITES:
                return v
            raise _fail(f"{show(v)} is not a known site — use one of {', '.join(SITES)}{did_you_mean(v, SITES)}")
        if allow_list and isinstance(v, (list, tuple)):
            if not v:
                raise _fail(f"[] is empty — give a site or a list of sites from {', '.join(SITES)}")
            for s in v:
                if s not in SITES:
                    raise _fail(f"{show(s)} is not a known site — use one of {', '.join(SITES)}"
                                f"{did_you_mean(s, SITES)}")
            if len(set(v)) != len(v):
                raise _fail(f"{show(v)}: a site is listed twice — list each site once")
            return list(v)
        allowed = "one site or a list of sites" if allow_list else "one site"
        raise _fail(f"{show(v)} is not a site — give {allowed} from {', '.join(SITES)}")

    return validate


def _tokens_validator(v: Any) -> Any:
    if v is None:
        return v
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        raise _fail(f"{show(v)} is not a list — write it as [{show(v)}] (token strings or ids)")
    if not isinstance(v, (list, tuple)):
        raise _fail(f"{show(v)} is not a list — give a list of token strings or token ids")
    if not v:
        raise _fail("[] is empty — give at least one token string or id")
    for t in v:
        if isinstance(t, bool) or not isinstance(t, (str, int)):
            raise _fail(f"{show(t)} is not a token — give a token string (quoted, e.g. \" ~\") or a token id")
        if isinstance(t, int) and t < 0:
            raise _fail(f"{t} is not a token id — token ids are >= 0")
        if isinstance(t, str) and not t:
            raise _fail("'' is an empty token — give the token text, e.g. \" ~\" (quote leading spaces)")
    return list(v)


def _check_factor(v: float) -> float:
    if not math.isfinite(v):
        raise _fail(f"{show(v)} is not a finite number — factors are positive numbers such as 2, 5, 10")
    if v == 0:
        raise _fail("0 is not allowed — a factor of 0 removes the output: use kind: zero")
    if v < 0:
        raise _fail(f"{show(v)} is not allowed — factors must be > 0 (a negative factor flips the sign)")
    return v


def layer_label(layer: Any) -> str:
    """The readable id part for a layer spec: ``L5``, ``L5+6+7``, ``L0-11``, ``l_start``."""
    if isinstance(layer, (LayerRange, SweepRange)):
        return f"L{layer.from_}-{layer.to}"
    if isinstance(layer, dict):
        return f"L{layer['from']}-{layer['to']}"
    if isinstance(layer, (list, tuple)):
        return "L" + "+".join(str(x) for x in layer)
    if _is_int(layer):
        return f"L{layer}"
    return str(layer)


def _concrete(layer: Any) -> Any:
    """A layer spec as a :class:`Condition` carries it: ranges become lists of ints."""
    if isinstance(layer, LayerRange):
        return layer.layers()
    return list(layer) if isinstance(layer, (list, tuple)) else layer


def absolute_layers(layer: Any) -> list[int]:
    """Every absolute layer number written in a layer spec (for range checks against a model)."""
    if isinstance(layer, (LayerRange, SweepRange)):
        return [layer.from_] + ([layer.to] if _is_int(layer.to) else [])
    if isinstance(layer, (list, tuple)):
        return [int(x) for x in layer]
    if _is_int(layer):
        return [layer]
    return []


def resolve_layers(layer: Any, *, l_start: int | None = None, lifetime: int | None = None,
                   min_layer: int = 0) -> list[int]:
    """Concrete layers of a :class:`Condition` ``layer`` for one token.

    ``int`` and lists are absolute. ``l_start`` / ``l_start-N`` need the token's first sink
    layer (``[]`` when ``l_start - N < min_layer``); ``sink_lifetime`` needs ``l_start`` and
    ``lifetime`` and gives ``l_start .. l_start + lifetime - 1`` (the default rule's contiguous
    run; under ``rule: legacy`` a sink's aligned layers need not be contiguous, so a runner
    that has the detected ``Sink`` should use its ``layers`` list instead).
    """
    if _is_int(layer):
        return [layer]
    if isinstance(layer, (list, tuple)):
        return [int(x) for x in layer]
    if isinstance(layer, (LayerRange, SweepRange)):
        return resolve_layers(_concrete(layer), l_start=l_start, lifetime=lifetime, min_layer=min_layer) \
            if isinstance(layer, LayerRange) else list(range(layer.from_, (l_start if layer.to == "l_start"
                                                                           else layer.to) + 1))
    if layer == "sink_lifetime":
        if l_start is None or lifetime is None:
            raise ValueError("layer 'sink_lifetime' needs the token's l_start and lifetime")
        return list(range(l_start, l_start + lifetime))
    m = RELATIVE_LAYER_RE.match(str(layer))
    if m:
        if l_start is None:
            raise ValueError(f"layer {layer!r} needs the token's l_start")
        at = l_start - int(m.group(1) or 0)
        return [at] if at >= max(min_layer, 0) else []
    raise ValueError(f"unknown layer spec {layer!r}")


# --------------------------------------------------------------------------------------------
# conditions


@dataclass(frozen=True)
class Condition:
    """One experimental condition: a single intervention setting run against the clean model."""

    id: str
    """Stable readable id, e.g. ``scale.mlp_output.l_start.x5`` or ``mean_swap.attention_output.L3``."""
    kind: str
    """The intervention kind (a key of :data:`KINDS`)."""
    site: str | None
    """Activation site edited (``mlp_output`` ...); None for ``attention_mask``."""
    layer: int | list[int] | str
    """Layers: an int, a list of ints (ranges are expanded), ``l_start``, ``l_start-N`` or ``sink_lifetime``."""
    factor: float | None
    """The scale factor (``scale`` only)."""
    targets: list[str]
    """Names of the target sets this condition acts on (keys of ``spec.targets``)."""
    controls: str | None
    """Name of the target set run as this condition's control, if any."""
    redirect: str | None
    """``none`` or ``bos`` (``attention_mask`` only)."""
    params: dict = field(default_factory=dict)
    """Kind-specific extras, e.g. ``{"offset": 2, "min_layer": 0}`` for a relative mean-swap layer."""
    intervention: int = 0
    """Index of the intervention in ``spec.interventions`` that produced this condition."""

    def to_dict(self) -> dict:
        """A JSON-ready dict (for manifests and result tables)."""
        return asdict(self)

    def layers_for(self, *, l_start: int | None = None, lifetime: int | None = None) -> list[int]:
        """Concrete layers for one token (see :func:`resolve_layers`)."""
        return resolve_layers(self.layer, l_start=l_start, lifetime=lifetime,
                              min_layer=int(self.params.get("min_layer", 0)))


# --------------------------------------------------------------------------------------------
# target sets


TARGETS: dict[str, type[TargetBase]] = {}
"""Target selectors by ``select`` name, in the order error messages list them."""


def register_target(cls: type[TargetBase]) -> type[TargetBase]:
    """Class decorator: add a target selector to :data:`TARGETS` under its ``select`` literal."""
    TARGETS[cls.model_fields["select"].default] = cls
    return cls


class TargetBase(SpecModel):
    """A named set of token positions, resolved per trace from the clean run's detection."""

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ()


@register_target
class SecondarySinks(TargetBase):
    """Every detected secondary sink (optionally filtered)."""

    select: Literal["secondary_sinks"] = Field("secondary_sinks", description="Detected secondary sinks.")
    level: list[int] | None = Field(None, min_length=2, max_length=2,
                                    description="Keep only sinks of this level, written [l_start, lifetime].")
    l_start: int | None = Field(None, ge=0, description="Keep only sinks whose first sink layer is this layer.")
    tokens: list[str | int] | None = Field(None, description="Keep only sinks on these tokens (strings or ids).")

    _tokens = field_validator("tokens", mode="before")(lambda v: _tokens_validator(v))

    @field_validator("level")
    @classmethod
    def _level(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (v[0] < 0 or v[1] < 1):
            raise _fail(f"{show(v)} is not a level — write [l_start, lifetime] with l_start >= 0 and lifetime >= 1")
        return v


@register_target
class Tokens(TargetBase):
    """Every position holding one of the given tokens (sinks or not)."""

    select: Literal["tokens"] = Field("tokens", description="Positions of the given tokens.")
    tokens: list[str | int] = Field(description="Token strings (quote leading spaces: \" ~\") or token ids.")

    _tokens = field_validator("tokens", mode="before")(lambda v: _tokens_validator(v))


@register_target
class SameTokenNonSinks(TargetBase):
    """Positions holding the same token as some secondary sink but not themselves sinks."""

    select: Literal["same_token_non_sinks"] = Field(
        "same_token_non_sinks", description="Non-sink occurrences of the tokens that become sinks elsewhere.")


@register_target
class PrimarySinks(TargetBase):
    """The primary sink(s): the first token / BOS that absorbs attention in every layer."""

    select: Literal["primary_sinks"] = Field("primary_sinks", description="The primary (BOS) sink positions.")


@register_target
class Positions(TargetBase):
    """Fixed positions in every trace (negative counts from the end: -1 is the last token)."""

    select: Literal["positions"] = Field("positions", description="Fixed token positions.")
    positions: list[int] = Field(min_length=1, description="Positions; negative ones count from the end (-1 = last).")


@register_target
class MatchedControls(TargetBase):
    """Random non-sink positions, as many per trace as the target set ``match`` holds."""

    select: Literal["matched_controls"] = Field(
        "matched_controls", description="Random non-sink positions matched in count to another set.")
    match: str = Field(description="Name of the target set whose per-trace count is matched.")
    seed: int = Field(0, description="Seed of the random draw (the same seed gives the same positions).")


TargetSet = Annotated[Union[tuple(TARGETS.values())], Field(discriminator="select")]  # noqa: UP007


# --------------------------------------------------------------------------------------------
# intervention kinds


KINDS: dict[str, type[InterventionBase]] = {}
"""Intervention kinds by ``kind`` name, in the order error messages list them."""


def register_kind(cls: type[InterventionBase]) -> type[InterventionBase]:
    """Class decorator: add an intervention kind to :data:`KINDS` under its ``kind`` literal."""
    KINDS[cls.model_fields["kind"].default] = cls
    return cls


class InterventionBase(SpecModel):
    """Fields every intervention kind has; subclasses add theirs and expand into conditions."""

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ()
    """Names of the fields holding layer specs (checked against the model's depth)."""

    kind: str = Field(description="Which intervention; each kind class narrows this to its own name.")
    targets: list[str] = Field(min_length=1, description="Names of target sets (keys of `targets`) to intervene on.")
    controls: str | None = Field(None, description="Name of a target set run as the control of this intervention.")

    def conditions(self, index: int) -> list[Condition]:
        """The conditions this intervention expands into (see :func:`expand_conditions`)."""
        raise NotImplementedError

    def _condition(self, index: int, cid: str, **kw) -> Condition:
        kw.setdefault("site", getattr(self, "site", None) if isinstance(getattr(self, "site", None), str) else None)
        kw.setdefault("factor", None)
        kw.setdefault("redirect", None)
        kw.setdefault("params", {})
        return Condition(id=cid, kind=self.kind, targets=list(self.targets), controls=self.controls,
                         intervention=index, **kw)


@register_kind
class Zero(InterventionBase):
    """Set a site's output to zero for the target tokens (one condition)."""

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("layer",)
    kind: Literal["zero"] = Field("zero", description="Zero the site output of the target tokens.")
    site: Site = Field(description="Site to edit: mlp_output, attention_output or block_output.")
    layer: int | list[int] | LayerRange | Literal["l_start"] = Field(
        description="Layers edited together: int, list of ints, {from: a, to: b} or l_start (per sink).")

    _site = field_validator("site", mode="before")(lambda v: _site_validator(False)(v))
    _layer = field_validator("layer", mode="before")(lambda v: layer_spec_validator(("l_start",))(v))

    def conditions(self, index: int) -> list[Condition]:
        return [self._condition(index, f"zero.{self.site}.{layer_label(self.layer)}", layer=_concrete(self.layer))]


@register_kind
class Scale(InterventionBase):
    """Multiply a site's output for the target tokens; each factor is its own condition."""

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("layer",)
    kind: Literal["scale"] = Field("scale", description="Scale the site output of the target tokens.")
    site: Site = Field(description="Site to edit: mlp_output, attention_output or block_output.")
    layer: int | list[int] | LayerRange | Literal["l_start"] = Field(
        description="Layers edited together: int, list of ints, {from: a, to: b} or l_start (per sink).")
    factors: list[Annotated[float, AfterValidator(_check_factor)]] = Field(
        min_length=1, description="Scale factors, each its own condition; > 0 (use kind: zero for 0).")

    _site = field_validator("site", mode="before")(lambda v: _site_validator(False)(v))
    _layer = field_validator("layer", mode="before")(lambda v: layer_spec_validator(("l_start",))(v))

    @field_validator("factors")
    @classmethod
    def _unique(cls, v: list[float]) -> list[float]:
        dups = sorted({f for f in v if v.count(f) > 1})
        if dups:
            raise _fail(f"{show(dups[0])} is listed twice — each factor is one condition; list it once")
        return v

    def conditions(self, index: int) -> list[Condition]:
        label = layer_label(self.layer)
        return [self._condition(index, f"scale.{self.site}.{label}.x{f:g}", layer=_concrete(self.layer), factor=f)
                for f in self.factors]


@register_kind
class MeanSwap(InterventionBase):
    """Replace a site's output for the target tokens by its mean over ordinary tokens, swept layer by layer.

    One condition per (site, layer). ``layers`` is an int, a list, ``{from: a, to: b}``, ``l_start``,
    or ``{from: a, to: l_start}``. The last one is relative to each sink, so it is swept by
    offset: conditions ``l_start``, ``l_start-1``, ..., ``l_start-max_offset`` (ids
    ``mean_swap.<site>.l_start-N``); a sink for which ``l_start - N < a`` is skipped in that
    condition (``params["min_layer"] = a``).
    """

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("layers",)
    kind: Literal["mean_swap"] = Field("mean_swap",
                                       description="Swap the site output for its mean, one layer at a time.")
    site: Site | list[Site] = Field(description="One site or a list of sites; each site is swept separately.")
    layers: int | list[int] | SweepRange | Literal["l_start"] = Field(
        description="Layers swept one per condition: int, list, {from: a, to: b or l_start} or l_start.")
    max_offset: int = Field(DEFAULT_MAX_OFFSET, ge=0,
                            description="With {from: a, to: l_start}: sweep l_start down to l_start - max_offset.")

    _site = field_validator("site", mode="before")(lambda v: _site_validator(True)(v))
    _layers = field_validator("layers", mode="before")(
        lambda v: layer_spec_validator(("l_start",), relative_to=True)(v))

    def sweep(self) -> list[tuple[int | str, dict]]:
        """The swept layer specs with their params, in order."""
        lay = self.layers
        if isinstance(lay, SweepRange):
            if lay.to == "l_start":
                return [("l_start" if k == 0 else f"l_start-{k}", {"offset": k, "min_layer": lay.from_})
                        for k in range(self.max_offset + 1)]
            return [(n, {}) for n in range(lay.from_, lay.to + 1)]
        if isinstance(lay, list):
            return [(n, {}) for n in lay]
        return [(lay, {})]

    def conditions(self, index: int) -> list[Condition]:
        sites = [self.site] if isinstance(self.site, str) else list(self.site)
        return [self._condition(index, f"mean_swap.{site}.{layer_label(layer)}", site=site, layer=layer,
                                params=dict(params))
                for site in sites for layer, params in self.sweep()]


@register_kind
class AttentionMask(InterventionBase):
    """Stop every query from attending to the target tokens (as keys) in the given layers (one condition)."""

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("layers",)
    kind: Literal["attention_mask"] = Field("attention_mask", description="Mask attention to the target tokens.")
    layers: int | list[int] | LayerRange | Literal["sink_lifetime"] = Field(
        description="Layers masked together: int, list, {from: a, to: b} or sink_lifetime "
                    "(where each target is a sink).")
    redirect: Literal["none", "bos"] = Field(
        "none", description="Where the removed attention goes: none (renormalise) or bos (to the primary sink).")

    _layers = field_validator("layers", mode="before")(lambda v: layer_spec_validator(("sink_lifetime",))(v))

    def conditions(self, index: int) -> list[Condition]:
        cid = f"attention_mask.{layer_label(self.layers)}.redirect-{self.redirect}"
        return [self._condition(index, cid, site=None, layer=_concrete(self.layers), redirect=self.redirect)]


Intervention = Annotated[Union[tuple(KINDS.values())], Field(discriminator="kind")]  # noqa: UP007


# --------------------------------------------------------------------------------------------
# the spec


class Detection(SpecModel):
    """How secondary sinks are detected in the clean run."""

    cos_threshold: float = Field(0.95, gt=0, le=1, description="Min cosine to the primary sink's hidden state.")
    norm_ratio: float = Field(5.0, gt=1, description="Min hidden-state norm over the trace's median norm.")
    min_lifetime: int = Field(1, ge=1, description="Min number of consecutive layers a token must stay a sink.")
    rule: Literal["default", "legacy"] = Field(
        "default", description="default, or legacy (the paper's |cos| > 0.9 and 4 < lifetime < L-15).")


class Spec(SpecModel):
    """One causal question: model, traces, target sets, interventions, measures."""

    name: str = Field(description="Safe folder name ([A-Za-z0-9_.-]); results go to results/<name>/<run id>/.")
    description: str = Field("", description="What this spec asks, in a sentence (goes into the report).")
    model: str = Field(description="Hub id, local folder, .gguf file, testbed:planted or testbed:planted-llama.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin; hub models only.")
    traces: str = Field(description="A JSONL traces file (relative to the spec file) or testbed (the planted model's).")
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
    measures: list[Measure] = Field(default_factory=lambda: list(MEASURES),
                                    description="What to measure; default all of " + ", ".join(MEASURES) + ".")
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
            raise _fail(f"{show(v)} is not a safe folder name — use only letters, digits, _ . and - "
                        "(results go to results/<name>/)")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise _fail("'' is empty — give a hub id, a local folder, a .gguf file or testbed:planted")
        if v.startswith(TESTBED_PREFIX) and not v[len(TESTBED_PREFIX):]:
            raise _fail(f"{show(v)} names no testbed model — use testbed:planted or testbed:planted-llama")
        return v

    @field_validator("traces")
    @classmethod
    def _traces(cls, v: str) -> str:
        if not v.strip():
            raise _fail("'' is empty — give a JSONL traces file or testbed")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_RE.match(v):
            raise _fail(f"{show(v)} is not a known device — use cpu, cuda, cuda:N or auto"
                        f"{did_you_mean(v, ('cpu', 'cuda', 'auto'))}")
        return v

    @field_validator("measures")
    @classmethod
    def _measures(cls, v: list[str]) -> list[str]:
        if not v:
            raise _fail(f"[] is empty — give at least one of {', '.join(MEASURES)} (or leave measures out for all)")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Spec:
        if info.context and info.context.get(_SKIP_CROSS):
            return self
        problems = reference_problems(self.model_dump()) + condition_problems(self)
        if problems:
            raise _fail("; ".join(problems))
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
        from .load import validate_spec_data

        return validate_spec_data(data, base_dir=base_dir, check_files=check_files, source_name=source_name)

    def conditions(self) -> list[Condition]:
        """Shorthand for :func:`expand_conditions`."""
        return expand_conditions(self)


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
    model, traces = data.get("model"), data.get("traces")
    if traces == TESTBED_TRACES and isinstance(model, str) and not model.startswith(TESTBED_PREFIX):
        problems.append(f"traces: 'testbed' needs a testbed model, but model is {show(model)} — give a JSONL "
                        "traces file, or use model: testbed:planted")
    return problems


def _expand(spec: Spec) -> tuple[list[Condition], list[str]]:
    per = [(i, iv.conditions(i)) for i, iv in enumerate(spec.interventions)]
    per.append((len(per), placebo_conditions(spec, [c for _, cs in per for c in cs])))
    counts: dict[str, int] = {}
    for _, conds in per:
        for c in conds:
            counts[c.id] = counts.get(c.id, 0) + 1
    out: list[Condition] = []
    first: dict[str, int] = {}
    problems: list[str] = []
    for i, conds in per:
        for c in conds:
            if counts[c.id] > 1:  # two interventions give the same id: tell them apart by their targets
                c = Condition(**{**c.__dict__, "id": f"{c.id}.{'+'.join(c.targets)}"})
            if c.id in first:
                if first[c.id] != i:
                    problems.append(f"interventions[{i}]: repeats condition {c.id!r} of interventions[{first[c.id]}]"
                                    " — remove one, or change its targets or controls")
                continue
            first[c.id] = i
            out.append(c)
    return out, list(dict.fromkeys(problems))


def condition_problems(spec: Spec) -> list[str]:
    """Problems only visible after expansion (two interventions giving the same condition)."""
    return _expand(spec)[1]


def expand_conditions(spec: Spec) -> list[Condition]:
    """Expand every intervention into its conditions, in spec order.

    * ``scale``: one condition per factor (``scale.<site>.<layer>.x<factor>``);
    * ``zero``: one condition (``zero.<site>.<layer>``);
    * ``mean_swap``: one per (site, swept layer) (``mean_swap.<site>.L3``; with
      ``{from: a, to: l_start}`` the layers are ``l_start``, ``l_start-1`` ... ``l_start-max_offset``);
    * ``attention_mask``: one condition (``attention_mask.<layers>.redirect-<redirect>``).

    Layer labels: ``L5`` (int), ``L5+6+7`` (list), ``L0-11`` (range), or the name itself.
    When two interventions would give the same id (same kind, site, layer, factor, different
    target sets), both get ``.<target+sets>`` appended; ids are unique and stable for a spec.
    """
    return _expand(spec)[0]


def spec_warnings(spec: Spec) -> list[str]:
    """One-line warnings about a valid spec: settings that do nothing or probably were not meant."""
    out: list[str] = []
    for i, iv in enumerate(spec.interventions):
        if isinstance(iv, Scale):
            for j, f in enumerate(iv.factors):
                if f == 1:
                    out.append(f"interventions[{i}].factors[{j}]: 1 leaves the output unchanged (identity) — "
                               "fine as a sanity check, otherwise remove it")
        if isinstance(iv, MeanSwap) and "max_offset" in iv.model_fields_set and not (
                isinstance(iv.layers, SweepRange) and iv.layers.to == "l_start"):
            out.append(f"interventions[{i}].max_offset: ignored — it only applies to "
                       "layers: {from: a, to: l_start}")
    if spec.detection.rule == "legacy":
        ignored = sorted(spec.detection.model_fields_set & {"cos_threshold", "norm_ratio", "min_lifetime"})
        for name in ignored:
            out.append(f"detection.{name}: ignored by rule: legacy (|cos| > 0.9, 4 < lifetime < L-15) — "
                       "remove it or use rule: default")
    if spec.revision and spec.model.startswith(TESTBED_PREFIX):
        out.append("revision: ignored for a testbed model")
    return out


def spec_json_schema() -> dict:
    """The JSON Schema of :class:`Spec` (for editors: completion, hover docs, validation)."""
    schema = Spec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("title", "Spec")
    return schema
