"""Calibration of the verdicts: false-"supported" rates on negative controls, power and CI coverage.

    python benchmarks/calibration.py                        # fresh draws: G = 8 and 30 traces, K = 200 draws
    python benchmarks/calibration.py --draws 20 --traces 8 --workers 16
    python benchmarks/calibration.py --quick                # K = 20, G = 8: noisy negatives and table nulls
    python benchmarks/calibration.py --cases H4 table       # only cases whose label starts with these
    python benchmarks/calibration.py --cases "H3 noisy" --draws 200 --traces 8 --log h3.jsonl   # resumable
    python benchmarks/calibration.py --mode pool --draws 50 --pool 12   # the older resampling mode

Every verdict comes out of the run's own path: a case with a model runs ``run_spec`` and then
:func:`interventions.stats.analysis.compute_stats` on the run folder's tables (what ``analyze_run`` does);
a table-level null (``benchmarks/table_nulls.py``) passes its synthetic tables to
:func:`interventions.stats.hypotheses.hypothesis_verdicts`, the call ``compute_stats`` makes for its verdicts
(``--full-stats``: to ``compute_stats`` itself).

* ``--mode fresh`` (default): every simulated run is a new run of G traces: new traces (spec seed =
  the draw) and, for the seedable testbeds (``testbed:noisy-h1@seedK`` ...), new weights.
  The planted, exact-null and positive testbeds have one weight seed, so only their traces change.
* ``--mode pool``: each (testbed, spec) runs once over a pool of traces; every simulated run draws G
  traces from the pool with replacement and recomputes the verdicts from those rows only
  (:func:`interventions.stats.hypotheses.hypothesis_verdicts`); also reports CI coverage of the pool's effect.

Cases:

* noisy negatives (``testbed:noisy-h1..h4``): the edit moves activations, some sink cosines cross
  0.95, the claim is false by construction (``interventions/testbed/noisy.py``).
* exact-null negatives (``testbed:negative-h1/h2/h3``, the planted model for H4, and a placebo-only
  spec: H1 whose only condition zeroes the MLP at layer 2, where it writes nothing): forwards
  bit-identical to clean (negative-h2 and negative-h3 do change the forward; kept as before).
* table-level nulls (``table:NAME``): targets and comparison units from one near-threshold law.
* positives (``testbed:planted`` for H1-H3, ``testbed:positive-h4`` for H4): power.

For negatives the table says whether the "supported" rate is <= alpha + 2 Monte Carlo standard
errors (sqrt(alpha (1 - alpha) / K)); for positives it is the power.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from interventions.stats.analysis import compute_stats, load_run  # noqa: E402
from interventions.stats.hypotheses import hypothesis_verdicts  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from table_nulls import null_tables  # noqa: E402

ALPHA = 0.05
SPECS = {"H1": "mlp_zero.yaml", "H2": "norm_scale.yaml", "H3": "mean_swap.yaml", "H4": "attn_mask.yaml"}
SEEDABLE = ("testbed:noisy-h1", "testbed:noisy-h2", "testbed:noisy-h3", "testbed:noisy-h4")
"""Testbeds built per weight seed (``@seedK``); the others have one set of weights."""


def _h4_targets(tokens: list[str]) -> dict:
    """H4's target sets on the sinks ``tokens`` only: all five sinks of a 57-token testbed trace draw more attention
    than its ordinary tokens can match (mass-matched control sets at 0.07-0.45x: not testable); positive-h4's " @"
    and the planted model's " ^" are matched (tests/test_positive_h4.py)."""
    return {"targets": {"sinks": {"select": "secondary_sinks", "tokens": tokens},
                        "ctrl": {"select": "matched_controls", "match": "sinks", "by": "attention_mass",
                                 "size": "auto"}}}


CASES = [  # (label, hypothesis, model or table:NAME, spec changes, truth)
    ("H1 noisy-h1", "H1", "testbed:noisy-h1", {}, "negative"),
    ("H2 noisy-h2", "H2", "testbed:noisy-h2", {}, "negative"),
    ("H3 noisy-h3", "H3", "testbed:noisy-h3", {}, "negative"),
    ("H4 noisy-h4", "H4", "testbed:noisy-h4", _h4_targets([" ^"]), "negative"),
    ("table H1 vs controls", "H1", "table:h1_controls", {}, "negative"),
    ("table H1 vs non-sink controls (noisy-h1 in a table)", "H1", "table:h1_nonsink_controls", {}, "negative"),
    ("table H1 vs placebo", "H1", "table:h1_placebo", {}, "negative"),
    ("table H1 vs placebo, partly templated traces", "H1", "table:h1_partly_templated", {}, "negative"),
    ("table H2 vs placebo", "H2", "table:h2_placebo", {}, "negative"),
    ("table H3 vs placebo", "H3", "table:h3_placebo", {}, "negative"),
    ("table H4 vs controls", "H4", "table:h4_controls", {}, "negative"),
    ("table H4 mass-driven, controls short in half the traces", "H4", "table:h4_mass_driven", {}, "negative"),
    ("H1 planted", "H1", "testbed:planted", {}, "positive"),
    ("H1 negative-h1 (exact null)", "H1", "testbed:negative-h1", {}, "negative"),
    ("H1 placebo-only (zero MLP at L2, exact null)", "H1", "testbed:planted", {"interventions": [
        {"kind": "zero", "site": "mlp_output", "layer": 2, "targets": ["sinks"], "controls": "ctrl"}]}, "negative"),
    ("H2 planted", "H2", "testbed:planted", {}, "positive"),
    ("H2 negative-h2", "H2", "testbed:negative-h2", {}, "negative"),
    ("H3 planted", "H3", "testbed:planted", {}, "positive"),
    ("H3 negative-h3", "H3", "testbed:negative-h3", {}, "negative"),
    ("H4 positive-h4", "H4", "testbed:positive-h4", _h4_targets([" @"]), "positive"),
    ("H4 planted (H4 false, exact null)", "H4", "testbed:planted", _h4_targets([" ^"]), "negative"),
]
QUICK = ("H1 noisy", "H2 noisy", "H3 noisy", "H4 noisy", "table")


def case_spec(model: str, hypothesis: str, changes: dict, G: int, seed: int) -> Spec:
    """The spec of one simulated run: the hypothesis' spec file on ``model`` with G traces, seed ``seed``."""
    data = yaml.safe_load((REPO / "specs" / SPECS[hypothesis]).read_text())
    data.update(model=model, limit=G, seed=seed, report=False, **changes)
    return Spec.from_dict(data, base_dir=REPO / "specs")


def draw_verdicts(model: str, hypothesis: str, changes: dict, G: int, draw: int, root: Path, *,
                  full_stats: bool = False) -> dict:
    """Verdicts of one fresh simulated run (draw ``draw``) through the run's own path.

    A table null's verdicts come from :func:`hypothesis_verdicts` (what ``compute_stats`` calls for
    ``stats["verdicts"]``, on the same effects table), or with ``full_stats`` from ``compute_stats``
    itself (its per-layer screens and summaries make that ~10x slower, same verdicts)."""
    if model.startswith("table:"):
        tables = null_tables(model[len("table:"):], G, seed=draw)
        if full_stats:
            return compute_stats(tables, seed=draw)["verdicts"]
        return hypothesis_verdicts(tables["effects"], tables["manifest"], seed=draw)[0]
    built = None
    if model in SEEDABLE:
        from interventions.testbed import cache_root
        from interventions.testbed.noisy import noisy_folder_name

        weight_seed = G * 100_000 + draw   # new weights per draw (and per G)
        built = cache_root() / "testbed" / noisy_folder_name(model[len("testbed:"):], weight_seed)
        model = f"{model}@seed{weight_seed}"
    try:
        result = run_spec(case_spec(model, hypothesis, changes, G, seed=draw), results_root=root, progress=False)
        try:
            return compute_stats(load_run(result.out), seed=draw)["verdicts"]
        finally:
            shutil.rmtree(result.out, ignore_errors=True)
    finally:
        if built is not None:   # one folder per draw: ~1.6 MB each, K x G x cases of them otherwise
            shutil.rmtree(built, ignore_errors=True)


def _draw_task(args: tuple) -> tuple:
    label, hypothesis, model, changes, G, draw, root, full_stats = args
    try:
        verdicts = draw_verdicts(model, hypothesis, changes, G, draw, Path(root), full_stats=full_stats)
    except Exception as exc:  # one failed draw is reported, not fatal to the table
        return label, G, draw, None, f"{type(exc).__name__}: {exc}"
    keep = {k: {"verdict": v.get("verdict"), "effect": v.get("effect")} for k, v in verdicts.items()
            if k.split("/")[0] == hypothesis}
    return label, G, draw, keep, None


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _tally(counts: dict, key: tuple, verdict: str) -> None:
    """One verdict more for (case label, G, verdict key)."""
    counts.setdefault(key, dict.fromkeys(("supported", "not supported", "inconclusive", "not testable", "not tested"),
                                         0))[verdict] += 1


def read_log(log: Path | None) -> dict[tuple, tuple]:
    """The draws a ``--log`` file already holds, by (case label, G, draw): a long calibration is resumable, and
    an interrupted one keeps what it measured."""
    done: dict[tuple, tuple] = {}
    if log is None or not log.exists():
        return done
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:   # a line cut by an interruption: that draw runs again
            continue
        if rec.get("error") is None:
            done[(rec["case"], rec["G"], rec["draw"])] = (rec["case"], rec["G"], rec["draw"], rec["verdicts"], None)
    return done


def fresh_counts(cases: list[tuple], Gs: list[int], K: int, workers: int, root: Path, *,
                 full_stats: bool = False, log: Path | None = None) -> tuple[dict, list[str]]:
    """Verdict counts per (case label, G, verdict key) over K fresh draws; with ``log``, every draw is appended
    to that JSONL file as it finishes and draws already there are not run again."""
    done = read_log(log)
    tasks = [(label, h, model, changes, G, k, str(root), full_stats) for label, h, model, changes, _ in cases
             for G in Gs for k in range(K) if (label, G, k) not in done]
    counts: dict[tuple, dict] = {}
    errors: list[str] = []
    logged = log.open("a") if log is not None else None

    def add(res, fresh: bool = True):
        label, G, draw, verdicts, err = res
        if logged is not None and fresh:
            logged.write(json.dumps({"case": label, "G": G, "draw": draw, "verdicts": verdicts, "error": err}) + "\n")
            logged.flush()
        if err:
            errors.append(f"{label} G={G} draw {draw}: {err}")
            print(errors[-1], file=sys.stderr, flush=True)
            return
        for key, rec in verdicts.items():
            _tally(counts, (label, G, key), rec["verdict"])

    wanted = {(label, G) for label, *_ in cases for G in Gs}
    for key, res in done.items():
        if (key[0], key[1]) in wanted and key[2] < K:
            add(res, fresh=False)
    try:
        if workers <= 1:
            _init_worker()
            for t in tasks:
                add(_draw_task(t))
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for res in pool.imap_unordered(_draw_task, tasks):
                    add(res)
    finally:
        if logged is not None:
            logged.close()
    return counts, errors


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
            c = counts.setdefault(key, {"supported": 0, "not supported": 0, "inconclusive": 0, "not testable": 0,
                                        "with_ci": 0, "covered": 0})
            c[rec["verdict"]] += 1
            lo, hi = (rec.get("ci") or [None, None])[:2]
            if lo is not None and hi is not None and truth.get(key) is not None:
                c["with_ci"] += 1
                c["covered"] += int(lo - 1e-12 <= truth[key] <= hi + 1e-12)
    return {"pool_effect": truth, "counts": counts}


def table_row(label: str, truth: str, key: str, G: int, c: dict) -> dict:
    """One line of the calibration table (rates over the draws that gave a verdict)."""
    n = sum(c[v] for v in ("supported", "not supported", "inconclusive", "not testable"))
    rate = c["supported"] / n if n else float("nan")
    bound = ALPHA + 2 * float(np.sqrt(ALPHA * (1 - ALPHA) / n)) if n else float("nan")
    row = {"case": label, "truth": truth, "verdict": key, "G": G, "K": n,
           "supported": round(rate, 3), "mc_se": round(float(np.sqrt(rate * (1 - rate) / n)), 3) if n else None,
           "not_supported": round(c["not supported"] / n, 3) if n else None,
           "inconclusive": round(c["inconclusive"] / n, 3) if n else None,
           "not_testable": round(c["not testable"] / n, 3) if n else None}
    if truth == "negative":
        row["bound"] = round(bound, 3)
        row["within_bound"] = bool(rate <= bound)
    if "with_ci" in c:
        row["ci_coverage"] = round(c["covered"] / c["with_ci"], 3) if c["with_ci"] else None
        row["n_with_ci"] = c["with_ci"]
    return row


def print_table(rows: list[dict]) -> None:
    print("\n| case | truth | verdict | G | K | supported | bound (alpha + 2 MC SE) | not supported | inconclusive |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        bound = f"{r['bound']:.3f} ({'ok' if r['within_bound'] else 'EXCEEDED'})" if "bound" in r else "power"
        print(f"| {r['case']} | {r['truth']} | {r['verdict']} | {r['G']} | {r['K']} | {r['supported']:.3f} | {bound} "
              f"| {r['not_supported']:.3f} | {r['inconclusive']:.3f} |")


def summarise_log(log: Path, out: str | None = None) -> list[dict]:
    """The calibration table of the draws a ``--log`` file holds (K per case and G: the draws it has)."""
    counts: dict[tuple, dict] = {}
    for (label, G, _draw), (*_, verdicts, _err) in read_log(log).items():
        for key, rec in verdicts.items():
            _tally(counts, (label, G, key), rec["verdict"])
    truth = {c[0]: c[4] for c in CASES}
    rows = [table_row(label, truth.get(label, "negative"), key, G, c) for (label, G, key), c in sorted(counts.items())]
    for r in rows:
        print(json.dumps(r), flush=True)
    print_table(rows)
    if out:
        Path(out).write_text(json.dumps(rows, indent=1))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", "--k", dest="draws", type=int, default=None, help="simulated runs per case and G "
                    "(default 200; --quick 20)")
    ap.add_argument("--traces", "--g", dest="traces", type=int, nargs="+", default=None,
                    help="traces per simulated run (default 8 30; --quick 8)")
    ap.add_argument("--mode", choices=["fresh", "pool"], default="fresh")
    ap.add_argument("--pool", type=int, default=30, help="pool mode: traces in the pool")
    ap.add_argument("--workers", type=int, default=1, help="fresh mode: parallel processes")
    ap.add_argument("--quick", action="store_true", help="K = 20, G = 8, noisy negatives and table nulls only")
    ap.add_argument("--full-stats", action="store_true", help="table nulls: verdicts from compute_stats (slower) "
                    "instead of the hypothesis_verdicts call it makes")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    ap.add_argument("--log", default=None, help="fresh mode: append every draw to this JSONL file as it finishes; "
                    "draws already in it are reused (resume an interrupted calibration)")
    ap.add_argument("--cases", nargs="+", default=None, help="only cases whose label starts with one of these")
    ap.add_argument("--summarise", action="store_true", help="with --log: the table from the draws the log holds "
                    "(K = those draws), running none (a calibration stopped early still reports what it measured)")
    args = ap.parse_args(argv)
    if args.summarise:
        if not args.log:
            ap.error("--summarise reads the draws of --log FILE")
        return summarise_log(Path(args.log), args.out)
    K = args.draws if args.draws is not None else (20 if args.quick else 200)
    Gs = args.traces if args.traces is not None else ([8] if args.quick else [8, 30])
    prefixes = args.cases or (list(QUICK) if args.quick else None)
    cases = [c for c in CASES if not prefixes or any(c[0].startswith(p) for p in prefixes)]
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.mode == "fresh":
            counts, errors = fresh_counts(cases, Gs, K, args.workers, Path(tmp), full_stats=args.full_stats,
                                          log=Path(args.log) if args.log else None)
            for label, h, _model, _changes, truth in cases:
                for G in Gs:
                    for (lab, g, key), c in sorted(counts.items()):
                        if lab == label and g == G:
                            rows.append(table_row(label, truth, key, G, c))
                            print(json.dumps(rows[-1]), flush=True)
            if errors:
                print(f"{len(errors)} draw(s) failed (first: {errors[0]})", file=sys.stderr)
        else:
            for label, h, model, changes, truth in cases:
                if model.startswith("table:"):
                    continue   # nothing to pool: a table null is drawn fresh each time
                tables = run_pool(model, SPECS[h], changes, args.pool, Path(tmp))
                for G in Gs:
                    res = calibrate(tables, G, K, seed=G)
                    for key, c in res["counts"].items():
                        if key.split("/")[0] == h:
                            rows.append(table_row(label, truth, key, G, c))
                            print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
