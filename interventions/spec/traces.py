"""Reading trace files and turning them into token ids exactly as the model will see them.

Accepted JSONL lines: ``{"text": ...}`` or the paper's ``{"prompt": ..., "output": ...}``.
With ``chat_template`` the prompt (or text) becomes the user turn of the tokenizer's chat
template with the generation prompt appended, and the output follows, as the paper does.
``prompt_tokens`` is counted *after* templating (the paper's own code counts before).

Tokenisation follows the tokenizer: plain text is encoded with the tokenizer's own special-token
policy (``add_special_tokens=True``: a Llama or Gemma tokenizer adds its BOS, a Qwen tokenizer adds
nothing), templated text exactly as ``apply_chat_template`` renders it (the template writes its
own special tokens; none are added on top). Nothing is inserted that the tokenizer would not
insert: a model then sees at position 0 what it saw there in training (a BOS a Qwen model never
saw at position 0 is not a sink, and it pushes the real sink, e.g. ``<|im_start|>``, to position
1). ``prepend_bos`` overrides this for users who want it: ``always`` makes sure the sequence
starts with the tokenizer's BOS, ``never`` removes a leading BOS, ``auto`` (default) does what
the tokenizer does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from interventions.errors import UserError


@dataclass
class Trace:
    """One tokenized trace."""

    index: int
    """0-based order of the trace in the file (after ``limit``); the ``trace`` column everywhere."""
    token_ids: list[int]
    trace_id: str | None = None
    """The record's own ``id`` (or ``sample_idx``) when it has one."""
    prompt_tokens: int | None = None
    """Tokens belonging to the (templated) prompt; None for plain ``text`` records."""
    original_length: int = 0
    """Length before ``max_tokens`` truncation."""
    warnings: list[str] = field(default_factory=list)
    bos_policy: str = "auto"
    """What was applied at the start: ``tokenizer`` (as the tokenizer encodes), ``prepended``
    (``always`` added a BOS), ``removed`` (``never`` dropped one)."""

    @property
    def length(self) -> int:
        return len(self.token_ids)


def read_trace_records(path: str | Path, *, limit: int | None = None) -> list[dict]:
    """Parse and check a JSONL trace file; one clear error line for each way it can be wrong."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"trace file {path} does not exist — give a JSONL file with one {{\"text\": ...}} object "
                        "per line", field="traces")
    records: list[dict] = []
    try:
        with p.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path} line {lineno} is not JSON ({exc.msg}) — each line must be one JSON "
                                    'object like {"text": "..."}', field="traces") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path} line {lineno} is not a JSON object — use {{\"text\": \"...\"}}",
                                    field="traces")
                has_text = isinstance(record.get("text"), str) and record["text"]
                has_prompt = isinstance(record.get("prompt"), str) and record["prompt"]
                if not (has_text or has_prompt):
                    raise UserError(f"{path} line {lineno} has no non-empty 'text' (or 'prompt' + 'output') field "
                                    '— give {"text": "..."} or {"prompt": "...", "output": "..."}',
                                    field="traces")
                if not has_text and not isinstance(record.get("output"), str):
                    raise UserError(f"{path} line {lineno} has a 'prompt' but no 'output' text — add the model's "
                                    "output (\"output\": \"...\") or give the whole trace as 'text'", field="traces")
                records.append(record)
                if limit is not None and len(records) >= limit:
                    break
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (line {len(records) + 1} or later has bytes that cannot be "
                        'decoded) — give a JSONL file with one {"text": ...} object per line',
                        field="traces") from None
    if not records:
        raise UserError(f"trace file {path} is empty — it needs one JSON object per line", field="traces")
    return records


def _template(tokenizer, user_text: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("chat_template was requested but this tokenizer has no chat template — "
                        "drop --chat-template / set chat_template: false", field="chat_template")
    return tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                         add_generation_prompt=True)


def _encode(tokenizer, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


BOS_MODES = ("auto", "always", "never")


def tokenize_record(record: dict, tokenizer, *, chat_template: bool = False, prepend_bos: str = "auto"
                    ) -> tuple[list[int], int | None]:
    """Token ids of one record and its prompt length in tokens (None for ``text`` records).

    ``prepend_bos``: ``auto`` encodes as the tokenizer itself does (its own BOS policy, or the
    chat template's tokens); ``always`` prepends the tokenizer's BOS when the ids do not start
    with it; ``never`` drops a leading BOS the tokenizer added.
    """
    ids, prompt_tokens, _ = _tokenize(record, tokenizer, chat_template=chat_template, prepend_bos=prepend_bos)
    return ids, prompt_tokens


def _tokenize(record: dict, tokenizer, *, chat_template: bool, prepend_bos: str) -> tuple[list[int], int | None, str]:
    if "generate" in record:  # a generated trace (interventions.spec.trace_sources): ids, not text
        from .trace_sources import GeneratedTraces, generated_ids

        source = GeneratedTraces(record["generate"], length=record["length"], n=record["index"] + 1,
                                 seed=record["seed"])
        return generated_ids(tokenizer, source, record["index"]), None, "generated: the tokenizer's special prefix"
    if prepend_bos not in BOS_MODES:
        raise UserError(f"prepend_bos is {prepend_bos!r} — use one of {', '.join(BOS_MODES)}", field="prepend_bos")
    prompt = record.get("prompt")
    if prompt is None:
        text = record["text"]
        if chat_template:
            ids = _encode(tokenizer, _template(tokenizer, text), special=False)
        else:
            ids = _encode(tokenizer, text, special=True)
        prompt_tokens = None
    else:
        head = _template(tokenizer, prompt) if chat_template else prompt
        prompt_ids = _encode(tokenizer, head, special=not chat_template)
        # Tokenize prompt + output together so merges across the seam match what the model saw.
        ids = _encode(tokenizer, head + record.get("output", ""), special=not chat_template)
        prompt_tokens = len(prompt_ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    policy = "tokenizer"
    if prepend_bos == "always":
        if bos is None:
            raise UserError("prepend_bos is 'always' but this tokenizer defines no BOS token — use auto",
                            field="prepend_bos")
        if not ids or ids[0] != bos:
            ids = [bos] + ids
            prompt_tokens = None if prompt_tokens is None else prompt_tokens + 1
            policy = "prepended"
    elif prepend_bos == "never" and bos is not None and ids and ids[0] == bos:
        ids = ids[1:]
        prompt_tokens = None if prompt_tokens is None else prompt_tokens - 1
        policy = "removed"
    return ids, prompt_tokens, policy


def tokenizer_policy(tokenizer, *, chat_template: bool, prepend_bos: str) -> dict:
    """What the manifest records about tokenisation: the mode, and what the tokenizer itself does."""
    probe = list(tokenizer("x", add_special_tokens=True)["input_ids"])
    bare = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    return {"prepend_bos": prepend_bos, "chat_template": chat_template,
            "special_tokens": "from the chat template" if chat_template else "the tokenizer's own (add_special_tokens)",
            "bos_token": getattr(tokenizer, "bos_token", None), "bos_token_id": bos,
            "tokenizer_adds_bos": bool(bos is not None and probe[:1] == [bos] and bare[:1] != [bos]),
            "tokenizer_adds": len(probe) - len(bare)}


def load_traces(path, tokenizer, *, limit: int | None = None, max_tokens: int | None = None,
                chat_template: bool = False, prepend_bos: str = "auto") -> list[Trace]:
    """Read, template, tokenize and truncate traces. Truncation adds a warning to the trace.

    ``prepend_bos``: ``auto`` (the tokenizer's own policy), ``always`` or ``never`` (see the module docstring).
    """
    if max_tokens is not None and max_tokens < 2:
        raise UserError(f"max_tokens is {max_tokens} — it must be at least 2 (a sink needs a later query)",
                        field="max_tokens")
    if limit is not None and limit < 1:
        raise UserError(f"limit is {limit} — it must be at least 1", field="limit")
    records = read_trace_records(path, limit=limit)
    return traces_from_records(records, tokenizer, max_tokens=max_tokens, chat_template=chat_template,
                               prepend_bos=prepend_bos)


def traces_from_records(records: list[dict], tokenizer, *, max_tokens: int | None = None,
                        chat_template: bool = False, prepend_bos: str = "auto") -> list[Trace]:
    traces = []
    for i, record in enumerate(records):
        ids, prompt_tokens, policy = _tokenize(record, tokenizer, chat_template=chat_template, prepend_bos=prepend_bos)
        trace = Trace(index=i, token_ids=ids, trace_id=str(record.get("id", record.get("sample_idx", i))),
                      prompt_tokens=prompt_tokens, original_length=len(ids), bos_policy=policy)
        if max_tokens is not None and len(ids) > max_tokens:
            trace.token_ids = ids[:max_tokens]
            trace.warnings.append(f"trace {i} truncated from {len(ids)} to {max_tokens} tokens (max_tokens)")
        traces.append(trace)
    return traces


def write_traces(texts: list[str], path: str | Path) -> Path:
    """Write plain texts as a ``{"text": ...}`` JSONL file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return p


def generate_traces(tokenizer, source) -> list[Trace]:
    """The traces of a generated source (:class:`interventions.spec.trace_sources.GeneratedTraces`):
    Gu et al.'s input controls (random tokens, one repeated token), reproducibly from its seed."""
    from .trace_sources import generated_records

    return traces_from_records(generated_records(source), tokenizer)


def check_trace_lengths(traces: list[Trace], loaded_or_dims) -> None:
    """Refuse a trace longer than the model takes (one line naming ``max_tokens``); ``loaded_or_dims`` is a
    :class:`~interventions.models.load.LoadedModel` or its ``dims`` dict."""
    dims = getattr(loaded_or_dims, "dims", loaded_or_dims)
    limit = dims.get("max_positions") or 0
    for tr in traces:
        if limit and tr.length > limit:
            raise UserError(f"trace {tr.index} has {tr.length} tokens but the model takes at most {limit}; "
                            f"set max_tokens to {limit} or less", field="traces")
