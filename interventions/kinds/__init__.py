"""Intervention kinds, one file each; importing a kind's module registers it in :data:`KINDS`.

A kind file holds the spec model (pydantic, ``kind: Literal["name"]``), its expansion into
conditions, the edits it makes per target, its effect columns, its compile step (a pyvene
intervention, or an install step on the attention function) and its torch oracle; see
:class:`interventions.spec.conditions.InterventionBase` for the contract and ``add.py`` or
``patch.py`` for a complete example. The spec reads :data:`KINDS` at validation time, so a kind
registered after import (in a notebook, in a plugin) works in the next spec.
"""

import importlib
import pkgutil

from interventions.spec.conditions import KINDS, InterventionBase, register_kind

# Import order is registration order, which error messages list: the paper's four first, then
# every other module of this package (a new kind is a new file here; nothing else to edit).
from . import zero  # noqa: I001,F401 - registers the kind
from . import scale  # noqa: F401
from . import mean_swap  # noqa: F401
from . import attention_mask  # noqa: F401

_NOT_KINDS = {"base"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _NOT_KINDS and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
from .attention_mask import AttentionMask
from .mean_swap import MeanSwap
from .scale import Scale
from .zero import Zero

BUILTIN_CLASSES = {"Zero": Zero, "Scale": Scale, "MeanSwap": MeanSwap, "AttentionMask": AttentionMask}
"""Built-in kind classes (spec models) by class name."""


def site_kinds() -> dict[str, type[InterventionBase]]:
    """Registered kinds that rewrite a site's output (compiled to pyvene; each has a torch oracle)."""
    return {name: cls for name, cls in KINDS.items() if cls.COMPILES_TO == "site"}


__all__ = ["BUILTIN_CLASSES", "KINDS", "register_kind", "site_kinds"]
