"""Spec building blocks every part of the spec shares: the base model, message helpers, sites,
layer specs and their validators.

Layer specs
-----------
``layer`` (scale, zero, add, patch) names the layers one condition acts on *together*: an int,
a list of ints, an inclusive range ``{from: a, to: b}``, or ``l_start`` (each sink's first sink
layer, from detection). ``layers`` of ``mean_swap`` is a *sweep*: one condition per layer
(``{from: a, to: l_start}`` sweeps down from each sink's l_start). ``layers`` of
``attention_mask`` is again one condition over all the layers, or ``sink_lifetime`` (the attention
layers that read each target while it is a sink: ``l_start + 1 .. l_start + lifetime``).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from interventions.registry import closest

SITES: tuple[str, ...] = ("mlp_output", "attention_output", "block_output")
"""Canonical activation sites an intervention can edit (see ``interventions/models/adapters.py``)."""

Site = Literal["mlp_output", "attention_output", "block_output"]

RELATIVE_LAYER_RE = re.compile(r"^l_start(?:-(\d+))?$")

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


def did_you_mean(word: Any, options) -> str:
    """`` (did you mean 'x'?)`` when ``word`` is close to one of ``options``, else ``''``."""
    match = closest(word, options)
    return f" (did you mean {match!r}?)" if match else ""


def fail(message: str) -> PydanticCustomError:
    """A validation error whose text the loader prints verbatim after the field path."""
    return PydanticCustomError("spec", "{msg}", {"msg": message})


def is_int(v: Any) -> bool:
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
            raise fail(f"{show(v)} is not a layer spec — {hint}{did_you_mean(v, names)}")
        if isinstance(v, (list, tuple)):
            if not v:
                raise fail(f"[] is empty — give at least one layer ({hint})")
            for item in v:
                problem = _check_layer_value(item, hint)
                if problem:
                    raise fail(f"{show(v)}: {problem}")
            ints = [int(x) for x in v]
            dups = sorted({x for x in ints if ints.count(x) > 1})
            if dups:
                raise fail(f"{show(v)}: layer {dups[0]} is listed twice — list each layer once")
            return ints
        if isinstance(v, dict):
            unknown = [k for k in v if k not in ("from", "to")]
            if unknown:
                k = unknown[0]
                raise fail(f"unknown key {show(k)} in the range {show(v)} — a range is "
                            f"{{from: a, to: b}}{did_you_mean(k, ('from', 'to'))}")
            missing = [k for k in ("from", "to") if k not in v]
            if missing:
                raise fail(f"{show(v)} has no {missing[0]!r} — a range is {{from: a, to: b}} (both inclusive)")
            problem = _check_layer_value(v["from"], hint)
            if problem:
                raise fail(f"from: {problem}")
            to = v["to"]
            if not (relative_to and to == "l_start"):
                if isinstance(to, str):
                    allowed = "an int or l_start" if relative_to else "an int"
                    raise fail(f"to: {show(to)} is not allowed — use {allowed}"
                                f"{did_you_mean(to, ('l_start',)) if relative_to else ''}")
                problem = _check_layer_value(to, hint)
                if problem:
                    raise fail(f"to: {problem}")
                if int(v["from"]) > int(to):
                    raise fail(f"{show(v)}: from {int(v['from'])} is after to {int(to)} — "
                                "a range runs upward, both ends inclusive")
            return range_cls.model_validate({"from": int(v["from"]), "to": to if to == "l_start" else int(to)})
        problem = _check_layer_value(v, hint)
        if problem:
            raise fail(problem)
        return int(v)

    return validate


def site_validator(allow_list: bool):
    def validate(v: Any) -> Any:
        if isinstance(v, str):
            if v in SITES:
                return v
            raise fail(f"{show(v)} is not a known site — use one of {', '.join(SITES)}{did_you_mean(v, SITES)}")
        if allow_list and isinstance(v, (list, tuple)):
            if not v:
                raise fail(f"[] is empty — give a site or a list of sites from {', '.join(SITES)}")
            for s in v:
                if s not in SITES:
                    raise fail(f"{show(s)} is not a known site — use one of {', '.join(SITES)}"
                                f"{did_you_mean(s, SITES)}")
            if len(set(v)) != len(v):
                raise fail(f"{show(v)}: a site is listed twice — list each site once")
            return list(v)
        allowed = "one site or a list of sites" if allow_list else "one site"
        raise fail(f"{show(v)} is not a site — give {allowed} from {', '.join(SITES)}")

    return validate


def tokens_validator(v: Any) -> Any:
    if v is None:
        return v
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        raise fail(f"{show(v)} is not a list — write it as [{show(v)}] (token strings or ids)")
    if not isinstance(v, (list, tuple)):
        raise fail(f"{show(v)} is not a list — give a list of token strings or token ids")
    if not v:
        raise fail("[] is empty — give at least one token string or id")
    for t in v:
        if isinstance(t, bool) or not isinstance(t, (str, int)):
            raise fail(f"{show(t)} is not a token — give a token string (quoted, e.g. \" ~\") or a token id")
        if isinstance(t, int) and t < 0:
            raise fail(f"{t} is not a token id — token ids are >= 0")
        if isinstance(t, str) and not t:
            raise fail("'' is an empty token — give the token text, e.g. \" ~\" (quote leading spaces)")
    return list(v)


def each_once(noun: str):
    """A field validator: every value of a list field once, since each is its own condition."""
    def check(v: list[float]) -> list[float]:
        dups = sorted({x for x in v if v.count(x) > 1})
        if dups:
            raise fail(f"{show(dups[0])} is listed twice — each {noun} is one condition; list it once")
        return v
    return check


def check_factor(v: float) -> float:
    if not math.isfinite(v):
        raise fail(f"{show(v)} is not a finite number — factors are positive numbers such as 2, 5, 10")
    if v == 0:
        raise fail("0 is not allowed — a factor of 0 removes the output: use kind: zero")
    if v < 0:
        raise fail(f"{show(v)} is not allowed — factors must be > 0 (a negative factor flips the sign)")
    return v


def layer_label(layer: Any) -> str:
    """The readable id part for a layer spec: ``L5``, ``L5+6+7``, ``L0-11``, ``l_start``."""
    if isinstance(layer, (LayerRange, SweepRange)):
        return f"L{layer.from_}-{layer.to}"
    if isinstance(layer, dict):
        return f"L{layer['from']}-{layer['to']}"
    if isinstance(layer, (list, tuple)):
        return "L" + "+".join(str(x) for x in layer)
    if is_int(layer):
        return f"L{layer}"
    return str(layer)


def concrete(layer: Any) -> Any:
    """A layer spec as a :class:`Condition` carries it: ranges become lists of ints."""
    if isinstance(layer, LayerRange):
        return layer.layers()
    return list(layer) if isinstance(layer, (list, tuple)) else layer


def absolute_layers(layer: Any) -> list[int]:
    """Every absolute layer number written in a layer spec (for range checks against a model)."""
    if isinstance(layer, (LayerRange, SweepRange)):
        return [layer.from_] + ([layer.to] if is_int(layer.to) else [])
    if isinstance(layer, (list, tuple)):
        return [int(x) for x in layer]
    if is_int(layer):
        return [layer]
    return []


def resolve_layers(layer: Any, *, l_start: int | None = None, lifetime: int | None = None,
                   min_layer: int = 0) -> list[int]:
    """Concrete layers of a :class:`Condition` ``layer`` for one token.

    ``int`` and lists are absolute. ``l_start`` / ``l_start-N`` need the token's first sink
    layer (``[]`` when ``l_start - N < min_layer``); ``sink_lifetime`` needs ``l_start`` and
    ``lifetime`` and gives the *attention* layers that read the sink, ``l_start + 1 .. l_start +
    lifetime``: a state aligned at layer l (the output of layer l) is a key in the attention of
    layer l + 1, the convention of ``peak_sink_score`` and ``sink_layers.parquet`` (at layer
    l_start itself attention still reads the token before it became a sink). The default rule's
    run is contiguous; under ``rule: paper-code`` a runner that has the detected ``Sink`` should
    use its ``layers`` list instead.
    """
    if is_int(layer):
        return [layer]
    if isinstance(layer, (list, tuple)):
        return [int(x) for x in layer]
    if isinstance(layer, (LayerRange, SweepRange)):
        return resolve_layers(concrete(layer), l_start=l_start, lifetime=lifetime, min_layer=min_layer) \
            if isinstance(layer, LayerRange) else list(range(layer.from_, (l_start if layer.to == "l_start"
                                                                           else layer.to) + 1))
    if layer == "sink_lifetime":
        if l_start is None or lifetime is None:
            raise ValueError("layer 'sink_lifetime' needs the token's l_start and lifetime")
        return list(range(l_start + 1, l_start + lifetime + 1))
    m = RELATIVE_LAYER_RE.match(str(layer))
    if m:
        if l_start is None:
            raise ValueError(f"layer {layer!r} needs the token's l_start")
        at = l_start - int(m.group(1) or 0)
        return [at] if at >= max(min_layer, 0) else []
    raise ValueError(f"unknown layer spec {layer!r}")




def _known_measure(v: Any) -> str:
    from .measures import MEASURES

    if not isinstance(v, str) or v not in MEASURES:
        raise fail(f"{show(v)} is not a known measure — use one of {', '.join(MEASURES)}{did_you_mean(v, MEASURES)}")
    return v


MeasureName = Annotated[str, BeforeValidator(_known_measure)]
"""The name of a registered measure (:data:`interventions.spec.measures.MEASURES`), checked at validation."""
