"""Compilation: resolved edits -> pyvene interventions (+ attention edits pyvene cannot express)."""

from .compile import CompiledPlan, compile_edits
from .plan import SITES, Edit

__all__ = ["SITES", "CompiledPlan", "Edit", "compile_edits"]
