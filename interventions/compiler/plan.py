"""The compiled plan's unit: one concrete edit of one forward pass.

A spec condition is resolved per trace (targets -> positions, ``l_start`` -> integers) into
a list of :class:`Edit`; the compiler turns that list into pyvene interventions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SITES = ("mlp_output", "attention_output", "block_output")
"""Sites an edit can write to, named as pyvene's components (TransformerLens: hook_mlp_out,
hook_attn_out, hook_resid_post)."""

KINDS = ("zero", "scale", "mean_swap", "attention_mask")


@dataclass
class Edit:
    """At ``layer``, change ``site`` at absolute ``positions`` (or, for attention_mask, remove those keys)."""

    kind: str
    layer: int
    positions: list[int]
    site: str | None = None
    """One of SITES; None for attention_mask (it edits attention probabilities, not a module output)."""
    factor: float | None = None
    """scale: the multiplier."""
    vector: torch.Tensor | None = field(default=None, repr=False)
    """mean_swap: the [D] vector written at every position."""
    redirect_to: int | None = None
    """attention_mask: key that receives the removed probability mass (None: renormalise)."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown edit kind {self.kind!r}")
        if self.kind != "attention_mask" and self.site not in SITES:
            raise ValueError(f"edit site {self.site!r} is not one of {SITES}")
        self.positions = sorted({int(p) for p in self.positions})

    @property
    def first_position(self) -> int:
        return self.positions[0] if self.positions else 10**9
