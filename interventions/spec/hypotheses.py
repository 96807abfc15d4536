"""Hypotheses a spec declares: which conditions a verdict rests on, what it compares them with.

A spec may list ``hypotheses:``; when it lists none, H1-H4 are generated from its
interventions (:func:`default_hypotheses`). Either way every verdict rests on one *condition
family* (one site and one layer rule; the factors of a scale dose-response, or the layers of a
mean-swap sweep before l_start, stay together) and names the conditions it used::

    hypotheses:
      - id: H1
        conditions: {kind: zero, site: mlp_output, layer: l_start}   # or a list of condition ids
        measure: sink_rate_change
        compare: placebo            # clean | placebo | controls | auto (placebo, else controls, else clean)
        placebo: {layers: [2]}      # generates zero.mlp_output.l_start.placebo-L2 on the same targets
        direction: decrease
        alpha: 0.05
        margin: 0.10

Placebo conditions are generated at condition expansion (:func:`placebo_conditions`): the
same kind, site and targets at another layer (or site), run without controls. For H1 they
are the "sink controls": real sinks given the placebo edit, so "lost" and "kept" are possible
in both arms.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MEASURES = {
    "sink_rate_change": ("zero", "decrease", 0.10,
                         "change in the share of clean-sink targets that are still sinks (edited - clean)"),
    "lifetime_slope": ("scale", "increase", 0.5,
                       "within-token slope of lifetime on log(factor), over the factors where the token is a sink"),
    "suppression_rate": ("mean_swap", "increase", 0.05,
                         "share of (future sink, swap layer < l_start) pairs that are no sink after the swap"),
    "suppression_trend": ("mean_swap", "increase", 0.01,
                          "within-trace slope of the suppression rate on the swap layer before l_start (per layer; "
                          "positive: swaps nearer l_start suppress more)"),
    "primary_beyond_renormalisation": (
        "attention_mask", "nonzero", 0.01,
        "change of the primary sink score beyond what the mask does by arithmetic alone, from the first masked "
        "layer on (edited minus the renormalisation prediction from the clean attention in masked layers, minus "
        "the clean score after them)"),
    "primary_score_after_mask": ("attention_mask", "nonzero", 0.01,
                                 "change of the primary sink score in the layers after the last masked layer"),
    "kl": ("attention_mask", "increase", 0.01, "mean KL(clean || edited) of next-token predictions"),
}
"""measure -> (intervention kind it reads, default direction, default equivalence margin, meaning)."""

CLAIMS = {
    "H1": ("zeroing the l_start MLP output prevents the secondary sink", ["sink_rate_change"]),
    "H2": ("scaling the MLP output norm makes sinks whose lifetime grows with the norm", ["lifetime_slope"]),
    "H3": ("mean-swapping a future sink's activation before l_start suppresses it", ["suppression_rate"]),
    "H4": ("masking attention to secondary sinks changes the primary sink beyond renormalisation and the "
           "predictions", ["primary_beyond_renormalisation", "kl"]),
}
"""The default hypotheses: claim and measures (every measure must hold: intersection-union)."""

DEFAULT_SELECTORS = {"H1": {"kind": "zero", "site": "mlp_output"}, "H2": {"kind": "scale", "site": "mlp_output"},
                     "H3": {"kind": "mean_swap"}, "H4": {"kind": "attention_mask"}}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConditionSelector(_Model):
    """Conditions picked by what they are rather than by id."""

    kind: str | None = Field(None, description="Intervention kind (zero, scale, mean_swap, attention_mask).")
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
    """Placebo conditions to generate: the hypothesis' conditions at other layers and/or sites."""

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
    measure: list[str] = Field(description="One measure or a list (all must hold): " + ", ".join(MEASURES))
    compare: Literal["auto", "clean", "placebo", "controls"] = Field(
        "auto", description="What the conditions are compared with (auto: placebo, else controls, else clean).")
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
            bad = [m for m in v if m not in MEASURES]
            if bad:
                raise ValueError(f"{bad[0]!r} is not a measure — use one of {', '.join(MEASURES)}")
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
    """H1-H4 as :class:`Hypothesis` records (used when a spec declares none)."""
    return [Hypothesis(id=h, claim=claim, conditions=ConditionSelector(**DEFAULT_SELECTORS[h]), measure=measures)
            for h, (claim, measures) in CLAIMS.items()]


def placebo_conditions(spec, conditions: list) -> list:
    """Placebo conditions the spec's hypotheses ask for (``placebo: layers/sites``), in order.

    Each copies a selected condition with another layer or site, keeps its targets, drops its
    controls, and gets the id ``<kind>.<site>.<layer label>.placebo`` (one placebo serves every
    condition of a mean-swap sweep).
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
            variants = [{"layer": layer, "params": {}} for layer in h.placebo.layers]
            variants += [{"site": site} for site in h.placebo.sites]
            for change in variants:
                site, layer = change.get("site", c.site), change.get("layer", c.layer)
                parts = [c.kind, site, layer_label(layer), f"x{c.factor:g}" if c.factor is not None else None,
                         f"redirect-{c.redirect}" if c.redirect else None, "placebo"]
                cid = ".".join(p for p in parts if p)
                if cid not in seen:
                    seen.add(cid)
                    out.append(replace(c, id=cid, controls=None, **change))
    return out
