"""Benchmark: K conditions on one trace, naive full forwards vs the framework's prefix reuse.

On a random-init Qwen2 of realistic shape scaled down (hidden 1024, 8 layers, 16 heads / 4 kv
heads, intermediate 2816, vocab 8192), one trace of T tokens, K = 6 conditions (scale x2/x5/x10
and zero of the layer-3 MLP output, zero of the layer-3 attention output, attention masking in
layers 3-5), each acting on three positions whose first lies in the second half of the trace
(spread uniformly: what target sets of late sinks look like). Every method runs the clean
forward and then the K intervened forwards through ``TraceExecutor``, in its own process (peak
RSS is per process):

  naive     ``reuse_prefix=False``: one full observed forward per condition
  prefix    prefix reuse without knowing the starts: one prefix forward per distinct start
            (what ``TraceExecutor`` does for a start it was not told about)
  reuse     the framework's path in ``intervene run``: the starts are known from the clean pass,
            the clean forward keeps its KV cache and the prefix column sums, each condition runs
            only its suffix

``cond ratio`` is the conditions' time over the naive conditions' time, i.e. the cost in units
of K full forwards (target <= 0.35). It also prints the memory estimate of ``intervene run`` for
this model and T next to the measured peak RSS.

With ``--spec``, it times a whole ``intervene run`` instead, split into its phases: model load,
clean pass (detection over every trace), conditions (every intervened forward with its
measures), the rest of the per-trace work (the executor's clean forward, tables written) and
statistics (``analyze_run``: tests, intervals, report). The run goes once with prefix reuse and
once with ``reuse_prefix=False`` (one full forward per condition), alternated ``--repeats``
times in one process; the conditions' cost is reported as a multiple of one full forward per
condition (the median of paired reuse / naive ratios, with the range).

    python benchmarks/sweep.py                  # T = 2048, K = 6, 1 repeat (~5 min on 2 cores)
    python benchmarks/sweep.py --length 512 --repeats 2
    python benchmarks/sweep.py --spec specs/norm_scale.yaml --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

METHODS = ("naive", "prefix", "reuse")


def build_model():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=8192)
    return Qwen2ForCausalLM(config).eval().requires_grad_(False)


def conditions(length: int, k: int):
    """K edit lists; condition i's first target at T/2 + (i + 1/2) T/(2K), then +7 and +23 tokens."""
    from interventions.compile import Edit

    kinds = [dict(kind="scale", site="mlp_output", factor=2.0), dict(kind="scale", site="mlp_output", factor=5.0),
             dict(kind="scale", site="mlp_output", factor=10.0), dict(kind="zero", site="mlp_output"),
             dict(kind="zero", site="attention_output"), dict(kind="attention_mask")]
    out = []
    for i in range(k):
        first = length // 2 + int((i + 0.5) * length / (2 * k))
        positions = sorted({p for p in (first, first + 7, first + 23) if p < length})
        kw = kinds[i % len(kinds)]
        layers = [3, 4, 5] if kw["kind"] == "attention_mask" else [3]
        out.append([Edit(layer=layer, positions=positions, **kw) for layer in layers])
    return out


def measure(method: str, length: int, k: int, repeats: int) -> dict:
    """Run in a child process: build, warm up, time clean + K conditions ``repeats`` times, report peak RSS."""
    import torch

    from interventions.models.adapters import adapter_for
    from interventions.models.attention import make_hookable
    from interventions.models.load import LoadedModel, ModelSource
    from interventions.run.execute import TraceExecutor, first_position

    model = build_model()
    make_hookable(model)
    loaded = LoadedModel(model, None, adapter_for(model.config), ModelSource("bench", "bench"), "float32", "cpu",
                         "sdpa")
    ids = torch.randint(0, 8192, (length,), generator=torch.Generator().manual_seed(0)).tolist()
    edit_lists = conditions(length, k)
    starts = [first_position(e) for e in edit_lists]
    TraceExecutor(loaded, ids[:64], reuse_prefix=False).intervened(conditions(64, 1)[0])  # warm-up
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clean_s, cond_s, forwards = [], [], None
    for _ in range(repeats):
        ex = TraceExecutor(loaded, ids, reuse_prefix=method != "naive", starts=starts if method == "reuse" else ())
        t0 = time.perf_counter()
        ex.clean()
        t1 = time.perf_counter()
        for edits in edit_lists:
            ex.intervened(edits)
        t2 = time.perf_counter()
        clean_s.append(t1 - t0)
        cond_s.append(t2 - t1)
        forwards = dict(ex.forwards)
        del ex
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "T": length, "K": k, "clean_s": statistics.median(clean_s),
            "conditions_s": statistics.median(cond_s), "peak_rss_mb": peak_kb / 1024,
            "baseline_rss_mb": baseline_kb / 1024, "forwards": forwards, "starts": starts}


def run_phases(spec_path: str, reuse_prefix: bool, root) -> dict:
    """One whole run of ``spec_path`` (report included), timed by phase."""
    from interventions.pipeline import analyze_run, run_spec

    t0 = time.perf_counter()
    result = run_spec(spec_path, results_root=root, progress=False, report=False, reuse_prefix=reuse_prefix,
                      overwrite=True)
    t1 = time.perf_counter()
    analyze_run(result.out, progress=False)
    t2 = time.perf_counter()
    timings, forwards = result.manifest["timings"], result.manifest.get("forwards", {})
    conditions = sum(timings.get("per_condition_s", {}).values())
    traces = sum(timings.get("per_trace_s", {}).values())
    return {"load": timings["load_s"], "clean pass": timings["clean_pass_s"], "conditions": conditions,
            "per-trace rest": traces - conditions, "statistics": t2 - t1, "total": t2 - t0,
            "tokens": forwards.get("tokens"), "naive_tokens": forwards.get("naive_tokens")}


def spec_main(spec_path: str, repeats: int) -> None:
    import tempfile

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; intervene run {spec_path} (report "
          f"included), with and without prefix reuse alternated, {repeats} round(s) after a warm-up run")
    runs = {True: [], False: []}
    with tempfile.TemporaryDirectory() as root:
        run_phases(spec_path, True, root)  # warm-up: builds and caches the testbed model
        for _ in range(repeats):
            for reuse in (True, False):
                runs[reuse].append(run_phases(spec_path, reuse, root))
    phases = ("load", "clean pass", "conditions", "per-trace rest", "statistics", "total")
    print(f"{'phase':>15} {'reuse s':>9} {'share':>7} {'naive s':>9} {'share':>7}")
    for phase in phases:
        a = statistics.median(r[phase] for r in runs[True])
        b = statistics.median(r[phase] for r in runs[False])
        ta = statistics.median(r["total"] for r in runs[True])
        tb = statistics.median(r["total"] for r in runs[False])
        print(f"{phase:>15} {a:>9.2f} {a / ta:>7.0%} {b:>9.2f} {b / tb:>7.0%}")
    ratios = [r["conditions"] / n["conditions"] for r, n in zip(runs[True], runs[False])]
    tokens = runs[True][0]["tokens"] / runs[True][0]["naive_tokens"] if runs[True][0]["naive_tokens"] else float("nan")
    print(f"conditions with prefix reuse: {statistics.median(ratios):.2f}x one full forward per condition "
          f"(range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} paired runs; tokens run "
          f"{tokens:.2f}x; target <= 0.35)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--conditions", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--spec", help="time a whole `intervene run SPEC` by phase instead")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "T", "K", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.spec:
        spec_main(args.spec, args.repeats)
        return
    if args.child:
        m, t, k, r = args.child
        print(json.dumps(measure(m, int(t), int(k), int(r))))
        return
    import torch

    from interventions.models.memory import estimate_memory

    T, K = args.length, args.conditions
    est = estimate_memory(build_model().config, dtype=torch.float32, tokens=T)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; random-init Qwen2 hidden 1024, 8 layers, "
          f"16 heads / 4 kv heads, vocab 8192; T = {T}, K = {K}; median of {args.repeats}")
    print(f"first targets at {[first for first in (T // 2 + int((i + 0.5) * T / (2 * K)) for i in range(K))]}")
    print(f"{'method':>7} {'clean s':>8} {'K cond s':>9} {'cond ratio':>11} {'total s':>8} {'total ratio':>12} "
          f"{'tokens run':>11} {'peak RSS MB':>12} {'above load MB':>14}")
    rows = {}
    for method in METHODS:
        proc = subprocess.run([sys.executable, __file__, "--child", method, str(T), str(K), str(args.repeats)],
                              capture_output=True, text=True)
        if proc.returncode:
            print(f"{method:>7} failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        r = rows[method] = json.loads(proc.stdout.strip().splitlines()[-1])
        base = rows.get("naive")
        total = r["clean_s"] + r["conditions_s"]
        cond_ratio = r["conditions_s"] / base["conditions_s"] if base else float("nan")
        total_ratio = total / (base["clean_s"] + base["conditions_s"]) if base else float("nan")
        print(f"{method:>7} {r['clean_s']:>8.2f} {r['conditions_s']:>9.2f} {cond_ratio:>11.2f} {total:>8.2f} "
              f"{total_ratio:>12.2f} {r['forwards']['tokens']:>11} {r['peak_rss_mb']:>12.0f} "
              f"{r['peak_rss_mb'] - r['baseline_rss_mb']:>14.0f}", flush=True)
    print(f"memory estimate of `intervene run`: weights {est.weights_bytes / 2**20:.0f} MB + working set "
          f"{est.working_bytes / 2**20:.0f} MB ({', '.join(f'{k} {v / 2**20:.0f}' for k, v in est.parts.items())}); "
          "'above load' is peak RSS minus RSS after building the model and a warm-up forward")


if __name__ == "__main__":
    main()
