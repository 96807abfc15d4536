"""pyvene 0.1.8 on transformers 5: the one place that knows its traps (see shared notes).

1. pyvene looks models up by exact class; Qwen3, Phi-3 and Gemma3 are unknown. We register each
   model's class at runtime by copying the table of the family the adapter names
   (``Adapter.pyvene_like``), then point the residual-stream components we edit
   (``mlp_output``, ``attention_output``, their inputs, blocks) at the adapter's modules. That
   matters for Gemma2/3: pyvene's own Gemma2 table hooks ``mlp_output`` on the raw MLP, *before*
   ``post_feedforward_layernorm``, where a scale edit is normalised away.
2. Every pyvene forward removes *all* hooks on the model, ours included.
   :class:`HookSafeIntervenableModel` removes only the hooks pyvene itself added.
3. A flat ``unit_locations`` sets ``use_fast=True`` for good; we always pass the fully nested
   form and reset ``use_fast`` before each call.
"""

from __future__ import annotations

import contextlib
import io

from ..interrupts import sigint_deferred

# pyvene prints an nnsight notice on import, and its model-card import swallows Ctrl-C (a bare except)
with sigint_deferred(), contextlib.redirect_stdout(io.StringIO()):
    import pyvene as pv
from pyvene.models import intervenable_modelcard as _modelcard
from pyvene.models.constants import CONST_INPUT_HOOK, CONST_OUTPUT_HOOK

_REGISTERED: set[type] = set()


def residual_components(adapter) -> dict[str, tuple[str, str]]:
    """pyvene component -> (module path pattern, hook) for the sites the adapter defines."""
    layer = f"{adapter.layers}[%s]"
    return {
        "block_input": (layer, CONST_INPUT_HOOK),
        "block_output": (layer, CONST_OUTPUT_HOOK),
        "mlp_input": (f"{layer}.{adapter.mlp}", CONST_INPUT_HOOK),
        "mlp_output": (f"{layer}.{adapter.mlp_output}", CONST_OUTPUT_HOOK),
        "attention_input": (f"{layer}.{adapter.attention}", CONST_INPUT_HOOK),
        "attention_output": (f"{layer}.{adapter.attention_output}", CONST_OUTPUT_HOOK),
    }


def ensure_registered(model, adapter) -> None:
    """Make pyvene know ``type(model)``, its residual-stream components at the adapter's modules."""
    cls = type(model)
    if cls in _REGISTERED:
        return
    components = residual_components(adapter)
    known = pv.type_to_module_mapping.get(cls)
    if known is None or any(known.get(k) != v for k, v in components.items()):
        donor = cls if known is not None else next(
            (k for k in pv.type_to_module_mapping if k.__name__ == adapter.pyvene_like), None)
        if donor is None:
            raise RuntimeError(f"pyvene has no table for {adapter.pyvene_like}; fix Adapter.pyvene_like")
        for table in (pv.type_to_module_mapping, _modelcard.type_to_module_mapping):
            table[cls] = {**table[donor], **components}
        for table in (pv.type_to_dimension_mapping, _modelcard.type_to_dimension_mapping):
            table[cls] = dict(table[donor])
    _REGISTERED.add(cls)


def _hook_ids(model) -> dict[int, tuple[set, set]]:
    return {id(m): (set(m._forward_hooks), set(m._forward_pre_hooks)) for m in model.modules()}


class HookSafeIntervenableModel(pv.IntervenableModel):
    """An IntervenableModel that leaves hooks it did not add in place."""

    def forward(self, *args, **kwargs):
        self._foreign_hooks = _hook_ids(self.model)
        self.use_fast = False
        for intervention in self.interventions.values():
            intervention.use_fast = False
        return super().forward(*args, **kwargs)

    def _remove_forward_hooks(self):
        foreign = getattr(self, "_foreign_hooks", None)
        if foreign is None:
            return
        for module in self.model.modules():
            keep_post, keep_pre = foreign.get(id(module), (set(), set()))
            for hook_id in [h for h in module._forward_hooks if h not in keep_post]:
                module._forward_hooks.pop(hook_id)
            for hook_id in [h for h in module._forward_pre_hooks if h not in keep_pre]:
                module._forward_pre_hooks.pop(hook_id)
            # torch >= 2 keeps per-hook kwargs/always-call flags beside the hooks
            for name in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
                table = getattr(module, name, None)
                if table:
                    for hook_id in [h for h in table if h not in keep_post and h not in keep_pre]:
                        table.pop(hook_id)
