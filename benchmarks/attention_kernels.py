"""Benchmark: one layer's attention, three ways to get its output and column sums.

Shape of benchmarks/observe.py's model (16 heads / 4 kv heads, head_dim 64), float32, one causal
sequence of T tokens. Alternated in one process, median of paired ratios to sdpa with range:

  sdpa     torch's flash kernel (what a plain forward runs), output only
  fused    ``blockwise_attention``: output and column sums from one pass (what observation runs)
  lse      the flash kernel for output and log-sum-exp, then per query block one Q.K^T with the
           lse folded in as an extra dimension, exp, and a sum over queries
  exact    sdpa, then ``blockwise_attention`` without P.V (what ``exact=True`` runs)

    python benchmarks/attention_kernels.py --length 2048 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from interventions.models.attention import blockwise_attention

HEADS, KV_HEADS, DIM = 16, 4, 64


def lse_column_sums(q, k, v, scale, block=256):
    """Output and log-sum-exp from the flash kernel; column sums as sum_t exp(q_t.k*scale - lse_t)."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)
    T, groups = q.shape[2], HEADS // KV_HEADS
    q_aug = torch.cat([q[0] * scale, -lse[0, ..., None]], -1).view(KV_HEADS, groups, T, DIM + 1)
    k_aug = torch.cat([k[0], torch.ones(KV_HEADS, T, 1)], -1)
    sums = torch.zeros(KV_HEADS, groups, T)
    buf = torch.empty(KV_HEADS * groups * block * T)
    tri = torch.ones(block, block, dtype=torch.bool).triu(1)
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        n = t1 - t0
        s = buf[:KV_HEADS * groups * n * t1].view(KV_HEADS, groups * n, t1)
        torch.bmm(q_aug[:, :, t0:t1].reshape(KV_HEADS, groups * n, DIM + 1), k_aug[:, :t1].transpose(1, 2), out=s)
        s.exp_()
        s4 = s.view(KV_HEADS, groups, n, t1)
        s4[..., t0:t1].masked_fill_(tri[:n, :n], 0.0)
        sums[..., :t1] += s4.sum(2)
    return out, sums.view(1, HEADS, T)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    T, scale = args.length, DIM ** -0.5
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, T, DIM, generator=g) for h in (HEADS, KV_HEADS, KV_HEADS))
    methods = {
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                                         enable_gqa=True),
        "fused": lambda: blockwise_attention(q, k, v, None, scale),
        "lse": lambda: lse_column_sums(q, k, v, scale),
        "exact": lambda: (methods["sdpa"](), blockwise_attention(q, k, None, None, scale)),
    }
    fused_sums = blockwise_attention(q, k, v, None, scale)[1].total
    assert torch.allclose(lse_column_sums(q, k, v, scale)[1], fused_sums, atol=1e-4)
    times = {m: [] for m in methods}
    for r in range(args.repeats + 1):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; T = {T}, {HEADS} heads / {KV_HEADS} kv "
          f"heads, head_dim {DIM}; median [range] of {args.repeats} paired ratios to sdpa")
    for name in methods:
        ratios = [a / b for a, b in zip(times[name], times["sdpa"])]
        print(f"{name:>6} {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]  "
              f"(median {statistics.median(times[name]):.3f} s)")


if __name__ == "__main__":
    main()
