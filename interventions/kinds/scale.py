"""``scale``: multiply a site's output at the targets by a factor (H2: norm sets score and lifetime)."""

from __future__ import annotations

import torch

from ..compiler.pyvene_compat import pv


class ScaleIntervention(pv.SourcelessIntervention, pv.LocalistRepresentationIntervention):
    """Multiply the selected representations by ``factor`` (pyvene keeps the [B, units, D] shape)."""

    def __init__(self, factor: float, **kwargs):
        super().__init__(**kwargs)
        self.factor = float(factor)

    def forward(self, base, source=None, subspaces=None, **kwargs):
        return base * self.factor

    def __str__(self):
        return f"ScaleIntervention(factor={self.factor})"


def pyvene_intervention(edit, dims):
    return ScaleIntervention(edit.factor, embed_dim=dims["hidden"])


def reference_value(edit, original: torch.Tensor) -> torch.Tensor:
    return original * edit.factor
