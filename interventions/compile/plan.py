"""The compiled plan's unit: one concrete edit of one forward pass.

A spec condition is resolved per trace (targets -> positions, ``l_start`` -> integers) into
a list of :class:`Edit` by its kind (``edits_for``); the compiler turns that list into pyvene
interventions and attention edits, and :func:`interventions.edit` applies it with plain hooks.
:class:`Edit` is defined with the kinds that make it (:mod:`interventions.spec.conditions`),
so the dependency runs one way: spec -> compiler.
"""

from interventions.spec.conditions import Edit
from interventions.spec.fields import SITES

__all__ = ["SITES", "Edit"]
