"""What a new user meets first (issue 21): --overwrite, Ctrl-C, the experiment command's output and exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from typer.testing import CliRunner

from interventions.cli.main import app

from .conftest import REPO

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


# --------------------------------------------------------------------------------------------
# Ctrl-C works at every moment and leaves the manifest "interrupted" with the phase


def test_sigint_inside_a_bare_except_is_raised_after_the_block():
    """pyvene's model-card import catches everything in a bare except; the deferral re-raises after it."""
    import os
    import signal

    import pytest

    from interventions.interrupts import sigint_deferred

    reached_end_of_block = False
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            try:  # what pyvene does around each model card
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
            except:  # noqa: E722
                pass
            reached_end_of_block = True
    assert reached_end_of_block
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def _start_run(tmp_path, cache_dir, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "INTERVENTIONS_CACHE": str(cache_dir), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "interventions.cli.main", "run", str(REPO / "specs/norm_scale.yaml"),
                             "--quiet", *map(str, args)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _interrupt_when(proc, manifest, ready, timeout=240.0):
    """Send SIGINT once ``ready(manifest data)`` holds; returns (exit code, stderr)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            data = None
        if data is not None and ready(data):
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_ctrl_c_during_start_up_stops_the_run(tmp_path, cache_dir, planted):
    out = tmp_path / "run"
    proc = _start_run(tmp_path, cache_dir, "--out", out)
    time.sleep(4)  # importing torch, transformers, pyvene, checking the spec (~8 s before the folder exists)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # stopped, not run to completion
    assert not (out / "manifest.json").exists()
    if "Traceback" not in err:  # (a signal before the command line's own code runs ends in Python's traceback)
        assert err.strip().splitlines()[-1] == "interrupted before any result was written; run the same command again"


def test_ctrl_c_during_conditions_and_statistics_marks_the_manifest_and_says_how_to_resume(tmp_path, cache_dir,
                                                                                               planted):
    out = tmp_path / "run"
    cache = cache_dir
    manifest = out / "manifest.json"
    code, err = _interrupt_when(_start_run(tmp_path, cache, "--out", out), manifest,
                                lambda m: m.get("status") == "running" and len(m.get("traces_completed", [])) >= 1)
    assert code == 130, err
    data = json.loads(manifest.read_text())
    assert (data["status"], data["phase"]) == ("interrupted", "conditions"), data
    assert 1 <= len(data["traces_completed"]) < 8
    hint = err[err.index("Continue with: ") + len("Continue with: "):].split()
    assert hint[-2:] == ["--resume", str(out)] and "--out" not in hint, err

    # resume, and stop it again while it computes the statistics
    code, err = _interrupt_when(_start_run(tmp_path, cache, "--resume", out), manifest,
                                lambda m: m.get("status") == "analyzing")
    assert code == 130, err
    data = json.loads(manifest.read_text())
    assert (data["status"], data["phase"]) == ("interrupted", "statistics"), data
    assert len(data["traces_completed"]) == 8


# --------------------------------------------------------------------------------------------
# intervene experiment: testbed expectations decide the exit code; real-model studies are findings


def _study_folder(tmp_path, planted):
    """Three studies: a testbed one with a wrong expectation, a real-model one (the planted model's
    folder standing in for a cached real model) with an expectation it misses, and one whose model is
    not cached."""
    import yaml

    root = tmp_path / "studies"
    wrong = yaml.safe_load((REPO / "experiments/sink_levels/experiment.yaml").read_text())
    wrong.pop("real")
    wrong["name"] = "wrong"
    wrong["planted"]["limit"] = 2
    wrong["expect"]["checks"] = ["modal_l_start == 4", "n_traces == 3"]  # 2 traces: the second check fails
    (root / "wrong").mkdir(parents=True)
    (root / "wrong/experiment.yaml").write_text(yaml.safe_dump(wrong))
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                              ["the cat sat on the mat and looked at the door for a while",
                               "one two three four five six seven eight nine ten eleven twelve"]))
    finding = {"name": "finding", "claim": "c", "kind": "known_answers",
               "real": {"tiny": {"model": str(planted.source.path), "traces": str(traces), "limit": 2,
                                 "dtype": "float32", "device": "cpu",
                                 "expect": {"checks": ["models.tiny.summary.set_zero_delta_nll >= 1000"]}}},
               "expect": {"checks": ["models.tiny.summary.set_zero_delta_nll >= 1000"]}}
    (root / "finding").mkdir()
    (root / "finding/experiment.yaml").write_text(yaml.safe_dump(finding))
    uncached = dict(finding, name="uncached", real={"smollm2": {**finding["real"]["tiny"],
                                                                "model": str(tmp_path / ".cache/real/smollm2")}})
    (root / "uncached").mkdir()
    (root / "uncached/experiment.yaml").write_text(yaml.safe_dump(uncached))
    return root


def test_experiment_exit_code_follows_testbed_expectations_and_findings_never_fail(tmp_path, planted):
    root = _study_folder(tmp_path, planted)
    r = runner.invoke(app, ["experiment", str(root), "--results", str(tmp_path / "results"), "--json"])
    assert r.exit_code == 1, r.output  # the testbed study's wrong expectation
    doc = json.loads(r.stdout)
    assert [s["name"] for s in doc["expectations"]] == ["wrong"] and doc["failed"] == ["wrong"]
    assert [s["name"] for s in doc["findings"]] == ["finding"]  # ran although a testbed study failed
    assert doc["findings"][0]["as_expected"] is False and doc["differs_from_literature"] == ["finding"]
    assert [s["name"] for s in doc["skipped"]] == ["uncached"]
    assert "intervene testbed fetch-gguf" in doc["skipped"][0]["reason"]
    assert "intervene testbed fetch-gguf" in r.stderr

    # the finding alone: it differs from its expectation, and the command still exits 0
    import shutil

    shutil.rmtree(root / "wrong")
    r = runner.invoke(app, ["experiment", str(root), "--results", str(tmp_path / "results")], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "Real-model studies: findings, compared with the literature (never a failure)"
    assert any(line.startswith("finding (known_answers, real models):") for line in lines), r.stdout
    assert not any(c in r.stdout for c in "│┃━─╭"), "redirected: plain text, no box"
    path = str(tmp_path / "results")
    assert any(path in line and line.endswith("experiment.json") for line in lines), "a path is never split"
    assert "differs from the literature (a finding)" in r.stdout


# --------------------------------------------------------------------------------------------
# one output rule: results on stdout, --json wherever a command prints results


RESULT_VERBS = ("detect", "run", "stats", "report", "experiment", "compare", "compare-runs", "heads", "validate")


def test_every_verb_that_prints_results_has_json():
    import click
    import typer

    group = typer.main.get_command(app)
    ctx = click.Context(group)
    for verb in RESULT_VERBS:
        options = {o for p in group.get_command(ctx, verb).params for o in p.opts}
        assert "--json" in options, verb


def test_validate_and_heads_print_json_on_stdout(tmp_path, cache_dir):
    r = runner.invoke(app, ["validate", str(REPO / "specs/norm_scale.yaml"), "--no-model", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    # 5 scale conditions and the 5 noise placebos H2 declares beside them
    assert doc["ok"] is True and len(doc["conditions"]) == 10 and doc["spec_hash"]
    out = tmp_path / "heads"
    r = runner.invoke(app, ["heads", "testbed:planted", "--generate", "random_tokens", "--n", "2", "--length", "16",
                            "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["out"] == str(out) and set(doc["shares"]) == {"sink", "dormant", "other"}
    assert f"wrote {out}" in r.stderr and "wrote" not in r.stdout


# --------------------------------------------------------------------------------------------
# errors name the field, what was given and the fix


def test_missing_model_folders_say_the_fix(tmp_path):
    traces = _traces(tmp_path)
    real = tmp_path / ".cache" / "real" / "smollm2-135m-instruct"
    r = runner.invoke(app, ["detect", "--model", str(real), "--traces", str(traces), "--out", str(tmp_path / "o1")])
    assert r.exit_code == 2
    assert r.output.strip() == (f"error: model: model folder {real} does not exist — fetch it with "
                                "`intervene testbed fetch-gguf` (caches the GGUF real models in .cache/real/)")
    other = tmp_path / "models" / "mine"
    r = runner.invoke(app, ["detect", "--model", str(other), "--traces", str(traces), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "fetch-gguf" not in r.output
    assert r.output.strip().endswith("— give an existing model folder (with config.json), a .gguf file, a hub id "
                                     "or testbed:planted")


def test_trace_errors_follow_the_documented_format(tmp_path):
    import re

    bad = tmp_path / "bad.jsonl"
    for content in ("{not json\n", "[1]\n", json.dumps({"title": "x"}) + "\n", json.dumps({"prompt": "p"}) + "\n",
                    "\n"):
        bad.write_text(content)
        r = runner.invoke(app, ["detect", "--model", "testbed:planted", "--traces", str(bad), "--out",
                                str(tmp_path / "o")])
        assert r.exit_code == 2
        assert re.fullmatch(r"error: traces: \S.* — \S.*", r.output.strip()), r.output


# --------------------------------------------------------------------------------------------
# "complete" means stats.json is written


def test_no_report_writes_the_statistics_and_is_complete(tmp_path, cache_dir):
    out = tmp_path / "run"
    r = runner.invoke(app, ["run", str(REPO / "specs/norm_scale.yaml"), "--out", str(out), "--no-report", "--json"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert (out / "stats.json").is_file() and not (out / "report.md").exists()
    assert json.loads(r.stdout)["verdicts"]["H2/mlp_output/l_start/sinks"]["verdict"] == "supported"


def test_a_run_without_statistics_ends_tables_until_stats_are_computed(tmp_path, cache_dir):
    import yaml

    from interventions import run_spec

    data = yaml.safe_load((REPO / "specs/norm_scale.yaml").read_text())
    data.update(limit=2)
    spec = tmp_path / "small.yaml"
    spec.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    run_spec(str(spec), run_dir=out, report=False, progress=False)
    assert json.loads((out / "manifest.json").read_text())["status"] == "tables"
    assert not (out / "stats.json").exists()
    r = runner.invoke(app, ["stats", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert (out / "stats.json").is_file()
