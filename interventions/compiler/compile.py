"""Edits -> an executable plan: one pyvene IntervenableModel for the module-output edits,
plus attention edits installed on the attention function.

The plan runs a forward whose input may start at ``offset`` (a suffix over a cached prefix):
pyvene positions are relative to the input, so they are shifted here, in one place.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from ..kinds import PYVENE_KINDS, attention_mask
from .plan import Edit


@dataclass
class CompiledPlan:
    """What one intervened forward needs."""

    loaded: object
    module_edits: list[Edit]
    attention_edits: list[Edit]
    intervenable: object | None
    """A :class:`HookSafeIntervenableModel`, or None when there is no module-output edit."""

    def unit_locations(self, offset: int = 0) -> dict:
        # Fully nested form: {"sources->base": (None, [per intervention: [per example: [positions]]])}
        return {"sources->base": (None, [[[p - offset for p in e.positions]] for e in self.module_edits])}

    @contextmanager
    def applied(self):
        with ExitStack() as stack:
            stack.enter_context(attention_mask.applied(self.loaded, self.attention_edits))
            yield self

    def forward(self, offset: int = 0, **model_inputs):
        """Run the model with every edit applied; returns the model output."""
        with self.applied():
            if self.intervenable is None:
                return self.loaded.model(**model_inputs)
            _, out = self.intervenable(model_inputs, unit_locations=self.unit_locations(offset))
            return out


def merge_edits(edits: list[Edit]) -> list[Edit]:
    """Edits of one kind at the same (site, layer) with the same parameters become one."""
    merged: dict[tuple, Edit] = {}
    for e in edits:
        key = (e.kind, e.site, e.layer, e.factor, e.redirect_to, e.vector.data_ptr() if e.vector is not None else None)
        if key in merged:
            merged[key] = Edit(e.kind, e.layer, merged[key].positions + e.positions, site=e.site, factor=e.factor,
                               vector=e.vector, redirect_to=e.redirect_to)
        else:
            merged[key] = e
    return list(merged.values())


def compile_edits(loaded, edits: list[Edit]) -> CompiledPlan:
    """Compile resolved edits for ``loaded`` into a :class:`CompiledPlan`."""
    edits = [e for e in merge_edits(edits) if e.positions]
    module_edits = [e for e in edits if e.kind in PYVENE_KINDS]
    attention_edits = [e for e in edits if e.kind == "attention_mask"]
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
                                    intervention=PYVENE_KINDS[e.kind].pyvene_intervention(e, dims))
            for e in module_edits
        ]
        config = pv.IntervenableConfig(representations=representations, model_type=type(loaded.model))
        intervenable = HookSafeIntervenableModel(config, loaded.model)
        intervenable.disable_model_gradients()
    return CompiledPlan(loaded, module_edits, attention_edits, intervenable)
