"""Benchmark: the streamed observation pass against a plain forward and the paper's way.

On a random-init Qwen2 of realistic shape scaled down (hidden 1024, 8 layers, 16 heads, GQA
with 4 kv heads), for each sequence length T it measures, each in a fresh process (peak RSS is
per process):

  (a) plain     a plain sdpa forward (logits of the last position only)
  (b) observe   the observation pass (per-layer scalars + sink scores, blockwise)
  (c) paper     eager attention with output_attentions=True and output_hidden_states=True,
                then sink scores from the materialised attention (the paper's way)

and prints median wall time and peak RSS, as ratios to (a).

    python benchmarks/observe.py                 # T = 1024 2048 4096, 3 repeats
    python benchmarks/observe.py --lengths 512 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def build_model(attn: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=8192)
    return Qwen2ForCausalLM(config).eval().requires_grad_(False)


def measure(method: str, length: int, repeats: int) -> dict:
    """Run in a child process: build, warm up once, time ``repeats`` runs, report peak RSS."""
    import torch

    from interventions.adapters import adapter_for
    from interventions.attention import make_hookable
    from interventions.models import LoadedModel, ModelSource
    from interventions.observe import observe_tokens

    torch.set_num_threads(torch.get_num_threads())
    model = build_model("eager" if method == "paper" else "sdpa")
    if method == "paper":
        model.set_attn_implementation("eager")
    ids = torch.randint(0, 8192, (1, length), generator=torch.Generator().manual_seed(0))
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def plain():
        with torch.inference_mode():
            model(input_ids=ids, logits_to_keep=1)

    def observe():
        observe_tokens(loaded, ids[0].tolist())

    def paper():
        with torch.inference_mode():
            out = model(input_ids=ids, output_attentions=True, output_hidden_states=True, logits_to_keep=1)
            T = ids.shape[1]
            counts = T - torch.arange(T)
            [(a[0].sum(dim=1) / counts).mean(0) for a in out.attentions]
            [h[0].norm(dim=-1) for h in out.hidden_states]

    if method == "observe":
        make_hookable(model)
        loaded = LoadedModel(model, None, adapter_for(model.config), ModelSource("bench", "bench"), "float32", "cpu",
                             "sdpa")
    fn = {"plain": plain, "observe": observe, "paper": paper}[method]
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "T": length, "median_s": statistics.median(times), "peak_rss_mb": peak_kb / 1024,
            "baseline_rss_mb": baseline_kb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "T", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; random-init Qwen2 hidden 1024, 8 layers, "
          f"16 heads / 4 kv heads; median of {args.repeats}")
    print(f"{'T':>6} {'method':>8} {'median s':>9} {'peak RSS MB':>12} {'time x plain':>13} {'RSS x plain':>12}")
    for length in args.lengths:
        rows = {}
        for method in ("plain", "observe", "paper"):
            proc = subprocess.run([sys.executable, __file__, "--child", method, str(length), str(args.repeats)],
                                  capture_output=True, text=True)
            if proc.returncode:
                print(f"{length:>6} {method:>8} failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            rows[method] = json.loads(proc.stdout.strip().splitlines()[-1])
        base = rows.get("plain")
        for method, r in rows.items():
            t_ratio = r["median_s"] / base["median_s"] if base else float("nan")
            m_ratio = r["peak_rss_mb"] / base["peak_rss_mb"] if base else float("nan")
            print(f"{length:>6} {method:>8} {r['median_s']:>9.2f} {r['peak_rss_mb']:>12.0f} {t_ratio:>13.2f} "
                  f"{m_ratio:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
