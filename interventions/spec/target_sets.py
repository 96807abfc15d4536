"""Target sets: named groups of token positions, resolved per trace from the clean run."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from interventions.errors import UserError
from interventions.registry import Registry

from .conditions import registered_union
from .fields import SpecModel, fail, show, tokens_validator

TARGETS: Registry[type[TargetBase]] = Registry("selector")
"""Target selectors by ``select`` name, in the order error messages list them."""


def register_target(cls: type[TargetBase]) -> type[TargetBase]:
    """Class decorator: register a target selector under its ``select`` literal (usable after import).

    The spec accepts it at once; resolving it to positions is :func:`interventions.compile.targets.resolve_targets`'
    job (a selector it does not know is reported there).
    """
    return TARGETS.register(cls.model_fields["select"].default, cls)


def token_ids_for(tokenizer, tokens: list[str | int], *, field: str) -> list[int]:
    """Map token strings/ids to ids; a string that is not exactly one token is an error.

    Here, beside the selectors whose ``tokens`` it reads, so that validation (``spec.load``) and
    resolution (``interventions.compile.targets``) share it without an import cycle."""
    ids = []
    for tok in tokens:
        if isinstance(tok, int):
            ids.append(tok)
            continue
        enc = tokenizer(tok, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            pieces = [tokenizer.decode([i]) for i in enc]
            raise UserError(f"token {tok!r} is {len(enc)} tokens for this tokenizer ({pieces}); give a single token "
                            "or its id", field=field)
        ids.append(enc[0])
    return ids



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
    min_position: int | None = Field(None, ge=0, description=(
        "Keep only sinks at this token position or later (e.g. past a prompt template every trace shares, "
        "whose sinks repeat one measurement)."))

    _tokens = field_validator("tokens", mode="before")(lambda v: tokens_validator(v))

    @field_validator("level")
    @classmethod
    def _level(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (v[0] < 0 or v[1] < 1):
            raise fail(f"{show(v)} is not a level — write [l_start, lifetime] with l_start >= 0 and lifetime >= 1")
        return v


@register_target
class Tokens(TargetBase):
    """Every position holding one of the given tokens (sinks or not)."""

    select: Literal["tokens"] = Field("tokens", description="Positions of the given tokens.")
    tokens: list[str | int] = Field(description="Token strings (quote leading spaces: \" ~\") or token ids.")

    _tokens = field_validator("tokens", mode="before")(lambda v: tokens_validator(v))


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


MASS_CALIPER = (0.5, 2.0)
"""Range of (controls' clean attention mass) / (targets' clean attention mass) strictly inside which controls count
as matched on the mass their masking removes (a set removing exactly half the mass is outside). ``matched_controls``
(``by: attention_mass``, ``size: auto``) builds each target's control set to land inside it; H4's verdict keeps only
the traces whose controls' masks remove a mass inside it, narrowed by the claim's direction
(:func:`mass_caliper`, applied in :func:`interventions.stats.hypotheses._mass_balance`)."""

MASS_TOLERANCE = 1e-6
"""Relative float slack at ratio 1 of a directional caliper (a set that reaches its target's mass to rounding)."""


def mass_caliper(direction: str) -> tuple[float, float]:
    """The (low, high) bounds, exclusive, on controls' / targets' masked mass for a claim in ``direction``.

    Inside the two-sided caliper a mass gap still biases the comparison: a mask that removes more attention moves
    the forward more whatever the masked tokens are, so targets that remove 1/0.55x the controls' mass "win" on a
    KL that only follows the mass (23 of 40 draws "supported" in the mass-driven table null with the symmetric
    caliper). For a one-sided claim the caliper is cut at 1 so that any mass gap works *against* the claim: for
    ``increase`` (targets move the outcome more) the controls must remove at least the targets' mass (1-2x),
    for ``decrease`` at most (0.5-1x); ``nonzero`` keeps 0.5-2x.
    """
    lo, hi = MASS_CALIPER
    if direction == "increase":
        return 1.0 - MASS_TOLERANCE, hi
    if direction == "decrease":
        return lo, 1.0 + MASS_TOLERANCE
    return lo, hi


@register_target
class MatchedControls(TargetBase):
    """Non-sink positions matched to the members of the target set ``match`` in each trace.

    ``by: random`` draws one per target at random. ``by: attention_mass`` matches each target (in position
    order, without replacement) on its clean attention mass (column sum of its attention, mean over heads,
    over the attention layers that read the target while it is a sink) among the non-sink, non-target
    positions within ``caliper`` tokens of it (the nearest ones when none is that close):

    * ``size: 1``: the one position of closest log mass (nearest-neighbour matching with a caliper). A
      secondary sink draws 6-60x the attention of any ordinary token, so one token removes far less mass;
    * ``size: auto`` (the default): a *set*. Greedily, the candidate whose log mass is closest to the mass
      still missing (the target's minus the set's so far) joins the set, among those that keep the set's sum
      below ``MASS_CALIPER[1]`` (2x) the target's; it stops once the sum reaches the target's mass or no
      candidate fits. The set is masked together in the control forward (each member's ``control_of`` in the
      effects rows is its target's position), so the control arm removes about the mass the target arm does;
      a set that stays below ``MASS_CALIPER[0]`` (0.5x: too few ordinary tokens nearby) leaves its trace
      unmatched, and H4's verdict drops it (and counts it).
    """

    select: Literal["matched_controls"] = Field(
        "matched_controls", description="Non-sink positions matched in count (and optionally attention mass) "
                                        "to another set.")
    match: str = Field(description="Name of the target set whose per-trace count is matched.")
    seed: int = Field(0, description="Seed of the random draw (the same seed gives the same positions).")
    by: Literal["random", "attention_mass"] = Field(
        "random", description="random, or attention_mass (closest clean attention mass within the caliper).")
    caliper: int = Field(32, ge=1, description="by: attention_mass: farthest distance in tokens from the target; "
                                               "without a candidate that close, the nearest ones are used.")
    size: Literal["auto", 1] = Field(
        "auto", description="by: attention_mass: auto (a set of non-sinks per target whose summed mass is "
                            "0.5-2x the target's) or 1 (the single closest in mass); by: random draws one.")


TargetSet = registered_union(TARGETS, "select", TargetBase)
"""The spec type of one ``targets:`` entry: any registered selector, chosen by ``select``."""
