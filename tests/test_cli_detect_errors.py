"""Bad input to `intervene detect`: one clear error line, exit code 2, nothing written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from interventions.cli.main import app

runner = CliRunner()


@pytest.fixture
def good_traces(tmp_path):
    p = tmp_path / "traces.jsonl"
    p.write_text(json.dumps({"text": "hello world"}) + "\n")
    return p


def run_detect(*args):
    return runner.invoke(app, ["detect", *map(str, args)])


def assert_one_error(result, needle: str, out):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert needle in lines[0], lines[0]
    assert not out.exists(), "nothing may be written on bad input"


def test_unknown_model_folder(tmp_path, good_traces):
    out = tmp_path / "out"
    r = run_detect("--model", tmp_path / "no-such-model", "--traces", good_traces, "--out", out)
    assert_one_error(r, "does not exist", out)


def test_model_folder_without_config(tmp_path, good_traces):
    (tmp_path / "empty-model").mkdir()
    out = tmp_path / "out"
    r = run_detect("--model", tmp_path / "empty-model", "--traces", good_traces, "--out", out)
    assert_one_error(r, "has no config.json", out)


def test_trace_file_missing(tmp_path):
    out = tmp_path / "out"
    r = run_detect("--model", "testbed:planted", "--traces", tmp_path / "missing.jsonl", "--out", out)
    assert_one_error(r, "does not exist", out)


def test_trace_file_empty(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = tmp_path / "out"
    assert_one_error(run_detect("--model", "testbed:planted", "--traces", empty, "--out", out), "is empty", out)


def test_trace_line_without_text(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"title": "no text"}) + "\n")
    out = tmp_path / "out"
    r = run_detect("--model", "testbed:planted", "--traces", bad, "--out", out)
    assert_one_error(r, "line 2 has no non-empty 'text'", out)


def test_trace_line_not_json(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    out = tmp_path / "out"
    assert_one_error(run_detect("--model", "testbed:planted", "--traces", bad, "--out", out), "line 1 is not JSON", out)


def test_max_tokens_below_two(tmp_path, good_traces):
    out = tmp_path / "out"
    r = run_detect("--model", "testbed:planted", "--traces", good_traces, "--out", out, "--max-tokens", "1")
    assert_one_error(r, "max_tokens is 1", out)


def test_existing_output_needs_overwrite_or_resume(tmp_path, good_traces):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    r = run_detect("--model", "testbed:planted", "--traces", good_traces, "--out", out)
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (out / "keep.txt").read_text() == "old"
