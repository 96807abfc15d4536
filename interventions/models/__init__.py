"""Models: loading any supported decoder-only causal LM, the architecture table, memory estimates.

In: a model source (hub id, local folder, ``.gguf`` file, in-memory model, ``testbed:NAME``).
Out: a :class:`~interventions.models.load.LoadedModel` (the HF model with its hookable attention
function, tokenizer and :class:`~interventions.models.adapters.Adapter`). Nothing outside
``adapters.py`` branches on architecture.
"""
