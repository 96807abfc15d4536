"""Start-up cost: ``intervene --help`` and ``import interventions`` load neither torch nor transformers.

The README quotes the measured times (``python benchmarks/imports.py``); here the module check is
exact and the time bound generous (timings on shared machines swing widely).
"""

from __future__ import annotations

import subprocess
import sys
import time

from .conftest import REPO

HEAVY = ("torch", "transformers", "pyvene", "pandas", "scipy", "statsmodels", "matplotlib")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(proc.stdout.split())


def test_import_interventions_loads_no_heavy_package():
    assert loaded_after("import interventions") == set()


def test_the_command_line_loads_no_heavy_package_for_help():
    assert loaded_after("import interventions.cli.main") == set()


def test_public_names_are_importable_and_listed():
    import interventions

    for name in interventions.__all__:
        assert getattr(interventions, name) is not None, name
    assert {"load_model", "detect", "run_spec", "load_spec", "analyze_run"} <= set(interventions.__all__)


def test_help_is_faster_than_importing_torch():
    def wall(cmd):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, capture_output=True, check=True)
        return time.perf_counter() - t0

    torch_s = wall([sys.executable, "-c", "import torch"])
    help_s = wall([sys.executable, "-m", "interventions.cli.main", "--help"])
    assert help_s < max(2.0, torch_s), f"intervene --help {help_s:.2f} s, import torch {torch_s:.2f} s"
