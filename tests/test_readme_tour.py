"""The README's tour, run verbatim as a new user would (subprocesses, in a fresh folder).

The commands are read from the README itself (the bash block under "A five-minute tour"), so
the README cannot drift from the code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def tour_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## A five-minute tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_tour_runs_verbatim(tmp_path, cache_dir):
    shutil.copytree(REPO / "specs", tmp_path / "specs")
    env = dict(os.environ, INTERVENTIONS_CACHE=str(cache_dir), COLUMNS="120")
    intervene = [sys.executable, "-m", "interventions.cli.main"]
    commands = tour_commands()
    assert [c.split()[:2] for c in commands] == [["intervene", "testbed"], ["intervene", "detect"],
                                                 ["intervene", "run"], ["intervene", "report"]]
    for command in commands:
        proc = subprocess.run(intervene + shlex.split(command)[1:], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
    detect_dir = tmp_path / "results" / "detect-demo"
    levels = pd.read_csv(detect_dir / "levels.csv")
    assert set(zip(levels.l_start, levels.lifetime)) == {(4, 2), (4, 3), (4, 4), (4, 7)}
    (run,) = list((tmp_path / "results" / "norm_scale").iterdir())
    stats = json.loads((run / "stats.json").read_text())
    assert stats["verdicts"]["H2"]["verdict"] == "supported"
    report = (run / "report.md").read_text()
    assert "H2" in report and (run / "figures").is_dir()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["spec_hash"]
