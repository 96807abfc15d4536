"""``attention_mask``: no query attends to the target keys in the chosen layers (H4).

pyvene 0.1.8 has no attention-probability component for Qwen/Llama (the softmax is inside a
function, not a module), so this kind is applied through the hookable attention function
(``interventions.attention``): probability exactly 0 on the masked keys, the rest renormalised
by the softmax, or (``redirect: bos``) the removed mass moved onto the primary sink.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..adapters import get_module
from ..attention import AttentionEdit


@contextmanager
def applied(loaded, edits):
    """Install the attention edits on their layers for the duration of the block."""
    from ..adapters import decoder_layers

    layers = decoder_layers(loaded.model, loaded.adapter)
    touched = []
    try:
        for edit in edits:
            attn = get_module(layers[edit.layer], loaded.adapter.attention)
            previous = getattr(attn, "_interventions_edit", None)
            keys = tuple(sorted(set(edit.positions) | set(previous.masked_keys if previous else ())))
            attn._interventions_edit = AttentionEdit(masked_keys=keys, redirect_to=edit.redirect_to)
            touched.append(attn)
        yield
    finally:
        for attn in touched:
            if hasattr(attn, "_interventions_edit"):
                del attn._interventions_edit
