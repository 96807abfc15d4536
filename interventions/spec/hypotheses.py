"""Hypotheses a spec declares: which conditions a verdict rests on, what it compares them with.

A spec may list ``hypotheses:``; when it lists none, the registered defaults H1-H4
(:data:`HYPOTHESES`) are generated from its interventions. Either way every verdict rests on one
*condition family* (the kind says what groups into one: site, layer rule and target sets; the
factors of a scale dose-response, or the layers of a mean-swap sweep, stay together) and names
the conditions it used and the arm it was compared with::

    hypotheses:
      - id: H1
        conditions: {kind: zero, site: mlp_output, layer: l_start}   # or a list of condition ids
        measure: sink_rate_change
        compare: placebo            # auto | placebo | controls | clean
        placebo: {edit: noise}      # generates zero.mlp_output.l_start.noise.placebo on the same targets
        direction: decrease
        alpha: 0.05
        margin: 0.10

Every outcome measure (:mod:`interventions.spec.outcomes`) names the arms that can decide it: arms
whose units can move both ways under the null. ``compare: auto`` takes the first of those the
run has; a hypothesis whose arm is missing, or that asks for an arm that cannot decide its
measure, gets the verdict "not testable" with the reason, never a silent fall-back.

Placebo conditions are generated at condition expansion (:func:`placebo_conditions`):
``edit: noise`` adds a random direction of the norm the real edit changes, at the same site,
layer and targets (the magnitude-matched placebo); ``layers``/``sites`` repeat the same edit at
other layers or sites. Placebos keep the targets and drop the controls: for H1 and H3 their units
are clean sinks, which can be lost or kept in both arms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from interventions.registry import Registry

from .outcomes import OUTCOMES


@dataclass(frozen=True)
class DefaultHypothesis:
    """A hypothesis generated when a spec declares none: the claim, its measures and the conditions it selects."""

    id: str
    claim: str
    measures: tuple[str, ...]
    selector: dict


HYPOTHESES: Registry[DefaultHypothesis] = Registry("hypothesis")
"""The paper's claims as default hypotheses, by id (H1-H4); register more with :func:`register_hypothesis`."""


def register_hypothesis(h: DefaultHypothesis) -> DefaultHypothesis:
    """Add a default hypothesis (generated for every spec that declares none)."""
    return HYPOTHESES.register(h.id, h)


register_hypothesis(DefaultHypothesis(
    "H1", "zeroing the l_start MLP output prevents the secondary sink", ("sink_rate_change",),
    {"kind": "zero", "site": "mlp_output"}))
register_hypothesis(DefaultHypothesis(
    "H2", "the lifetime of a token rises with the norm of its l_start MLP output (log-linear), non-sinks included",
    ("lifetime_slope",), {"kind": "scale", "site": "mlp_output"}))
register_hypothesis(DefaultHypothesis(
    "H3", "mean-swapping a future sink's activation before l_start suppresses it", ("suppression_rate",),
    {"kind": "mean_swap"}))
register_hypothesis(DefaultHypothesis(
    "H4", "masking attention to secondary sinks raises the primary sink's score beyond renormalisation and changes "
          "the predictions", ("primary_beyond_renormalisation", "kl"), {"kind": "attention_mask"}))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConditionSelector(_Model):
    """Conditions picked by what they are rather than by id."""

    kind: str | None = Field(None, description="Intervention kind: any registered kind (interventions/kinds/).")
    site: str | None = Field(None, description="Site (mlp_output, attention_output, block_output).")
    layer: int | str | None = Field(None, description="Layer spec as written (l_start, l_start-2, 5).")
    redirect: str | None = Field(None, description="attention_mask redirect (none, bos).")

    def matches(self, c: dict) -> bool:
        for key in ("kind", "site", "redirect"):
            want = getattr(self, key)
            if want is not None and c.get(key) != want:
                return False
        return self.layer is None or str(c.get("layer")) == str(self.layer)


class Placebo(_Model):
    """Placebo conditions to generate: magnitude-matched noise, or the same edit at other layers and/or sites."""

    edit: Literal["noise"] | None = Field(
        None, description="noise: add a random direction of the norm the real edit changes (same site, layer, "
                          "targets).")
    layers: list[int | str] = Field(default_factory=list,
                                    description="Layers (absolute, or l_start-N) to repeat the edit at.")
    sites: list[str] = Field(default_factory=list, description="Other sites to repeat the edit at (same layer).")
    conditions: list[str] = Field(default_factory=list, description="Existing condition ids to use as placebos.")


class Hypothesis(_Model):
    """One pre-declared test (see the module docstring)."""

    id: str = Field(description="Short name, e.g. H1; verdicts are keyed by it (id/family with several families).")
    claim: str = Field("", description="The claim in words (goes into the report).")
    conditions: list[str] | ConditionSelector = Field(
        description="Condition ids, or a selector {kind, site, layer, redirect}.")
    measure: list[str] = Field(description="One measure or a list (all must hold), e.g. sink_rate_change, "
                                           "lifetime_slope, suppression_rate, primary_beyond_renormalisation, kl.")
    compare: Literal["auto", "clean", "placebo", "controls"] = Field(
        "auto", description="The arm the conditions are compared with; auto: the first arm the measure can be "
                            "decided by that the run has.")
    placebo: Placebo | None = Field(None, description="Placebo conditions to generate or use.")
    direction: Literal["increase", "decrease", "nonzero"] | None = Field(
        None, description="Predicted direction (default: the measure's).")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level.")
    margin: float | None = Field(None, ge=0, description="Equivalence margin (default: the measure's).")

    @field_validator("measure", mode="before")
    @classmethod
    def _measure(cls, v: Any) -> Any:
        v = [v] if isinstance(v, str) else v
        if isinstance(v, list):
            bad = [m for m in v if m not in OUTCOMES]
            if bad:
                raise ValueError(f"{bad[0]!r} is not an outcome measure — use one of {', '.join(OUTCOMES)}")
            if not v:
                raise ValueError("[] names no outcome measure — give at least one of " + ", ".join(OUTCOMES))
        return v

    def selects(self, c: dict) -> bool:
        """Whether condition ``c`` (a ``Condition.to_dict()``) is one this hypothesis is about."""
        if is_placebo(c["id"]):
            return False
        if isinstance(self.conditions, list):
            return c["id"] in self.conditions
        return self.conditions.matches(c)


def is_placebo(condition_id: str) -> bool:
    """Whether a condition id is a generated placebo (never the subject of a default hypothesis)."""
    return condition_id.endswith(".placebo")


def default_hypotheses() -> list[Hypothesis]:
    """The registered default hypotheses (:data:`HYPOTHESES`) as :class:`Hypothesis` records."""
    return [Hypothesis(id=h.id, claim=h.claim, conditions=ConditionSelector(**h.selector), measure=list(h.measures))
            for h in HYPOTHESES.values()]


def placebo_conditions(spec, conditions: list) -> list:
    """Placebo conditions the spec's hypotheses ask for (``placebo: edit/layers/sites``), in order.

    ``edit: noise`` gives, for every selected condition of a kind whose change the noise kind can
    match (``NOISE_MATCHABLE``), the condition ``<id>.noise.placebo``: kind ``noise`` at the same
    site, layer and targets, with the norm the real edit changes there. ``layers``/``sites`` copy
    a selected condition to another layer or site (id ``<kind>.<site>.<layer label>.placebo``;
    one serves every condition of a mean-swap sweep). Every placebo keeps its targets, drops its
    controls and records the condition it stands beside in ``params["placebo_of"]``.
    """
    from dataclasses import replace

    from .fields import layer_label

    out, seen = [], {c.id for c in conditions}
    for h in getattr(spec, "hypotheses", None) or []:
        if h.placebo is None:
            continue
        for c in conditions:
            if not h.selects(c.to_dict()):
                continue
            if h.placebo.edit == "noise" and c.kind_class.NOISE_MATCHABLE:
                cid = f"{c.id}.noise.placebo"
                if cid not in seen:
                    seen.add(cid)
                    matched = {"kind": c.kind, "factor": c.factor}  # only a dosed kind's conditions carry a factor
                    params = {**c.params, "norm": "matched", "matched_to": matched, "match": "orthogonal",
                              "orthogonal_to_sink": True, "seed": 0, "placebo_of": c.id}
                    out.append(replace(c, id=cid, kind="noise", controls=None, factor=None, redirect=None,
                                       params=params))
            variants = [{"layer": layer, "params": {"placebo_of": c.id}} for layer in h.placebo.layers]
            variants += [{"site": site, "params": {**c.params, "placebo_of": c.id}} for site in h.placebo.sites]
            for change in variants:
                site, layer = change.get("site", c.site), change.get("layer", c.layer)
                parts = [c.kind, site, layer_label(layer), f"x{c.factor:g}" if c.factor is not None else None,
                         f"redirect-{c.redirect}" if c.redirect else None, "placebo"]
                cid = ".".join(p for p in parts if p)
                if cid not in seen:
                    seen.add(cid)
                    out.append(replace(c, id=cid, controls=None, **change))
    return out
