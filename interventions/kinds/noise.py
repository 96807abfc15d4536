"""``noise``: add a random direction at a site for the target tokens, with a given norm or the norm
another edit would change there (the magnitude-matched placebo of the verdicts).

A placebo for "the l_start MLP output makes the sink" has to perturb as much as the real edit
does, at the same site and layer, without being that output (``../shared/notes/verdict-design.md``,
point 2). With ``norm: matched`` the added vector's norm, per target and layer, is the size of the
change ``c`` the matched edit makes there in the clean run:

* ``matched_to: {kind: zero}``: ``c = -v`` (zeroing removes the whole output ``v``);
* ``matched_to: {kind: scale, factor: f}``: ``c = (f - 1) v``;
* ``matched_to: {kind: mean_swap}``: ``c = mean - v`` (the mean over the trace's non-sink tokens).

``match: orthogonal`` (the default) takes the norm of ``c``'s component orthogonal to the reference
primary sink's hidden state (``block_output``) at the same layer (the direction its sink cosines are read against); ``match: full`` the norm of ``c``. Why orthogonal:
the outcome is the cosine to the sink, and an orthogonal push as large as a state's whole sink
component rotates any state off the threshold, so a full-norm placebo "prevents" every sink that
the mechanism made, true or not, and no claim about the sink direction could ever be supported.
Matching the part of the change that is *not* along the sink direction gives the placebo what a
non-specific edit would do: where the edit removes content that has no sink role (the claim false),
that content is off the sink direction, the placebo is as large as the edit and loses as many sinks;
where the edit removes the sink direction itself (the claim true), the placebo is small.

The direction is a standard normal draw, seeded by ``(seed, trace, position, layer)`` so reruns and
resumed runs add the same vectors; with ``orthogonal_to_sink`` (the default) its component along
the reference primary sink's hidden state (``block_output``) at the same layer (the direction its sink cosines are read against) is removed first, so the noise
cannot write the sink direction itself. A spec rarely writes this kind by hand:
``hypotheses: [{..., placebo: {edit: noise}}]`` generates one matched noise condition for every
condition the hypothesis selects (:func:`interventions.spec.hypotheses.placebo_conditions`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from interventions.spec.conditions import Condition, Edit, EffectColumn, register_kind
from interventions.spec.fields import SpecModel, fail, show

from .base import SiteIntervention

MATCHABLE = ("zero", "scale", "mean_swap")
"""Kinds whose change of a site's output the noise can match in norm."""


class MatchedTo(SpecModel):
    """The edit whose change in norm the noise matches."""

    kind: Literal["zero", "scale", "mean_swap"] = Field(description="zero, scale or mean_swap.")
    factor: float | None = Field(None, description="The scale factor (kind scale only).")


@register_kind
class Noise(SiteIntervention):
    """Add a seeded random direction of a given (or matched) norm to a site's output for the target tokens."""

    # as a placebo it stands beside the edit it matches: a tautological unit (block_output at the target's own
    # l_start) is left out of both arms, not of the edit's alone (which would leave the arms unlike)
    TAUTOLOGICAL_AT_L_START: ClassVar[bool] = True
    EFFECT_COLUMNS: ClassVar[dict[str, EffectColumn]] = {
        "noise_norm": EffectColumn("noise: mean norm of the added random vectors at this target (NaN for other kinds)"),
        "matched_factor": EffectColumn("noise matched to a scale: that scale's factor (NaN otherwise); the dose of a "
                                       "scale placebo"),
    }

    kind: Literal["noise"] = Field("noise", description="Add a random direction to the site output of the targets.")
    norm: float | Literal["matched"] = Field(
        "matched", description="Norm of the added vector, or matched: the norm of the change matched_to makes.")
    matched_to: MatchedTo | None = Field(None, description="With norm: matched, the edit whose change is matched.")
    match: Literal["orthogonal", "full"] = Field(
        "orthogonal", description="Match the norm of the change's part orthogonal to the sink direction, or all of it.")
    orthogonal_to_sink: bool = Field(True, description="Remove the component along the primary sink's value first.")
    seed: int = Field(0, ge=0, description="Seed of the random directions (with trace, position and layer).")

    @field_validator("norm", mode="before")
    @classmethod
    def _norm(cls, v):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not v > 0:
            raise fail(f"{show(v)} is not a positive number — give a norm such as 10, or matched")
        return v

    @model_validator(mode="after")
    def _matched(self):
        if self.norm == "matched" and self.matched_to is None:
            raise fail("norm: matched needs matched_to — add matched_to: {kind: zero | scale | mean_swap} "
                       "(scale with factor: f), or give a number as norm")
        if self.matched_to is not None and (self.matched_to.kind == "scale") != (self.matched_to.factor is not None):
            raise fail("matched_to.factor: give a factor with kind: scale, and only then")
        return self

    def conditions(self, index: int) -> list[Condition]:
        label = f"n{self.norm:g}" if self.norm != "matched" else f"matched-{self.matched_to.kind}" + (
            f"-x{self.matched_to.factor:g}" if self.matched_to.factor is not None else "") + (
            "-full" if self.match == "full" else "")
        return [self._site_condition(index, f".{label}", params=self.params())]

    def params(self) -> dict:
        """The condition's params: what the run needs to draw and size the vectors."""
        return {"norm": self.norm, "matched_to": self.matched_to.model_dump() if self.matched_to else None,
                "match": self.match, "orthogonal_to_sink": self.orthogonal_to_sink, "seed": self.seed}

    # -- run --------------------------------------------------------------------------------

    @classmethod
    def trace_state(cls, conditions, trace) -> dict:
        """Clean site outputs at every target position and at the reference primary sink, per (site, layer),
        plus the non-sink means where a condition matches a mean swap (one clean forward for all)."""
        L = trace.loaded.dims["layers"]
        positions = sorted({t.position for c in conditions for name in list(c.targets) + [c.controls or ""]
                            for t in trace.sets.get(name, [])} | {trace.reference})
        sites = sorted({c.site for c in conditions} | {"block_output"})  # block_output: the sink direction
        index = {p: i for i, p in enumerate(positions)}
        values = trace.site_values([(s, layer) for s in sites for layer in range(L)],
                                   reduce=lambda site, layer, out: out[positions].float().clone())
        state = {"values": values, "index": index, "reference": trace.reference, "trace": trace.index, "means": {},
                 "dtype": next(trace.loaded.model.parameters()).dtype}
        swap_sites = sorted({c.site for c in conditions if (c.params.get("matched_to") or {}).get("kind") == "mean_swap"})
        if swap_sites:
            from .mean_swap import site_means

            state["means"] = site_means(trace.loaded, trace.token_ids, {s.position for s in trace.sinks}, swap_sites)
        return state

    @classmethod
    def edits_for(cls, condition, target, layers, state):
        # one [1, D] row per target: edits of a forward merge into one per (site, layer), each position its own row
        return [Edit("noise", layer, [target.position], site=condition.site,
                     vector=noise_vector(condition, state, target.position, layer)[None]) for layer in layers]

    @classmethod
    def effect_values(cls, condition, target, layer, edited_layers, state=None) -> dict:
        matched = condition.params.get("matched_to") or {}
        factor = float(matched["factor"]) if matched.get("factor") is not None else float("nan")
        if state is None or not edited_layers:
            return {"noise_norm": float("nan"), "matched_factor": factor}
        # one value per (condition, target), written on each of its per-layer rows: computed once
        key = (condition.id, target.position)
        if key not in state.setdefault("noise_norms", {}):
            norms = [matched_norm(condition, state, target.position, lay) for lay in edited_layers]
            state["noise_norms"][key] = sum(norms) / len(norms)
        return {"noise_norm": state["noise_norms"][key], "matched_factor": factor}

    # -- compile ----------------------------------------------------------------------------

    @classmethod
    def merge_key(cls, edit) -> tuple:
        return (edit.kind, edit.site, edit.layer)  # one edit per (site, layer); each position keeps its row

    @classmethod
    def pyvene_intervention(cls, edit, dims):
        from interventions.compile.pyvene_compat import pv

        # [1, N, D]: pyvene's [B, N, D] selection (B = 1 in a run) gets each position's own vector added
        return pv.AdditionIntervention(source_representation=edit.vector[None], embed_dim=dims["hidden"])

    @classmethod
    def reference_value(cls, edit, original):
        return original + edit.vector.to(device=original.device, dtype=original.dtype)


def matched_norm(condition, state, position: int, layer: int) -> float:
    """The norm the noise gets at (position, layer): fixed, or the norm of the matched edit's change there."""
    norm = condition.params["norm"]
    if norm != "matched":
        return float(norm)
    values = state["values"][(condition.site, layer)]
    v = values[state["index"][position]]
    matched = condition.params["matched_to"]
    if matched["kind"] == "zero":
        change = -v
    elif matched["kind"] == "scale":
        change = (float(matched["factor"]) - 1.0) * v
    else:
        change = state["means"][condition.site][layer].float().to(v.device) - v
    if condition.params.get("match", "orthogonal") == "orthogonal":
        change = _off_sink(change, sink_direction(state, layer))
    return float(change.norm())


def noise_vector(condition, state, position: int, layer: int):
    """The added vector at (position, layer): a seeded normal direction (orthogonal to the reference primary
    sink's value when asked), scaled to :func:`matched_norm`. Deterministic in (seed, trace, position, layer)."""
    import torch

    values = state["values"][(condition.site, layer)]
    v = values[state["index"][position]]
    gen = torch.Generator().manual_seed(_mix(condition.params["seed"], state["trace"], position, layer))
    direction = torch.randn(v.shape[-1], generator=gen, dtype=torch.float32)
    if condition.params["orthogonal_to_sink"]:
        direction = _off_sink(direction, sink_direction(state, layer).cpu())
    direction = direction / direction.norm()
    return (matched_norm(condition, state, position, layer) * direction).to(device=v.device, dtype=state["dtype"])


def sink_direction(state, layer: int):
    """The reference primary sink's hidden state at ``layer`` (float32): what sink cosines are measured against."""
    return state["values"][("block_output", layer)][state["index"][state["reference"]]].float()


def _off_sink(vector, sink):
    """``vector`` minus its component along ``sink``."""
    norm = float(sink.norm())
    if norm == 0:
        return vector
    unit = (sink / norm).to(vector.device)
    return vector - (vector @ unit) * unit


def _mix(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix-style), so nearby (trace, position, layer) draw unrelated vectors."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
    return x & 0x7FFFFFFFFFFFFFFF
