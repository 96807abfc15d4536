"""Intervention kinds and the conditions they expand into.

A kind is one file in ``interventions/kinds/``: a subclass of :class:`InterventionBase` with a
``kind: Literal["name"]`` field, decorated with :func:`register_kind`. The class is at once

* the **spec model** (its pydantic fields are what a spec may write under ``interventions:``),
* the **condition expander** (:meth:`InterventionBase.conditions`),
* the **run-time recipe** (:meth:`~InterventionBase.trace_state`, :meth:`~InterventionBase.edits_for`,
  :attr:`~InterventionBase.EFFECT_COLUMNS`, :meth:`~InterventionBase.effect_values`),
* the **compile step** (:meth:`~InterventionBase.pyvene_intervention` for a site edit, or
  :meth:`~InterventionBase.install` for an edit of the attention function), and
* the **torch oracle** (:meth:`~InterventionBase.reference_value`) the tests compare pyvene against,
  which also applies the kind's edits in :func:`interventions.edit`.

:data:`KINDS` is a :class:`~interventions.registry.Registry`; the spec reads it at validation
time (not at import), so a kind registered in a notebook is usable in the next spec.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field
from pydantic_core import PydanticCustomError, core_schema

from interventions.registry import Registry

from .fields import SITES, SpecModel, resolve_layers, show
from .hypotheses import placebo_conditions

if TYPE_CHECKING:
    import torch


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
    """Activation site edited (``mlp_output`` ...); None for kinds that edit attention (``attention_mask``)."""
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
    """Kind-specific settings, e.g. ``{"offset": 2, "min_layer": 0}`` for a relative mean-swap layer,
    ``{"coefficient": 4.0, ...}`` for ``add``."""
    intervention: int = 0
    """Index of the intervention in ``spec.interventions`` that produced this condition."""

    def to_dict(self) -> dict:
        """A JSON-ready dict (for manifests and result tables)."""
        return asdict(self)

    def layers_for(self, *, l_start: int | None = None, lifetime: int | None = None) -> list[int]:
        """Concrete layers for one token (see :func:`~interventions.spec.fields.resolve_layers`)."""
        return resolve_layers(self.layer, l_start=l_start, lifetime=lifetime,
                              min_layer=int(self.params.get("min_layer", 0)))

    @property
    def kind_class(self) -> type[InterventionBase]:
        """The registered kind that runs this condition."""
        return KINDS.get_or_raise(self.kind)


@dataclass(frozen=True)
class EffectColumn:
    """A column a kind adds to ``effects.parquet`` (rows of other kinds hold ``default``)."""

    description: str
    default: Any = float("nan")


# --------------------------------------------------------------------------------------------
# edits: what a kind makes of a condition for one trace (the compiler's input)


@dataclass
class Edit:
    """At ``layer``, change ``site`` at absolute ``positions`` (or, for an attention kind, the attention there).

    ``factor``, ``vector`` and ``redirect_to`` are the parameter slots the built-in kinds use;
    a new kind may use them or put anything in ``params``.
    """

    kind: str
    """A registered kind (:data:`interventions.spec.KINDS`)."""
    layer: int
    """The decoder layer (0-based)."""
    positions: list[int]
    """Absolute token positions, sorted, each once."""
    site: str | None = None
    """One of SITES; None for a kind that edits attention (``attention_mask``)."""
    factor: float | None = None
    """scale: the multiplier."""
    vector: torch.Tensor | None = field(default=None, repr=False)
    """mean_swap / add: a [D] vector for every position; patch: [len(positions), D], one row per position."""
    redirect_to: int | None = None
    """attention_mask: key that receives the removed probability mass (None: renormalise)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Kind-specific extras."""

    def __post_init__(self):
        kind = KINDS.get(self.kind)
        if kind is None:
            raise ValueError(f"unknown edit kind {self.kind!r} — use one of {', '.join(KINDS)}")
        if kind.COMPILES_TO == "site" and self.site not in SITES:
            raise ValueError(f"edit site {self.site!r} is not one of {SITES}")
        order = sorted(range(len(self.positions)), key=lambda i: int(self.positions[i]))
        positions = [int(self.positions[i]) for i in order]
        if len(set(positions)) != len(positions):
            if self.vector is not None and self.vector.dim() == 2:
                raise ValueError(f"{self.kind} edit lists a position twice with one value row each; list each once")
            positions = sorted(set(positions))
        elif self.vector is not None and self.vector.dim() == 2 and order != list(range(len(order))):
            self.vector = self.vector[order]  # per-position rows follow their positions
        self.positions = positions

    @property
    def kind_class(self):
        """The registered kind class that compiles and checks this edit."""
        return KINDS[self.kind]

    @property
    def first_position(self) -> int:
        return self.positions[0] if self.positions else 10**9


# --------------------------------------------------------------------------------------------
# the kind registry


def _load_builtin_kinds() -> None:
    importlib.import_module("interventions.kinds")


KINDS: Registry[type[InterventionBase]] = Registry("intervention kind", load=_load_builtin_kinds)
"""Intervention kinds by ``kind`` name, in the order error messages list them."""


def register_kind(cls: type[InterventionBase]) -> type[InterventionBase]:
    """Class decorator: register an intervention kind under its ``kind`` literal.

    Usable any time: a spec validated afterwards accepts the kind, the JSON schema lists it and
    the run executes it. Registering a second class under a taken name is an error.
    """
    name = cls.model_fields["kind"].default
    if not isinstance(name, str):
        raise TypeError(f"{cls.__name__} needs a default for its kind field: kind: Literal['name'] = 'name'")
    if cls.COMPILES_TO not in ("site", "attention"):
        raise TypeError(f"{cls.__name__}.COMPILES_TO is {cls.COMPILES_TO!r}; use 'site' or 'attention'")
    return KINDS.register(name, cls)


def kinds_with(fact: str) -> list[str]:
    """Names of the registered kinds whose class declares ``fact`` (a class attribute of
    :class:`InterventionBase` such as ``DOSE``, ``MASKS_TARGET_KEYS``, ``SWEEPS_LAYERS``) with a true value,
    in registry order.

    The statistics and the report select rows through this (``effects.kind.isin(kinds_with("DOSE"))``), never
    by a kind's name, so a new kind that declares the fact is analysed like the others. A name that is no fact
    of the base class is an error (a typo would otherwise select nothing).
    """
    if not hasattr(InterventionBase, fact) or not fact.isupper():
        facts = sorted(n for n in vars(InterventionBase) if n.isupper())
        raise AttributeError(f"kinds_with: {fact!r} is not a kind fact; use one of {', '.join(facts)}")
    return [name for name, cls in KINDS.items() if getattr(cls, fact)]


class InterventionBase(SpecModel):
    """Fields every intervention kind has; subclasses add theirs, expand into conditions and run them."""

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ()
    """Names of the fields holding layer specs (checked against the model's depth)."""
    COMPILES_TO: ClassVar[str] = "site"
    """``site``: rewrites a site's output at the targets (compiled to a pyvene intervention);
    ``attention``: edits attention probabilities (installed on the hookable attention function)."""
    EFFECT_COLUMNS: ClassVar[dict[str, EffectColumn]] = {}
    """Columns this kind adds to the effects table, with their meaning and the value other kinds' rows hold."""
    DOSE: ClassVar[str | None] = None
    """The effects column holding this kind's dose (``factor`` for ``scale``): its conditions get a dose-response
    (statistics and figure) per target set."""
    TAUTOLOGICAL_AT_L_START: ClassVar[bool] = False
    """Whether editing a target's whole hidden state (``block_output``) at its own clean l_start removes its sink
    status by construction; such rows are left out of every verdict (and listed as tautological)."""
    MASKS_TARGET_KEYS: ClassVar[bool] = False
    """Whether the kind sets every query's attention to the target tokens (as keys) to 0 in its layers. Then a
    target's own sink score there is 0 by construction (no verdict reads it; listed among the tautologies), only
    targets that were secondary sinks in the clean run enter its verdicts, and its rows are the ones the primary-sink
    compensation profile, the mask KL summary (``mask_kl``) and the mask figure read."""
    SWEEPS_LAYERS: ClassVar[bool] = False
    """Whether each of the kind's conditions edits one layer of a sweep, asking at which layer the edit stops a
    future sink: the statistics summarise the share of clean sinks suppressed per site and edited layer
    (``swap_rates``; in a verdict family also by offset before ``l_start``) and the report draws it as a timeline."""
    NOISE_MATCHABLE: ClassVar[bool] = False
    """Whether the ``noise`` kind can match the norm of the change this kind makes (``matched_to: {kind: <it>}``):
    a hypothesis with ``placebo: {edit: noise}`` then gets a magnitude-matched noise condition beside each of the
    kind's conditions it selects."""

    kind: str = Field(description="Which intervention; each kind class narrows this to its own name.")
    targets: list[str] = Field(min_length=1, description="Names of target sets (keys of `targets`) to intervene on.")
    controls: str | None = Field(None, description="Name of a target set run as the control of this intervention.")

    # -- spec side --------------------------------------------------------------------------

    def conditions(self, index: int) -> list[Condition]:
        """The conditions this intervention expands into (see :func:`expand_conditions`)."""
        raise NotImplementedError

    def warnings(self, index: int) -> list[str]:
        """One-line warnings about settings that are valid but probably not meant."""
        return []

    @classmethod
    def referenced_sets(cls, raw: dict) -> list[tuple[str, Any]]:
        """(field path, value) of every target-set name this kind's raw spec entry refers to besides
        ``targets``/``controls`` (checked against ``targets:`` with the other references)."""
        return []

    @classmethod
    def resolve_paths(cls, raw: dict, base_dir, check_files: bool) -> tuple[dict, list[str]]:
        """This kind's file fields resolved against the spec's folder: (new raw entry, problems as
        ``<field>: <text>``). The loader calls it before validation; most kinds have no file."""
        return raw, []

    def _condition(self, index: int, cid: str, **kw) -> Condition:
        kw.setdefault("site", getattr(self, "site", None) if isinstance(getattr(self, "site", None), str) else None)
        kw.setdefault("factor", None)
        kw.setdefault("redirect", None)
        kw.setdefault("params", {})
        return Condition(id=cid, kind=self.kind, targets=list(self.targets), controls=self.controls,
                         intervention=index, **kw)

    # -- analysis side (class methods: the statistics and the report ask the kind) ----------

    @classmethod
    def family_key(cls, condition: dict) -> tuple:
        """Conditions with the same key are judged as one verdict family (a ``Condition.to_dict()`` in).

        Default: kind, site, layer rule and target sets, so a dose-response's factors stay together and
        two interventions on different target sets (sinks of l_start 4 and of l_start 16) never pool.
        """
        return (condition["kind"], condition.get("site") or "", str(condition.get("layer")),
                "+".join(sorted(condition.get("targets") or [])))

    @classmethod
    def family_label(cls, key: tuple) -> str:
        """The family's part of a verdict key (``H1/<label>``): the key without the kind."""
        return "/".join(str(p) for p in key[1:] if p not in (None, "")).replace(".", "_")

    # -- run side (class methods: they see conditions, not the spec) ------------------------

    @classmethod
    def trace_state(cls, conditions: list[Condition], trace) -> Any:
        """What this kind's edits need from the clean model for one trace, computed once per trace.

        ``trace`` is a :class:`interventions.run.trace.TraceContext` (model, tokens, clean sinks,
        resolved target sets, the run's other traces, and :meth:`~TraceContext.site_values`).
        ``mean_swap`` computes its mean vectors here; most kinds need nothing.
        """
        return None

    @classmethod
    def edits_for(cls, condition: Condition, target, layers: list[int], state: Any) -> list[Edit]:
        """The edits of ``condition`` for one target (a :class:`~interventions.compile.targets.Target`) on ``layers``.

        An empty list skips the target in this condition (e.g. nothing to patch from).
        """
        return [Edit(condition.kind, layer, [target.position], site=condition.site) for layer in layers]

    @classmethod
    def effect_values(cls, condition: Condition, target, layer: int, edited_layers: list[int], state: Any = None
                      ) -> dict:
        """This kind's :attr:`EFFECT_COLUMNS` for one effects row (``layer`` is the row's measured layer;
        ``state`` is what :meth:`trace_state` returned for this trace)."""
        return {}

    @classmethod
    def api_edits(cls, loaded, *, layers: list[int], positions: list[int], site: str | None, **params) -> list[Edit]:
        """The edits of one :mod:`interventions.compile.kind_edits` object (``Scale(site=..., layer=..., positions=..., factor=5)``).

        Default: one :class:`Edit` per layer with ``params`` as its fields (``factor``, ``vector``,
        ``redirect_to`` or ``params``).
        """
        return [Edit(cls.model_fields["kind"].default, layer, list(positions), site=site, **params)
                for layer in layers]

    # -- compile side -----------------------------------------------------------------------

    @classmethod
    def pyvene_intervention(cls, edit: Edit, dims: dict):
        """``COMPILES_TO = "site"``: the pyvene intervention that performs ``edit`` (positions are set by the compiler)."""
        raise NotImplementedError(f"{cls.__name__} has no pyvene compile step")

    @classmethod
    def reference_value(cls, edit: Edit, original):
        """Torch oracle (``COMPILES_TO = "site"``): the edited positions' new values ([N, D] in, [N, D] out)."""
        raise NotImplementedError(f"{cls.__name__} has no torch oracle")

    @classmethod
    @contextmanager
    def install(cls, loaded, edits: list[Edit]):
        """``COMPILES_TO = "attention"``: install ``edits`` on the model for the duration of the block."""
        raise NotImplementedError(f"{cls.__name__} edits attention but has no install step")
        yield  # pragma: no cover

    @classmethod
    def merge_key(cls, edit: Edit) -> tuple | None:
        """Edits with the same key (same site, layer and parameters) run as one edit over all their positions;
        None: never merged. Kinds whose edit holds one value per position (``patch``) merge their values too."""
        vector = getattr(edit, "vector", None)
        return (edit.kind, edit.site, edit.layer, edit.factor, edit.redirect_to,
                None if vector is None else id(vector), repr(sorted(edit.params.items())))


# --------------------------------------------------------------------------------------------
# a spec field whose type is "any registered member", read at validation time


def registered_union(registry: Registry, discriminator: str, base: type[SpecModel]):
    """A pydantic type: a mapping validated by the ``registry`` member its ``discriminator`` names.

    Unlike a ``Union[...]`` built at import, the registry is read when a value is validated and
    when a JSON schema is made, so members registered later are accepted (and listed).
    Errors keep their field paths (``interventions[0].factors``); an unknown tag gives pydantic's
    ``union_tag_invalid`` error, which the loader turns into "use one of ... (did you mean ...)".
    """

    def validate(value: Any, info) -> Any:
        if isinstance(value, base):
            return value
        if not isinstance(value, dict):
            raise PydanticCustomError("model_type", "Input should be a valid mapping", {"input": value})
        tag = value.get(discriminator)
        if tag is None:
            raise PydanticCustomError("union_tag_not_found", "no {discriminator} given",
                                      {"discriminator": discriminator})
        member = registry.get(tag) if isinstance(tag, str) else None
        if member is None:
            raise PydanticCustomError("union_tag_invalid", "{tag} is not a known " + registry.what,
                                      {"tag": show(tag), "discriminator": discriminator})
        return member.model_validate(value, context=info.context)

    def serialize(value: Any, info) -> Any:
        return value.model_dump(mode=info.mode, by_alias=True)

    class Registered:
        @classmethod
        def __get_pydantic_core_schema__(cls, source, handler):
            return core_schema.with_info_plain_validator_function(
                validate, serialization=core_schema.plain_serializer_function_ser_schema(serialize, info_arg=True))

        @classmethod
        def __get_pydantic_json_schema__(cls, schema, handler):
            members = []
            for member in registry.values():
                members.append(handler(member.__pydantic_core_schema__))
            return {"oneOf": members, "discriminator": {"propertyName": discriminator}}

    Registered.__name__ = f"Registered{base.__name__}"
    return Registered


Intervention = registered_union(KINDS, "kind", InterventionBase)
"""The spec type of one ``interventions:`` entry: any registered kind, chosen by ``kind``."""


# --------------------------------------------------------------------------------------------
# expansion


def _expand(spec) -> tuple[list[Condition], list[str]]:
    per = [(i, iv.conditions(i)) for i, iv in enumerate(spec.interventions)]
    counts: dict[str, int] = {}
    for _, conds in per:
        for c in conds:
            counts[c.id] = counts.get(c.id, 0) + 1
    # Two interventions giving the same id are told apart by their targets, and then every condition
    # of those interventions names its targets (not only the colliding factor: x2.weak+others next to
    # a bare x5 would hide which targets x5 edits).
    named = {i for i, conds in per if any(counts[c.id] > 1 for c in conds)}
    out: list[Condition] = []
    first: dict[str, int] = {}
    problems: list[str] = []
    for i, conds in per:
        for c in conds:
            if i in named:
                c = Condition(**{**c.__dict__, "id": f"{c.id}.{'+'.join(c.targets)}"})
            if c.id in first:
                if first[c.id] != i:
                    problems.append(f"interventions[{i}]: repeats condition {c.id!r} of interventions[{first[c.id]}]"
                                    " — remove one, or change its targets or controls")
                continue
            first[c.id] = i
            out.append(c)
    # placebos stand beside the conditions as finally named (their ids and placebo_of follow them)
    for c in placebo_conditions(spec, out):
        if c.id in first:
            problems.append(f"hypotheses: the placebo {c.id!r} repeats a condition of interventions[{first[c.id]}] "
                            "— remove that intervention or the placebo")
            continue
        first[c.id] = len(per)
        out.append(c)
    return out, list(dict.fromkeys(problems))


def condition_problems(spec) -> list[str]:
    """Problems only visible after expansion (two interventions giving the same condition)."""
    return _expand(spec)[1]


def expand_conditions(spec) -> list[Condition]:
    """Expand every intervention into its conditions, in spec order.

    Each kind names its conditions (see its ``conditions()``), e.g. ``scale.<site>.<layer>.x<factor>``,
    ``zero.<site>.<layer>``, ``mean_swap.<site>.L3``, ``attention_mask.<layers>.redirect-<redirect>``.
    Layer labels: ``L5`` (int), ``L5+6+7`` (list), ``L0-11`` (range), or the name itself.
    When two interventions would give the same id (same kind, site, layer, factor, different
    target sets), both get ``.<target+sets>`` appended; ids are unique and stable for a spec.
    """
    return _expand(spec)[0]
