"""Edits -> an executable plan: one pyvene IntervenableModel for the site edits, plus the edits
of attention kinds installed on the attention function.

Everything kind-specific comes from the kind's class (:data:`interventions.spec.KINDS`):
``COMPILES_TO`` says which of the two an edit is, ``pyvene_intervention`` / ``install`` do it.
pyvene is imported only when a plan has a site edit.

The plan runs a forward whose input may start at ``offset`` (a suffix over a cached prefix):
pyvene positions are relative to the input, so they are shifted here, in one place.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from .plan import Edit


@dataclass
class CompiledPlan:
    """What one intervened forward needs."""

    loaded: object
    module_edits: list[Edit]
    """Edits of a site's output (``COMPILES_TO = "site"``), one pyvene intervention each."""
    attention_edits: list[Edit]
    """Edits of attention (``COMPILES_TO = "attention"``), installed by their kind."""
    intervenable: object | None
    """A :class:`HookSafeIntervenableModel`, or None when there is no site edit."""

    def unit_locations(self, offset: int = 0) -> dict:
        # Fully nested form: {"sources->base": (None, [per intervention: [per example: [positions]]])}
        return {"sources->base": (None, [[[p - offset for p in e.positions]] for e in self.module_edits])}

    @contextmanager
    def applied(self):
        """Install the attention edits (site edits run through pyvene in :meth:`forward`)."""
        with ExitStack() as stack:
            by_kind: dict[str, list[Edit]] = {}
            for e in self.attention_edits:
                by_kind.setdefault(e.kind, []).append(e)
            for edits in by_kind.values():
                stack.enter_context(edits[0].kind_class.install(self.loaded, edits))
            yield self

    def forward(self, offset: int = 0, **model_inputs):
        """Run the model with every edit applied; returns the model output."""
        with self.applied():
            if self.intervenable is None:
                return self.loaded.model(**model_inputs)
            _, out = self.intervenable(model_inputs, unit_locations=self.unit_locations(offset))
            return out


def merge_edits(edits: list[Edit]) -> list[Edit]:
    """Edits of one kind at the same (site, layer) with the same parameters become one edit.

    The kind says what "the same" is (``merge_key``); per-position values (``vector`` [N, D])
    are concatenated with their positions.
    """
    import torch

    merged: dict[tuple, Edit] = {}
    out: list[Edit] = []
    for e in edits:
        key = e.kind_class.merge_key(e)
        if key is None:
            out.append(e)
            continue
        if key in merged:
            m = merged[key]
            per_position = m.vector is not None and m.vector.dim() == 2
            vector = torch.cat([m.vector, e.vector.to(m.vector.device)]) if per_position else m.vector
            merged[key] = Edit(e.kind, e.layer, m.positions + e.positions, site=e.site, factor=e.factor,
                               vector=vector, redirect_to=e.redirect_to, params=e.params)
        else:
            merged[key] = e
    return list(merged.values()) + out


def compile_edits(loaded, edits: list[Edit]) -> CompiledPlan:
    """Compile resolved edits for ``loaded`` into a :class:`CompiledPlan`."""
    edits = [e for e in merge_edits(edits) if e.positions]
    module_edits = [e for e in edits if e.kind_class.COMPILES_TO == "site"]
    attention_edits = [e for e in edits if e.kind_class.COMPILES_TO == "attention"]
    seen = {}
    for e in module_edits:
        if (e.site, e.layer) in seen:
            raise ValueError(f"two different edits write {e.site} at layer {e.layer}; "
                             f"split them into separate conditions ({seen[(e.site, e.layer)]} and {e.kind})")
        seen[(e.site, e.layer)] = e.kind
    intervenable = None
    if module_edits:
        from .pyvene_compat import HookSafeIntervenableModel, ensure_registered, pv

        ensure_registered(loaded.model, loaded.adapter)
        dims = loaded.dims
        representations = [
            pv.RepresentationConfig(layer=e.layer, component=e.site, unit="pos", max_number_of_units=len(e.positions),
                                    intervention=e.kind_class.pyvene_intervention(e, dims))
            for e in module_edits
        ]
        config = pv.IntervenableConfig(representations=representations, model_type=type(loaded.model))
        intervenable = HookSafeIntervenableModel(config, loaded.model)
        intervenable.disable_model_gradients()
    return CompiledPlan(loaded, module_edits, attention_edits, intervenable)
