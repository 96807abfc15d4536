"""Generated traces: the input controls of Gu et al. (2024), *When Attention Sink Emerges*.

A sink that shows up on random tokens or on one token repeated is not about the content of
the text; Gu et al. measure Sink-epsilon on such inputs beside natural text. A spec or the
``heads`` command can ask for them instead of a trace file::

    traces: {generate: random_tokens, length: 64, n: 100, seed: 0}
    traces: {generate: repeated_token, length: 64, n: 100, seed: 0}

Each trace starts with exactly the special tokens the tokenizer itself adds to a text (its BOS,
when it adds one; nothing for Qwen tokenizers), then ``length`` generated tokens drawn from the
vocabulary minus the special tokens: independently (``random_tokens``) or one token drawn per
trace and repeated (``repeated_token``). Generation uses its own seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from interventions.errors import UserError

GENERATORS = ("random_tokens", "repeated_token")


@dataclass(frozen=True)
class GeneratedTraces:
    """Settings of a generated trace source (recorded in manifests)."""

    generate: Literal["random_tokens", "repeated_token"]
    length: int = 64
    """Generated tokens per trace, after the tokenizer's own special prefix."""
    n: int = 100
    """Number of traces."""
    seed: int = 0

    def __post_init__(self):
        if self.generate not in GENERATORS:
            raise UserError(f"traces.generate is {self.generate!r}; use one of {', '.join(GENERATORS)}",
                            field="traces.generate")
        if self.length < 2:
            raise UserError(f"traces.length is {self.length}; it must be at least 2", field="traces.length")
        if self.n < 1:
            raise UserError(f"traces.n is {self.n}; it must be at least 1", field="traces.n")


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer adds around any text at its start (e.g. [BOS] for Llama/Gemma, [] for Qwen)."""
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return with_special[:start]
    return []


def ordinary_token_ids(tokenizer) -> np.ndarray:
    """Every id of the tokenizer's vocabulary that is not a special or added control token."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special |= {int(i) for i, tok in added.items() if getattr(tok, "special", True)}
    vocab = np.arange(len(tokenizer))
    return vocab[~np.isin(vocab, sorted(special))]


def generated_ids(tokenizer, source: GeneratedTraces, index: int) -> list[int]:
    """Token ids of generated trace ``index``: the tokenizer's special prefix, then ``length`` tokens.

    Each trace has its own generator seeded by (``seed``, ``index``), so trace i is the same
    whatever ``n`` or ``limit`` is.
    """
    rng = np.random.default_rng([source.seed, index])
    pool = ordinary_token_ids(tokenizer)
    if source.generate == "random_tokens":
        body = rng.choice(pool, size=source.length, replace=True)
    else:
        body = np.full(source.length, rng.choice(pool))
    return special_prefix(tokenizer) + [int(t) for t in body]


def generated_records(source: GeneratedTraces, n: int | None = None) -> list[dict]:
    """Trace records (``{"generate": ...}``) that :func:`interventions.spec.traces.traces_from_records`
    turns into token ids with the model's tokenizer; ``n`` overrides ``source.n`` (a spec's ``limit``)."""
    count = source.n if n is None else min(n, source.n)
    return [{"generate": source.generate, "length": source.length, "seed": source.seed, "index": i,
             "id": f"{source.generate}-{source.seed}-{i}"} for i in range(count)]
