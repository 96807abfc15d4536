"""Outcome measures a hypothesis can name: the one table of what each reads, how it is tested and against what.

An :class:`Outcome` is a value per unit (a target token, or a trace) computed from a run's
effects rows; a hypothesis (:mod:`interventions.spec.hypotheses`) names one or more. Each entry
says which intervention kind's rows it reads, the predicted direction and equivalence margin
that apply unless a hypothesis overrides them, and the **comparison arms that can decide it**:
arms whose units can move both ways under the null, given an edit of matched size
(``../shared/notes/verdict-design.md``). Clean sinks can only lose their sink status and
non-sinks can only gain it, so a sink-rate measure is decided against clean sinks under a
placebo edit, never against non-sink controls or the clean run.

The built-in measures are defined, with the functions that compute them, in
:mod:`interventions.stats.outcomes` (loaded on first read of :data:`OUTCOMES`); a measure
registered in a notebook with :func:`register_outcome` is usable in the next spec.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from interventions.registry import Registry

ARMS = ("placebo", "controls", "clean")
"""Comparison arms: clean targets under a placebo edit, matched control tokens under the same edit, or the
clean run itself (the value 0)."""


@dataclass(frozen=True)
class Outcome:
    """One outcome measure a hypothesis can test (named in a hypothesis' ``measure:``)."""

    name: str
    meaning: str
    """What the value is, in words (goes into the verdict record's test description)."""
    kind: str
    """The intervention kind whose conditions it reads (the hypothesis' conditions must be of this kind)."""
    direction: str
    """Predicted direction unless the hypothesis overrides it: increase, decrease or nonzero."""
    margin: float
    """Equivalence margin unless the hypothesis overrides it (a CI inside +-margin is a negligible effect)."""
    comparisons: tuple[str, ...]
    """Arms that can decide this measure, in the order ``compare: auto`` tries them."""
    why_not: dict[str, str] = field(default_factory=dict)
    """For arms that cannot decide it: why (told in the verdict when a hypothesis asks for one)."""
    units: Callable | None = None
    """``units(rows, arm) -> DataFrame[condition, trace, position, value]``: one value per unit of one arm."""
    per: str = "target"
    """``target``: one value per target token; ``trace``: one value per trace."""
    fixed_by_prefix: bool = True
    """Whether a unit's value depends only on the tokens up to its targets (sink status, suppression): then
    traces whose targets share their prefixes repeat one measurement and count as one unit. False for
    measures read over the rest of the trace (H4's primary score and KL)."""


def _load_builtin() -> None:
    importlib.import_module("interventions.stats.outcomes")


OUTCOMES: Registry[Outcome] = Registry("outcome measure", load=_load_builtin)
"""Outcome measures by name, in registration order."""


def register_outcome(measure: Outcome) -> Outcome:
    """Register ``measure`` under its name (a second one under a taken name is an error)."""
    for arm in measure.comparisons:
        if arm not in ARMS:
            raise ValueError(f"outcome {measure.name!r}: comparison {arm!r} is not one of {', '.join(ARMS)}")
    return OUTCOMES.register(measure.name, measure)
