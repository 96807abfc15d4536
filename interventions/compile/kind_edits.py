"""Edit objects for :func:`interventions.edit`: one class per registered kind, named after it.

>>> from interventions.compile.kind_edits import Scale, Zero, AttentionMask
>>> Scale(site="mlp_output", layer=4, positions=[7, 12], factor=5)
Scale(site='mlp_output', layer=4, positions=[7, 12], factor=5)

``Scale`` is the kind ``scale``, ``MeanSwap`` is ``mean_swap``, ``AttentionMask`` is
``attention_mask``; a kind registered later gets its class here too (``Steer`` for ``steer``).
Keyword arguments besides ``site``, ``layer`` and ``positions`` are the kind's edit parameters
(see each kind's ``api_edits``): ``factor`` (scale), ``vector`` (mean_swap, add: a [D] tensor),
``coefficient`` (add), ``redirect_to`` (attention_mask: a key position or None), ``values`` or
``source_positions`` / ``source_tokens`` (patch).
"""

from __future__ import annotations

from typing import Any


class EditObject:
    """One edit request: a kind at ``layer`` (an int, a list or a range) on absolute ``positions``."""

    kind: str = ""

    def __init__(self, *, layer, positions, site: str | None = None, **params: Any):
        """
        Args:
            layer: the layer(s) edited together: an int, a list of ints or a ``range``.
            positions: absolute token positions of the forward the edit applies to.
            site: ``mlp_output``, ``attention_output`` or ``block_output`` (None for attention kinds).
            **params: the kind's parameters (e.g. ``factor=5`` for Scale).
        """
        self.layers = [int(layer)] if isinstance(layer, int) else [int(x) for x in layer]
        self.layer = layer
        self.positions = [int(p) for p in positions]
        self.site = site
        self.params = params

    def edits(self, loaded) -> list:
        """The concrete :class:`~interventions.compile.Edit` s for ``loaded`` (one per layer)."""
        from interventions.spec.conditions import KINDS

        return KINDS.get_or_raise(self.kind).api_edits(loaded, layers=self.layers, positions=self.positions,
                                                        site=self.site, **self.params)

    def __repr__(self) -> str:
        parts = ([f"site={self.site!r}"] if self.site else []) + [f"layer={self.layer!r}",
                                                                   f"positions={self.positions!r}"]
        for k, v in self.params.items():
            text = f"tensor{tuple(v.shape)}" if hasattr(v, "shape") else repr(v)
            parts.append(f"{k}={text}")
        return f"{type(self).__name__}({', '.join(parts)})"


_CLASSES: dict[str, type[EditObject]] = {}


def class_name(kind: str) -> str:
    """``mean_swap`` -> ``MeanSwap``."""
    return "".join(part.capitalize() for part in kind.split("_"))


def edit_class(kind: str) -> type[EditObject]:
    """The edit class of a registered kind (made once)."""
    from interventions.spec.conditions import KINDS

    cls = KINDS.get_or_raise(kind)
    if kind not in _CLASSES:
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else kind
        _CLASSES[kind] = type(class_name(kind), (EditObject,), {"kind": kind, "__doc__": doc,
                                                              "__module__": __name__})
    return _CLASSES[kind]


def __getattr__(name: str):
    from interventions.spec.conditions import KINDS

    for kind in KINDS:
        if class_name(kind) == name:
            return edit_class(kind)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r} — edit classes here: "
                         f"{', '.join(class_name(k) for k in KINDS)}")


def __dir__():
    from interventions.spec.conditions import KINDS

    return sorted([*globals(), *(class_name(k) for k in KINDS)])
