"""Start-up cost of the command line and the package, against ``import torch`` alone.

Each command runs in a fresh process; the commands alternate round by round (machine load
drifts), and the table reports medians and the median paired difference against torch.

    python benchmarks/imports.py --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import interventions": [sys.executable, "-c", "import interventions"],
    "from interventions import (the README's five names)": [
        sys.executable, "-c", "from interventions import load_model, detect, run_spec, load_spec, analyze_run"],
    "intervene --help": [sys.executable, "-m", "interventions.cli.main", "--help"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.rounds):
        for name, cmd in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    base = times["import torch"]
    print("| command | median s | minus `import torch` (median of paired differences) |")
    print("|---|---|---|")
    for name, ts in times.items():
        diff = statistics.median(t - b for t, b in zip(ts, base))
        print(f"| `{name}` | {statistics.median(ts):.2f} | {diff:+.2f} |")


if __name__ == "__main__":
    main()
