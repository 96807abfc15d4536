"""Every code block of the README, run as written, in a fresh folder (subprocesses, as a new user would).

- bash blocks: each ``intervene`` command of the set-up and the tour is executed (in that order,
  so the tour's ``--results results`` and the set-up's default folder both exist); commands that
  need the hub, a GPU or several processes (``Qwen/...``, ``--device cuda``, ``torchrun``) are
  parsed against the real command line (every flag must exist), not run. ``pip install`` lines
  change the environment and ``python -m pytest`` would recurse: their pins are checked instead.
- python blocks: executed as one script each, in the same folder after the tour.
- yaml blocks: validated as specs (paths unchecked: they name hub models and shared files).
"""

from __future__ import annotations

import re

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow

README = (REPO / "README.md").read_text()
BLOCK = re.compile(r"^ *```(\w+)\n(.*?)^ *```", re.S | re.M)


def blocks(language: str) -> list[tuple[str, str]]:
    """(section title, code) of every fenced block in ``language``."""
    out = []
    for m in BLOCK.finditer(README):
        if m.group(1) == language:
            title = re.findall(r"^## (.+)$", README[:m.start()], re.M)[-1]
            out.append((title, m.group(2)))
    return out


def commands(code: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments dropped, ``&&`` chains split."""
    joined = re.sub(r"\\\n\s*", " ", code)
    lines = [line.split(" #")[0].strip() for line in joined.splitlines()]
    return [part.strip() for line in lines if line and not line.startswith("#") for part in line.split("&&")]


def needs_more_than_this_machine(command: str) -> bool:
    model = re.search(r"--model (\S+)", command)
    hub = model is not None and "/" in model.group(1) and not model.group(1).startswith(
        ("models/", "./", "../", "/", ".cache/", "testbed:")) and not model.group(1).endswith(".gguf")
    return command.startswith("torchrun") or "--device cuda" in command or "--device auto" in command or hub


def test_readme_has_the_blocks_this_test_reads():
    titles = [t for t, _ in blocks("bash")]
    assert titles[:3] == ["Set-up (two commands)", "Set-up (two commands)", "A five-minute tour"]
    # The "Comparing runs" block runs in tests/test_compare_runs.py after its section's commands.
    assert [t for t, _ in blocks("python")] == ["Python API", "Comparing runs"]


def test_setup_pins_match_the_package():
    from interventions.models.dependencies import INSTALL

    setup = [c for _, code in blocks("bash")[:2] for c in commands(code)]
    assert "pip install torch==2.13.0" in setup
    assert INSTALL["pyvene"] in setup
    assert 'pip install -e ".[test]"' in setup and "python -m pytest -q" in setup


def test_commands_that_need_a_gpu_or_the_hub_parse():
    """They cannot run here, but every verb and flag they use must exist."""
    import typer.main

    from interventions.cli.main import app

    cli = typer.main.get_command(app)
    parsed = 0
    for _, code in blocks("bash"):
        for command in commands(code):
            if not needs_more_than_this_machine(command):
                continue
            argv = shlex.split(command)
            argv = argv[argv.index("interventions.cli.main") + 1:] if argv[0] == "torchrun" else argv[1:]
            sub = cli.get_command(None, argv[0])
            sub.make_context(argv[0], argv[1:])  # raises on an unknown flag or a missing value
            parsed += 1
    assert parsed >= 3


def test_yaml_blocks_are_valid_specs():
    from interventions.spec import load_spec_text

    specs = blocks("yaml")
    assert specs
    for _, code in specs:
        assert load_spec_text(code, REPO, check_files=False).conditions()


def test_readme_runs_verbatim(tmp_path, cache_dir):
    """Set-up run, the tour, then the Python block, in a fresh folder holding only specs/."""
    import shutil

    shutil.copytree(REPO / "specs", tmp_path / "specs")
    env = dict(os.environ, INTERVENTIONS_CACHE=str(cache_dir), COLUMNS="120",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    intervene = [sys.executable, "-m", "interventions.cli.main"]
    to_run = [c for _, code in blocks("bash")[:3] for c in commands(code)
              if c.startswith("intervene ") and not needs_more_than_this_machine(c) and "fetch-gguf" not in c]
    assert [c.split()[:2] for c in to_run] == [["intervene", "run"], ["intervene", "testbed"],
                                              ["intervene", "detect"], ["intervene", "run"],
                                              ["intervene", "report"], ["intervene", "report"]]
    outputs = {}
    for command in to_run:
        proc = subprocess.run(intervene + shlex.split(command)[1:], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        outputs[command] = proc
    # the tour's claims
    levels = pd.read_csv(tmp_path / "results" / "detect-demo" / "levels.csv")
    assert set(zip(levels.l_start, levels.lifetime)) == {(4, 2), (4, 3), (4, 4), (4, 7)}
    runs = sorted((tmp_path / "results" / "norm_scale").iterdir())
    assert len(runs) == 2  # the set-up's run and the tour's
    for run in runs:
        stats = json.loads((run / "stats.json").read_text())
        assert stats["verdicts"]["H2/mlp_output/l_start/sinks"]["verdict"] == "supported"
        assert (run / "report.md").is_file() and (run / "figures").is_dir()
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["spec_hash"]
    run_out = next(p for c, p in outputs.items() if c.startswith("intervene run"))
    assert "clean vs intervened" in run_out.stdout  # tables on stdout
    # a verdict line that is exactly "supported" ("not supported" must not pass for it)
    assert re.search(r"(?m)^\s*verdict\s+supported\s*$", run_out.stdout), run_out.stdout
    detect_report = (tmp_path / "results" / "detect-demo" / "report.md").read_text()
    assert re.search(r"(?<!\d)40 secondary sinks", detect_report), detect_report  # not "0 secondary sinks"

    (python_block,) = [code for title, code in blocks("python") if title == "Python API"]
    script = tmp_path / "readme_block.py"
    script.write_text(python_block)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
