"""Benchmark: the observation pass against a plain forward and the paper's way.

Model: a random-init Qwen2 of realistic shape scaled down (hidden 1024, 8 layers, 16 heads / 4
kv heads, intermediate 2816, vocab 8192), float32. Methods:

  plain     a plain sdpa forward (logits of the last position only)
  observe   the observation pass: per-layer scalars + sink scores, the layer's attention output
            and its column sums from one fused pass (the default)
  exact     the observation pass with ``exact=True``: sdpa's own output, sink scores in a second pass
  paper     eager attention with output_attentions=True and output_hidden_states=True, then sink
            scores from the materialised attention (the paper's way); refused, not tried, when its
            T x T attentions alone would exceed ``--paper-max-gb``

Time: for each T one process builds the model once and alternates the methods (plain, observe,
exact, [paper], plain, observe, ...), ``--repeats`` rounds after a warm-up round; each method's
time is divided by the plain forward of the same round, and the table gives the median of these
paired ratios with their range. Timings on shared machines swing by a third; paired ratios do not.
Memory: each method's peak RSS from its own fresh process (one forward), as a ratio to plain's.

    python benchmarks/observe.py                                   # T = 1024 2048 4096 8192
    python benchmarks/observe.py --lengths 512 --repeats 2         # quick check
    python benchmarks/observe.py --lengths 16384 32768 --no-time --methods plain observe paper   # long rows
    python benchmarks/observe.py --device cuda --dtype bfloat16    # the same table on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

LAYERS, HEADS, VOCAB = 8, 16, 8192
METHODS = ("plain", "observe", "exact", "paper")


def build_model(device: str = "cpu", dtype: str = "float32", length: int = 8192):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=1024, intermediate_size=2816, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=4, max_position_embeddings=max(8192, length))
    model = Qwen2ForCausalLM(config).eval().requires_grad_(False)
    return model.to(device=device, dtype=getattr(torch, dtype))


def paper_bytes(length: int, dtype_bytes: int = 4) -> int:
    """The paper's way keeps every layer's [H, T, T] attention at once (output_attentions)."""
    return LAYERS * HEADS * length * length * dtype_bytes


class Bench:
    """One model, every method as a callable, in one process."""

    def __init__(self, length: int, device: str, dtype: str):
        import torch

        from interventions.models.adapters import adapter_for
        from interventions.models.attention import make_hookable
        from interventions.models.load import LoadedModel, ModelSource

        self.torch = torch
        self.device = device
        self.model = build_model(device, dtype, length)
        make_hookable(self.model)  # unobserved layers run sdpa itself: plain stays plain
        self.loaded = LoadedModel(self.model, None, adapter_for(self.model.config), ModelSource("bench", "bench"),
                                  dtype, device, "sdpa")
        self.ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(0)).to(device)

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def run(self, method: str) -> None:
        from interventions.observation import observe_tokens

        torch = self.torch
        if method == "plain":
            with torch.inference_mode():
                self.model(input_ids=self.ids, logits_to_keep=1)
        elif method in ("observe", "exact"):
            observe_tokens(self.loaded, self.ids[0], exact=method == "exact")
        elif method == "paper":
            self.model.set_attn_implementation("eager")
            try:
                with torch.inference_mode():
                    out = self.model(input_ids=self.ids, output_attentions=True, output_hidden_states=True,
                                     logits_to_keep=1)
                    T = self.ids.shape[1]
                    counts = T - torch.arange(T, device=self.ids.device)
                    [(a[0].float().sum(dim=1) / counts).mean(0).cpu() for a in out.attentions]
                    [h[0].float().norm(dim=-1).cpu() for h in out.hidden_states]
                    del out
            finally:
                self.model.set_attn_implementation("sdpa")
                from interventions.models.attention import make_hookable
                make_hookable(self.model)
        self.sync()


def time_child(length: int, methods: list[str], repeats: int, device: str, dtype: str) -> dict:
    """Alternate the methods, one warm-up round then ``repeats`` rounds; seconds per round and method."""
    bench = Bench(length, device, dtype)
    rounds = []
    for r in range(repeats + 1):
        row = {}
        for method in methods:
            t0 = time.perf_counter()
            bench.run(method)
            row[method] = time.perf_counter() - t0
        if r:
            rounds.append(row)
        print(json.dumps({"progress": row}), file=sys.stderr, flush=True)
    return {"T": length, "rounds": rounds}


def memory_child(length: int, method: str, device: str, dtype: str) -> dict:
    """Peak memory of one forward of ``method`` in this fresh process (RSS on CPU, allocator peak on CUDA)."""
    bench = Bench(length, device, dtype)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        bench.torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    bench.run(method)
    seconds = time.perf_counter() - t0
    if device.startswith("cuda"):
        peak_mb = bench.torch.cuda.max_memory_allocated() / 2**20
        base_mb = 0.0
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        base_mb = base_kb / 1024
    return {"method": method, "T": length, "peak_mb": peak_mb, "after_build_mb": base_mb, "seconds": seconds}


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        return {"error": lines[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=5, help="alternated rounds after one warm-up round")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on CUDA unless given")
    parser.add_argument("--paper-max-gb", type=float, default=8.0,
                        help="refuse the paper's way when its attentions alone would need more")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-memory runs")
    parser.add_argument("--no-time", action="store_true",
                        help="only the fresh-process runs (one forward per method: peak memory and its time)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        if kind == "time":
            length, methods, repeats, device, dtype = rest
            print(json.dumps(time_child(length, methods, repeats, device, dtype)))
        else:
            length, method, device, dtype = rest
            print(json.dumps(memory_child(length, method, device, dtype)))
        return
    import torch

    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    dtype_bytes = 2 if dtype == "bfloat16" else 4
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device} {dtype}; random-init Qwen2 "
          f"hidden 1024, {LAYERS} layers, {HEADS} heads / 4 kv heads; time: median [range] of {args.repeats} paired "
          f"ratios to plain, methods alternated in one process; memory: peak of one forward in a fresh process")
    print(f"{'T':>6} {'method':>8} {'time x plain':>20} {'plain s (median)':>17} {'peak MB':>9} "
          f"{'above build MB':>15} {'memory x plain':>15}")
    for length in args.lengths:
        need = paper_bytes(length, dtype_bytes)
        methods = [m for m in args.methods if m != "paper" or need <= args.paper_max_gb * 2**30]
        timed = {"rounds": []} if args.no_time else _child(["time", length, methods, args.repeats, args.device, dtype])
        memory = {} if args.no_memory else {m: _child(["memory", length, m, args.device, dtype]) for m in methods}
        rounds = timed.get("rounds", [])
        if args.no_time and "plain" in memory and "seconds" in memory["plain"]:  # one unpaired forward each
            rounds = [{m: r["seconds"] for m, r in memory.items() if "seconds" in r}]
        plain_s = [r["plain"] for r in rounds if "plain" in r]
        plain_mem = memory.get("plain", {}).get("peak_mb")
        for method in args.methods:
            if method not in methods:
                print(f"{length:>6} {method:>8}  refused: its attentions alone need {need / 2**30:.1f} GB "
                      f"(L x H x T^2 x {dtype_bytes} bytes) > --paper-max-gb {args.paper_max_gb:g}", flush=True)
                continue
            if "error" in timed:
                print(f"{length:>6} {method:>8}  failed: {timed['error']}", flush=True)
                break
            ratios = [r[method] / r["plain"] for r in rounds if method in r and "plain" in r]
            m = memory.get(method, {})
            peak = m.get("peak_mb")
            above = peak - m["after_build_mb"] if peak is not None else None
            mem_ratio = peak / plain_mem if peak and plain_mem else None
            print(f"{length:>6} {method:>8} {spread(ratios):>20} "
                  f"{statistics.median(plain_s) if plain_s else float('nan'):>17.2f} "
                  f"{peak if peak is not None else float('nan'):>9.0f} "
                  f"{above if above is not None else float('nan'):>15.0f} "
                  f"{mem_ratio if mem_ratio else float('nan'):>15.2f}"
                  + (f"  memory run failed: {m['error']}" if "error" in m else ""), flush=True)


if __name__ == "__main__":
    main()
