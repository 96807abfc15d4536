"""What a new user meets first (issue 21): --overwrite, Ctrl-C, the experiment command's output and exit code."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from interventions.cli.main import app

runner = CliRunner()


def _detect(out, traces, *extra):
    return runner.invoke(app, ["detect", "--model", "testbed:planted", "--traces", str(traces), "--out", str(out),
                               "--quiet", *map(str, extra)])


def _traces(tmp_path):
    p = tmp_path / "traces.jsonl"
    p.write_text(json.dumps({"text": "hello ^ world # and @ more"}) + "\n")
    return p


# --------------------------------------------------------------------------------------------
# --overwrite removes only what this tool wrote


def test_overwrite_refuses_a_folder_of_user_files(tmp_path, cache_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = _detect(out, _traces(tmp_path), "--overwrite")
    assert r.exit_code == 2, r.output
    assert "notes.txt" in r.output and "no manifest.json" in r.output
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_a_detect_folder_but_not_a_users_file_in_it(tmp_path, cache_dir):
    out, traces = tmp_path / "out", _traces(tmp_path)
    assert _detect(out, traces).exit_code == 0
    stale = out / "levels.csv"
    stale.write_text("stale")
    r = _detect(out, traces, "--overwrite")  # only the tool's files: replaced
    assert r.exit_code == 0, r.output
    assert stale.read_text() != "stale"
    (out / "notes.txt").write_text("mine")
    (out / "levels.csv").write_text("stale")
    r = _detect(out, traces, "--overwrite")
    assert r.exit_code == 2, r.output
    assert "notes.txt" in r.output and "did not write" in r.output and "levels.csv" not in r.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "levels.csv").read_text() == "stale"
