"""``to_jsonable`` for the statistics modules; defined once, in :mod:`interventions.jsonable`."""

from interventions.jsonable import to_jsonable

__all__ = ["to_jsonable"]
