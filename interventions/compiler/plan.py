"""The compiled plan's unit: one concrete edit of one forward pass.

A spec condition is resolved per trace (targets -> positions, ``l_start`` -> integers) into
a list of :class:`Edit` by its kind (``edits_for``); the compiler turns that list into pyvene
interventions and attention edits, and :func:`interventions.edit` applies it with plain hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..spec.fields import SITES

if TYPE_CHECKING:
    import torch

__all__ = ["SITES", "Edit"]


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
        from ..spec.conditions import KINDS

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
        from ..spec.conditions import KINDS

        return KINDS[self.kind]

    @property
    def first_position(self) -> int:
        return self.positions[0] if self.positions else 10**9
