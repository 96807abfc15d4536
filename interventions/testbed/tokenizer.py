"""A small, real byte-level BPE tokenizer built in code (no downloads).

The vocabulary is the 256 byte symbols of GPT-2's byte-level alphabet, one merge chain per
word of a fixed word list (``" the"`` -> ``Ġ`` + ``t`` -> ``Ġt`` + ``h`` -> ... -> ``Ġthe``), and
two special tokens: ``<|bos|>`` (the beginning-of-sequence token every trace starts with) and
``<|endoftext|>`` (end of sequence and padding).

The pipeline (NFC normaliser, Qwen2's pre-tokenisation regex followed by ``ByteLevel`` without
a prefix space, BPE, ``ByteLevel`` decoder) is exactly the one transformers 5 rebuilds from
``vocab`` and ``merges`` when it loads a folder whose config says ``qwen2`` (it forces
``Qwen2Tokenizer`` on such folders and ignores the pre-tokenizer stored in ``tokenizer.json``),
so the saved files tokenise identically whichever way they are loaded.

Merge order matters for BPE: every merge whose left side starts with ``Ġ`` (a word preceded by
a space) ranks before every other merge, so a space-prefixed listed word always ends up as one
token. Words at the very start of a text (no space before them) fall back to byte-level
pieces and smaller merges; they are ordinary tokens like any other.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS = "<|bos|>"
EOS = "<|endoftext|>"

# Qwen2's pre-tokenisation regex, copied from transformers/models/qwen2/tokenization_qwen2.py.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character table (the ByteLevel alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _symbols(piece: str) -> list[str]:
    table = bytes_to_unicode()
    return [table[b] for b in piece.encode("utf-8")]


def vocab_form(piece: str) -> str:
    """The vocabulary spelling of a pre-tokenised piece (``" ^"`` -> ``"Ġ^"``); specials unchanged."""
    if piece in (BOS, EOS):
        return piece
    return "".join(_symbols(piece))


def build_vocab(pieces: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges that make every piece of ``pieces`` one token.

    ``pieces`` are pre-tokenised strings such as ``" the"`` or ``" ^"``; each becomes a left-to-right
    merge chain. Space-prefixed chains rank first (see the module docstring).
    """
    table = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for b in range(256):
        vocab[table[b]] = len(vocab)
    spaced = [p for p in pieces if p.startswith(" ")]
    bare = [p for p in pieces if not p.startswith(" ")]
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for piece in spaced + bare:
        syms = _symbols(piece)
        left = syms[0]
        for sym in syms[1:]:
            pair = (left, sym)
            left = left + sym
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            if left not in vocab:
                vocab[left] = len(vocab)
    for special in (EOS, BOS):
        vocab[special] = len(vocab)
    return vocab, merges


def build_tokenizer(pieces: list[str]):
    """A ``tokenizers.Tokenizer`` with the Qwen2 byte-level pipeline over :func:`build_vocab`.

    The post-processor prepends ``<|bos|>`` to every encoded text.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = build_vocab(pieces)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOS, special=True, normalized=False),
                            AddedToken(BOS, special=True, normalized=False)])
    bos_id = vocab[BOS]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)])
    return tok


def save_tokenizer(folder: str | Path, pieces: list[str], *, tokenizer_class: str) -> dict[str, int]:
    """Write tokenizer.json, vocab.json, merges.txt and tokenizer_config.json; return the vocab.

    ``tokenizer_class`` is what tokenizer_config.json declares: ``Qwen2Tokenizer`` for a qwen2
    folder (what transformers uses there anyway), ``TokenizersBackend`` elsewhere (loads
    tokenizer.json as is, like Llama-3 checkpoints).
    """
    folder = Path(folder)
    tok = build_tokenizer(pieces)
    vocab, merges = build_vocab(pieces)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    added = {str(vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True} for t in (EOS, BOS)}
    config = {
        "tokenizer_class": tokenizer_class,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "added_tokens_decoder": added,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS}, indent=2) + "\n", encoding="utf-8")
    return vocab
