"""Trace files: both formats, chat templates, prompt length after templating, truncation, BOS."""

from __future__ import annotations

import json

import pytest

from interventions.errors import UserError
from interventions.spec.traces import load_traces, tokenize_record
from interventions.testbed.tokenizer_bytes import byte_tokenizer

TEMPLATE = ("{% for m in messages %}<|bos|>[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


@pytest.fixture
def tok():
    t = byte_tokenizer()
    t.chat_template = TEMPLATE
    return t


def write(tmp_path, rows):
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_text_and_paper_formats(tmp_path, tok):
    path = write(tmp_path, [{"text": "abc"}, {"prompt": "Q?", "output": " A.", "id": 7}])
    a, b = load_traces(path, tok)
    assert a.token_ids == tok("abc")["input_ids"] and len(a.token_ids) == 3  # this tokenizer adds no BOS
    assert a.prompt_tokens is None and a.bos_policy == "tokenizer"
    assert b.trace_id == "7" and b.prompt_tokens == 2  # "Q?"
    assert tok.decode(b.token_ids[b.prompt_tokens:]) == " A."


def test_a_tokenizer_that_adds_bos_keeps_it_and_one_that_does_not_gets_none(tmp_path, tok):
    from tokenizers import processors

    path = write(tmp_path, [{"text": "abc"}])
    (plain,) = load_traces(path, tok)
    assert tok.bos_token_id not in plain.token_ids  # never inserted: the tokenizer would not add it
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", tok.bos_token_id)])
    (with_bos,) = load_traces(path, tok)
    assert with_bos.token_ids == [tok.bos_token_id] + plain.token_ids
    (never,) = load_traces(path, tok, prepend_bos="never")
    assert never.token_ids == plain.token_ids and never.bos_policy == "removed"


def test_prompt_length_is_counted_after_the_chat_template(tok):
    ids, prompt_tokens = tokenize_record({"prompt": "Q?", "output": "A"}, tok, chat_template=True)
    templated = "<|bos|>[user]Q?[assistant]"
    assert prompt_tokens == len(tok(templated, add_special_tokens=False)["input_ids"])
    assert prompt_tokens > len("Q?") + 1  # the paper's code counted the raw prompt instead
    assert tok.decode(ids[prompt_tokens:]) == "A"
    assert ids.count(tok.bos_token_id) == 1  # the template's BOS is not doubled


def test_chat_template_missing_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="has no chat template"):
        load_traces(write(tmp_path, [{"text": "x"}]), byte_tokenizer(), chat_template=True)


def test_max_tokens_truncates_with_a_warning_and_limit_takes_the_first(tmp_path, tok):
    path = write(tmp_path, [{"text": "abcdefgh"}, {"text": "xy"}, {"text": "zz"}])
    traces = load_traces(path, tok, max_tokens=4, limit=2)
    assert len(traces) == 2 and [t.length for t in traces] == [4, 2]
    assert traces[0].original_length == 8 and "truncated from 8 to 4" in traces[0].warnings[0]
    assert not traces[1].warnings


@pytest.mark.parametrize("mode,starts_with_bos", [("auto", False), ("always", True), ("never", False)])
def test_bos_rule(tok, mode, starts_with_bos):
    ids, _ = tokenize_record({"text": "a"}, tok, prepend_bos=mode)
    assert (ids[0] == tok.bos_token_id) == starts_with_bos
    assert ids[-1] == tok("a", add_special_tokens=False)["input_ids"][0]
    ids2, _ = tokenize_record({"text": "<|bos|>a"}, tok, prepend_bos="always")
    assert ids2.count(0) == 1  # already there: not prepended twice


def test_bad_bos_mode_is_a_clear_error(tok):
    with pytest.raises(UserError, match="prepend_bos"):
        tokenize_record({"text": "a"}, tok, prepend_bos="sometimes")


def test_tokenizer_policy_is_recorded(tok):
    from interventions.spec.traces import tokenizer_policy

    policy = tokenizer_policy(tok, chat_template=False, prepend_bos="auto")
    assert policy["tokenizer_adds_bos"] is False and policy["bos_token"] == "<|bos|>"
