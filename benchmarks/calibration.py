"""Calibration of the verdicts: false-"supported" rates on negative controls, power and CI coverage.

    python benchmarks/calibration.py                 # G = 8 and 30 traces, K = 200 resamples each
    python benchmarks/calibration.py --k 50 --pool 12  # quicker
    python benchmarks/calibration.py --cases H4        # only the cases whose label starts with H4

Cheap by design: each (testbed, spec) runs once over a pool of traces; every simulated run
draws G traces from the pool with replacement (each draw a separate cluster) and recomputes
the verdicts from those rows only (:func:`interventions.stats.analysis.hypothesis_verdicts`).

* negative testbeds (``testbed:negative-h1/h2/h3``, and the planted model for H4) and a
  placebo-only spec (H1 whose only condition zeroes the MLP at layer 2, not l_start): rate of
  "supported" per verdict key; target <= alpha + 2 Monte Carlo standard errors.
* positive testbeds (``testbed:planted`` for H1-H3, ``testbed:positive-h4`` for H4): power (rate of
  "supported") and, where the verdict has a CI, its coverage of the pool's own effect (the effect
  over all pool traces).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from interventions.pipeline import run_spec  # noqa: E402
from interventions.spec import Spec  # noqa: E402
from interventions.stats.analysis import hypothesis_verdicts, load_run  # noqa: E402

SPECS = {"H1": "mlp_zero.yaml", "H2": "norm_scale.yaml", "H3": "mean_swap.yaml", "H4": "attn_mask.yaml"}
CASES = [  # (label, hypothesis, model, spec changes, truth)
    ("H1 planted", "H1", "testbed:planted", {}, "positive"),
    ("H1 negative-h1", "H1", "testbed:negative-h1", {}, "negative"),
    ("H1 placebo-only (zero MLP at L2)", "H1", "testbed:planted", {"interventions": [
        {"kind": "zero", "site": "mlp_output", "layer": 2, "targets": ["sinks"], "controls": "ctrl"}]}, "negative"),
    ("H2 planted", "H2", "testbed:planted", {}, "positive"),
    ("H2 negative-h2", "H2", "testbed:negative-h2", {}, "negative"),
    ("H3 planted", "H3", "testbed:planted", {}, "positive"),
    ("H3 negative-h3", "H3", "testbed:negative-h3", {}, "negative"),
    ("H4 positive-h4", "H4", "testbed:positive-h4", {}, "positive"),
    ("H4 planted (H4 false)", "H4", "testbed:planted", {}, "negative"),
]


def run_pool(model: str, spec_file: str, changes: dict, pool: int, root: Path) -> dict:
    data = yaml.safe_load((REPO / "specs" / spec_file).read_text())
    data.update(model=model, limit=pool, report=False, **changes)
    result = run_spec(Spec.from_dict(data, base_dir=REPO / "specs"), results_root=root, progress=False)
    return load_run(result.out)


def resample(effects: pd.DataFrame, traces: np.ndarray) -> pd.DataFrame:
    parts = [effects[effects["trace"] == t].assign(trace=i) for i, t in enumerate(traces)]
    return pd.concat(parts, ignore_index=True)


def calibrate(tables: dict, G: int, K: int, seed: int) -> dict:
    effects, manifest = tables["effects"], tables["manifest"]
    pool = np.array(sorted(effects["trace"].unique()))
    full, _ = hypothesis_verdicts(effects, manifest, seed=seed)
    truth = {k: v.get("effect") for k, v in full.items()}
    rng = np.random.default_rng(seed)
    counts: dict[str, dict] = {}
    for k in range(K):
        v, _ = hypothesis_verdicts(resample(effects, rng.choice(pool, size=G, replace=True)), manifest, seed=k)
        for key, rec in v.items():
            if rec.get("verdict") == "not tested":
                continue
            c = counts.setdefault(key, {"supported": 0, "not supported": 0, "inconclusive": 0, "with_ci": 0,
                                        "covered": 0})
            c[rec["verdict"]] += 1
            lo, hi = (rec.get("ci") or [None, None])[:2]
            if lo is not None and hi is not None and truth.get(key) is not None:
                c["with_ci"] += 1
                c["covered"] += int(lo - 1e-12 <= truth[key] <= hi + 1e-12)
    return {"pool_effect": truth, "counts": counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--pool", type=int, default=30)
    ap.add_argument("--g", type=int, nargs="+", default=[8, 30])
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    ap.add_argument("--cases", nargs="+", default=None, help="only cases whose label starts with one of these")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, h, model, changes, truth in CASES:
            if args.cases and not any(label.startswith(c) for c in args.cases):
                continue
            tables = run_pool(model, SPECS[h], changes, args.pool, Path(tmp))
            for G in args.g:
                res = calibrate(tables, G, args.k, seed=G)
                for key, c in res["counts"].items():
                    if not key.startswith(h):
                        continue
                    n = sum(c[v] for v in ("supported", "not supported", "inconclusive"))
                    rate = c["supported"] / n
                    rows.append({"case": label, "truth": truth, "verdict": key, "G": G, "K": n,
                                 "supported": round(rate, 3), "mc_se": round(float(np.sqrt(rate * (1 - rate) / n)), 3),
                                 "not_supported": round(c["not supported"] / n, 3),
                                 "inconclusive": round(c["inconclusive"] / n, 3),
                                 "ci_coverage": round(c["covered"] / c["with_ci"], 3) if c["with_ci"] else None,
                                 "n_with_ci": c["with_ci"]})
                    print(json.dumps(rows[-1]), flush=True)
    print("\n| case | truth | verdict | G | K | supported | not supported | inconclusive | CI coverage (n) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cov = "–" if r["ci_coverage"] is None else f"{r['ci_coverage']:.3f} ({r['n_with_ci']})"
        print(f"| {r['case']} | {r['truth']} | {r['verdict']} | {r['G']} | {r['K']} | {r['supported']:.3f} "
              f"| {r['not_supported']:.3f} | {r['inconclusive']:.3f} | {cov} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
