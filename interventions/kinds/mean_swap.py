"""``mean_swap``: write the mean non-sink vector of the same trace and layer at the targets (H3).

The mean comes from the clean run: the average of the site's output over every position that
is not a sink (primary or secondary) in that trace, at that layer (the paper's footnote 3).
"""

from __future__ import annotations

import torch


def pyvene_intervention(edit, dims):
    from ..compiler.pyvene_compat import pv

    VanillaIntervention = pv.VanillaIntervention

    return VanillaIntervention(source_representation=edit.vector, embed_dim=dims["hidden"])


def reference_value(edit, original: torch.Tensor) -> torch.Tensor:
    return edit.vector.to(original.dtype).expand_as(original).clone()
