"""What the commands say and write: results on stdout (tables or --json), report only on run or detect
folders, "complete" only after statistics, --resume says what it skips, skipped targets are counted,
files follow the umask, flags carry no <bool> placeholder."""

from __future__ import annotations

import json
import os
import stat

import pytest
import yaml
from typer.testing import CliRunner

from interventions.cli.main import app

runner = CliRunner()
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, cache_dir):
    from interventions.testbed.tiny import save_tiny

    root = tmp_path_factory.mktemp("surfaces")
    save_tiny("qwen2", root / "tiny", layers=3)
    (root / "traces.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return root


def write_spec(tmp, tiny, **over):
    spec = {"name": "surf", "model": str(tiny / "tiny"), "traces": str(tiny / "traces.jsonl"), "dtype": "float32",
            "targets": {"fixed": {"select": "positions", "positions": [3, 5]}},
            "interventions": [{"kind": "scale", "site": "mlp_output", "layer": 1, "targets": ["fixed"],
                               "factors": [2]}], "report": False, **over}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_tables_on_stdout_and_json(tiny, tmp_path):
    spec = write_spec(tmp_path, tiny)
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "r1"), "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "r2")])
    assert "clean vs intervened" in result.stdout and "scale.mlp_output.L1.x2" in result.stdout
    assert "clean vs intervened" not in result.stderr and "wrote" in result.stderr
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "r3"), "--json"])
    doc = json.loads(result.stdout)
    assert doc["summary"][0]["condition"] == "scale.mlp_output.L1.x2" and doc["out"].endswith("r3")


def test_files_follow_the_umask(tiny, tmp_path):
    spec = write_spec(tmp_path, tiny)
    old = os.umask(0o022)
    try:
        assert runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "r"), "-q"]).exit_code == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    result = runner.invoke(app, ["report", str(tmp_path / "stuff")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: run_dir:"), result.output
    result = runner.invoke(app, ["stats", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_report_on_a_detect_folder_is_a_detection_report(tiny, tmp_path):
    out = tmp_path / "det"
    result = runner.invoke(app, ["detect", "--model", str(tiny / "tiny"), "--traces", str(tiny / "traces.jsonl"),
                                 "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text()
    assert text.startswith("# Sink detection") and "2 traces" in text and "model |" not in text.replace(
        f"| model | {tiny / 'tiny'} |", "")
    result = runner.invoke(app, ["stats", str(out)])
    assert result.exit_code == 2 and "written by `intervene detect`" in result.output


def test_complete_only_after_statistics(tiny, tmp_path, monkeypatch):
    from interventions import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("killed during statistics")

    monkeypatch.setattr(pipeline, "analyze_run", broken)
    spec = write_spec(tmp_path, tiny, report=True)
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code != 0
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "statistics" in manifest["error"]


def test_resume_says_what_it_reuses_and_skips(tiny, tmp_path):
    spec = write_spec(tmp_path, tiny)
    run = tmp_path / "r"
    assert runner.invoke(app, ["run", str(spec), "--out", str(run), "-q"]).exit_code == 0
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["traces_completed"] = [0]
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "effects.parquet" / "part-00001.parquet").unlink()
    result = runner.invoke(app, ["run", str(spec), "--resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert "clean pass reused from clean_sinks.jsonl; skipping 1 of 2 traces already done (0); running 1" \
        in result.stderr


def test_skipped_targets_are_counted_and_reported(tiny, tmp_path):
    spec = write_spec(tmp_path, tiny, interventions=[
        {"kind": "scale", "site": "mlp_output", "layer": 1, "targets": ["fixed"], "factors": [2]},
        {"kind": "attention_mask", "layers": "sink_lifetime", "targets": ["fixed"]}])
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    (cid,) = [c for c in manifest["skipped_targets"] if c.startswith("attention_mask")]
    assert sum(manifest["skipped_targets"][cid].values()) == 4  # 2 positions x 2 traces
    assert f"{cid}: 4 target(s) skipped" in result.stderr


def test_flags_show_no_bool_placeholder():
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "160"})
    assert "--overwrite" in result.output and "<bool>" not in result.output


def test_one_flag_scheme_across_verbs():
    run_help = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    detect_help = runner.invoke(app, ["detect", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--out", "--resume", "--overwrite", "--json"):
        assert flag in run_help and flag in detect_help, flag
    assert "--attn-implementation" in detect_help
