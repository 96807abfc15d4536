"""Crash safety, determinism and data-parallel runs, on the planted model (6 traces, 5 conditions).

* SIGKILL mid-run, then ``intervene run SPEC --resume RUN_DIR``: the tables equal an uninterrupted run;
* the same spec and seed on CPU gives identical tables run to run;
* ``torchrun --nproc_per_node 2`` (gloo, CPU) gives the single-process tables, merged by rank 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from interventions.cli.main import app
from interventions.pipeline import run_spec
from interventions.run.distributed import Ranks, ranks_from_env

pytestmark = pytest.mark.slow

N_TRACES = 6
SPEC = f"""\
name: resume_check
model: testbed:planted
traces: testbed
limit: {N_TRACES}
dtype: float32
seed: 3
report: false
targets:
  sinks: {{select: secondary_sinks}}
  weak: {{select: tokens, tokens: [" ~"]}}
  ctrl: {{select: matched_controls, match: sinks, seed: 0}}
interventions:
  - {{kind: scale, site: mlp_output, layer: l_start, targets: [weak], factors: [2, 5, 10]}}
  - {{kind: zero, site: mlp_output, layer: l_start, targets: [sinks], controls: ctrl}}
  - {{kind: attention_mask, layers: sink_lifetime, targets: [sinks], controls: ctrl, redirect: bos}}
"""
KEYS = {"effects.parquet": ["condition", "is_control", "trace", "position", "layer"],
        "downstream.parquet": ["condition", "is_control", "trace", "position"],
        "sink_layers.parquet": ["trace", "position", "layer"], "clean_profile.parquet": ["trace", "layer"]}


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory, cache_dir) -> Path:
    p = tmp_path_factory.mktemp("spec") / "resume_check.yaml"
    p.write_text(SPEC)
    return p


@pytest.fixture(scope="module")
def reference(spec_file, tmp_path_factory) -> Path:
    """An uninterrupted single-process run."""
    return run_spec(spec_file, run_dir=tmp_path_factory.mktemp("ref") / "run", progress=False).out


def tables(run: Path) -> dict[str, pd.DataFrame]:
    out = {name: pd.read_parquet(run / name).sort_values(keys).reset_index(drop=True) for name, keys in KEYS.items()}
    summary = pd.read_csv(run / "summary.csv")
    out["summary.csv"] = summary.sort_values(["condition", "is_control"]).reset_index(drop=True)
    out["clean_sinks.jsonl"] = pd.read_json(run / "clean_sinks.jsonl", lines=True)
    return out


def assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = tables(a), tables(b)
    assert len(ta["effects.parquet"]) > 0 and set(ta["effects.parquet"].trace) == set(range(N_TRACES))
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)


def test_same_spec_and_seed_give_identical_tables(spec_file, reference, tmp_path):
    again = run_spec(spec_file, run_dir=tmp_path / "run", progress=False).out
    assert_same_tables(reference, again)


def test_sigkill_then_resume_equals_an_uninterrupted_run(spec_file, reference, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "interventions.cli.main", "run", str(spec_file), "--run-dir",
                             str(run), "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done: list[int] = []
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "manifest.json").exists():
                done = json.loads((run / "manifest.json").read_text())["traces_completed"]
                if len(done) >= 2:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    manifest = json.loads((run / "manifest.json").read_text())
    assert 2 <= len(manifest["traces_completed"]) < N_TRACES and manifest["status"] == "running"
    assert not (run / "summary.csv").exists()

    result = CliRunner().invoke(app, ["run", str(spec_file), "--resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "tables" and manifest["traces_completed"] == list(range(N_TRACES))
    assert manifest["resumes"] == 1 and not list(run.rglob("*.tmp"))
    assert_same_tables(reference, run)


def test_ranks_partition_traces_and_are_a_no_op_alone():
    assert ranks_from_env({}) == Ranks()  # no torchrun variables: one process, nothing to join
    alone = Ranks()
    assert alone.broadcast("x") == "x" and alone.gather(1) == [1] and alone.device("auto") == "auto"
    ranks = [ranks_from_env({"RANK": str(r), "WORLD_SIZE": "3", "LOCAL_RANK": str(r)}) for r in range(3)]
    owners = [[r.rank for r in ranks if r.owns(i)] for i in range(7)]
    assert owners == [[i % 3] for i in range(7)]
    assert ranks[2].device("cuda") == "cuda:2" and ranks[1].device("cpu") == "cpu"


def test_torchrun_two_ranks_equal_a_single_process(spec_file, reference, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "interventions.cli.main", "run", str(spec_file), "--run-dir", str(run), "-q"]
    # torchrun defaults each rank to 1 thread; the reference used this process's count, and a
    # different count changes float reduction order, so give the ranks the same.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = [json.loads((run / f"manifest.rank-{r}.json").read_text()) for r in range(2)]
    assert [s["traces_completed"] for s in shards] == [[0, 2, 4], [1, 3, 5]]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "tables" and manifest["world_size"] == 2
    assert manifest["traces_completed"] == list(range(N_TRACES))
    single = json.loads((reference / "manifest.json").read_text())
    assert manifest["forwards"]["tokens"] == single["forwards"]["tokens"]
    assert_same_tables(reference, run)
