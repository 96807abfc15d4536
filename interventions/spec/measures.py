"""Measures a run can take: the one table of what each computes from a forward and which columns it writes.

A :class:`Measure` is what an entry of a spec's ``measures:`` names. It says which columns it
writes and at what grain (per target and layer, per target, or per position after the edit),
what it needs from a forward beyond the observer's per-layer profiles, whether the statistics
step needs it, and how its values are computed. Spec validation, the run's tables
(:mod:`interventions.run.tables`), the statistics' per-layer effects and run comparison
(:mod:`interventions.studies.compare_runs`) all read this registry, so a measure registered here
(one file in :mod:`interventions.measures`, or a notebook cell calling :func:`register_measure`)
flows into effects, statistics and comparison with no other file touched.

Every column also has a ``clean_`` twin (the same value in the clean forward), except the
per-position ones, which are a difference between the two forwards already.

Not to be confused with an *outcome* measure (:mod:`interventions.spec.outcomes`): a value per
unit that a hypothesis tests, computed by the statistics step from these columns.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from interventions.registry import Registry


@dataclass(frozen=True)
class TargetView:
    """What a measure's ``target_values`` sees of one target: its arrays in both forwards and its layers.

    ``clean``/``edited`` hold every computed per-layer array (``[L, T]``, by column); ``positions`` the
    per-position arrays (``[T]``, by column) of this condition; ``clean_level``/``level`` are the
    target's ``(l_start, lifetime)`` in each forward (the one definition,
    :func:`interventions.detection.rules.sink_level`); ``ref_layer`` is the layer a per-target value is read
    at (the edited layer for a site edit, else the clean ``l_start``; None when neither exists) and
    ``seen_layer`` the first attention that sees an edit there (``ref_layer + 1``, capped at the last layer).
    """

    clean: dict
    edited: dict
    positions: dict
    position: int
    level: tuple[int, int]
    clean_level: tuple[int, int]
    ref_layer: int | None
    seen_layer: int | None


@dataclass(frozen=True)
class Measure:
    """One entry of a spec's ``measures:``."""

    name: str
    meaning: str
    layer_columns: dict[str, str] = field(default_factory=dict)
    """Columns with one value per target and layer (each with a ``clean_`` twin): column -> meaning."""
    target_columns: dict[str, str] = field(default_factory=dict)
    """Columns with one value per target, repeated on its per-layer rows: column -> meaning."""
    position_columns: dict[str, str] = field(default_factory=dict)
    """Columns of ``downstream.parquet``: one value per position from the edit on, per condition."""
    layer_values: Callable | None = None
    """``layer_values(obs, config, reference) -> {column: [L, T] array}`` for one forward."""
    target_values: Callable | None = None
    """``target_values(view: TargetView) -> {column: value}`` for one target of one condition."""
    position_values: Callable | None = None
    """``position_values(clean_obs, edited_obs) -> {column: [T] array}``; measures that share one function
    (``kl`` and ``delta_nll``) have it called once per condition."""
    needs: tuple[str, ...] = ()
    """What it needs of a forward beyond the observer's profiles and sink scores: ``logits``."""
    default: bool = True
    """Whether a spec that leaves ``measures:`` out takes it."""
    statistics: bool = False
    """Whether the statistics step needs it (a run measuring fewer writes its tables but skips statistics)."""

    @property
    def columns(self) -> dict[str, str]:
        """Every per-target and per-layer column it writes (without the ``clean_`` twins)."""
        return {**self.target_columns, **self.layer_columns}


def _load_builtin() -> None:
    importlib.import_module("interventions.measures")


MEASURES: Registry[Measure] = Registry("measure", load=_load_builtin)
"""Measures by name, in registration order."""


def register_measure(measure: Measure) -> Measure:
    """Register ``measure`` under its name (a second one under a taken name is an error)."""
    taken = {c: m.name for m in MEASURES.values() for c in {**m.columns, **m.position_columns}}
    for c in {**measure.columns, **measure.position_columns}:
        if c in taken and taken[c] != measure.name:
            raise ValueError(f"measure {measure.name!r}: column {c!r} is already written by measure {taken[c]!r}")
    return MEASURES.register(measure.name, measure)


def default_measures() -> list[str]:
    """What a spec without ``measures:`` takes: every registered measure marked ``default``."""
    return [name for name, m in MEASURES.items() if m.default]


def statistics_measures() -> list[str]:
    """Measures the statistics step needs."""
    return [name for name, m in MEASURES.items() if m.statistics]


def layer_columns(measures=None) -> list[str]:
    """Per-layer columns of ``measures`` (default: every registered one), in registration order."""
    names = list(MEASURES) if measures is None else [m for m in MEASURES if m in measures]
    return [c for m in names for c in MEASURES[m].layer_columns]


def measure_of(column: str) -> str | None:
    """The measure that writes ``column`` (or its ``clean_`` twin), else None."""
    column = column[len("clean_"):] if column.startswith("clean_") else column
    return next((name for name, m in MEASURES.items() if column in {**m.columns, **m.position_columns}), None)
