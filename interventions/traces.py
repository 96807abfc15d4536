"""Reading trace files and turning them into token ids exactly as the model will see them.

Accepted JSONL lines: ``{"text": ...}`` or the paper's ``{"prompt": ..., "output": ...}``.
With ``chat_template`` the prompt (or text) becomes the user turn of the tokenizer's chat
template with the generation prompt appended, and the output follows, as the paper does.
``prompt_tokens`` is counted *after* templating (the paper's own code counts before).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError


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

    @property
    def length(self) -> int:
        return len(self.token_ids)


def read_trace_records(path: str | Path, *, limit: int | None = None) -> list[dict]:
    """Parse and check a JSONL trace file; one clear error line for each way it can be wrong."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"trace file {path} does not exist", field="traces")
    records: list[dict] = []
    try:
        with p.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path} line {lineno} is not JSON ({exc.msg}); each line must be one JSON object "
                                    'like {"text": "..."}', field="traces") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path} line {lineno} is not a JSON object; use {{\"text\": \"...\"}}", field="traces")
                has_text = isinstance(record.get("text"), str) and record["text"]
                has_prompt = isinstance(record.get("prompt"), str) and record["prompt"]
                if not (has_text or has_prompt):
                    raise UserError(f"{path} line {lineno} has no non-empty 'text' (or 'prompt' + 'output') field",
                                    field="traces")
                if not has_text and not isinstance(record.get("output"), str):
                    raise UserError(f"{path} line {lineno} has a 'prompt' but no 'output' text; add the model's output "
                                    "(\"output\": \"...\") or give the whole trace as 'text'", field="traces")
                records.append(record)
                if limit is not None and len(records) >= limit:
                    break
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (line {len(records) + 1} or later has bytes that cannot be "
                        'decoded); give a JSONL file with one {"text": ...} object per line', field="traces") from None
    if not records:
        raise UserError(f"trace file {path} is empty; it needs one JSON object per line", field="traces")
    return records


def _template(tokenizer, user_text: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("chat_template was requested but this tokenizer has no chat template; "
                        "drop --chat-template / set chat_template: false", field="chat_template")
    return tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                         add_generation_prompt=True)


def _encode(tokenizer, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def tokenize_record(record: dict, tokenizer, *, chat_template: bool = False, prepend_bos: str = "auto"
                    ) -> tuple[list[int], int | None]:
    """Token ids of one record and its prompt length in tokens (None for ``text`` records).

    ``prepend_bos``: ``auto`` prepends the tokenizer's BOS token when it defines one and the
    ids do not already start with it (as TransformerLens does); ``always``/``never`` force it.
    """
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
    if bos is not None and prepend_bos != "never" and (prepend_bos == "always" or not ids or ids[0] != bos):
        ids = [bos] + ids
        prompt_tokens = None if prompt_tokens is None else prompt_tokens + 1
    return ids, prompt_tokens


def load_traces(path, tokenizer, *, limit: int | None = None, max_tokens: int | None = None,
                chat_template: bool = False, prepend_bos: str = "auto") -> list[Trace]:
    """Read, template, tokenize and truncate traces. Truncation adds a warning to the trace."""
    if max_tokens is not None and max_tokens < 2:
        raise UserError(f"max_tokens is {max_tokens}; it must be at least 2 (a sink needs a later query)",
                        field="max_tokens")
    if limit is not None and limit < 1:
        raise UserError(f"limit is {limit}; it must be at least 1", field="limit")
    records = read_trace_records(path, limit=limit)
    return traces_from_records(records, tokenizer, max_tokens=max_tokens, chat_template=chat_template,
                               prepend_bos=prepend_bos)


def traces_from_records(records: list[dict], tokenizer, *, max_tokens: int | None = None,
                        chat_template: bool = False, prepend_bos: str = "auto") -> list[Trace]:
    traces = []
    for i, record in enumerate(records):
        ids, prompt_tokens = tokenize_record(record, tokenizer, chat_template=chat_template, prepend_bos=prepend_bos)
        trace = Trace(index=i, token_ids=ids, trace_id=str(record.get("id", record.get("sample_idx", i))),
                      prompt_tokens=prompt_tokens, original_length=len(ids))
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
