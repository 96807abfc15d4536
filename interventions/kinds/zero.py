"""``zero``: set a site's output to 0 at the target positions (H1: no MLP output, no sink)."""

from __future__ import annotations

import torch


def pyvene_intervention(edit, dims):
    from ..compiler.pyvene_compat import pv

    ZeroIntervention = pv.ZeroIntervention

    return ZeroIntervention(embed_dim=dims["hidden"])


def reference_value(edit, original: torch.Tensor) -> torch.Tensor:
    """Oracle: what the edited positions hold afterwards ([N, D] in, [N, D] out)."""
    return torch.zeros_like(original)
