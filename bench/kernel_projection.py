"""Benchmark per_sample_projection: reference op vs the naive materialise-G_b route (vs Triton on GPU).

All methods run interleaved in one process, so their ratios are measured side by side under the same
machine load. Default shape: B=8 documents of T=512 tokens, d_in=d_out=1024, k_in=k_out=32; fp32 on
CPU, bf16 (and fp32) on GPU. On GPU it also reports the kernel's achieved bandwidth, (bytes(x) +
bytes(g)) / time, against a measured device-to-device copy bandwidth, i.e. against the byte floor
(the projection must read x and g once).

    python bench/kernel_projection.py [--docs 8 --tokens 512 --d-in 1024 --d-out 1024 --k 32]

CPU timings are process CPU time with 1 thread by default (stable on a shared machine).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from synpro_megatron.kernels import (
    materialized_per_sample_projection,
    per_sample_projection,
    per_sample_score,
)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_once(fn, device) -> float:
    # CPU: process CPU time, which other jobs on a shared machine disturb far less than wall time.
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    _sync(device)
    t0 = clock()
    fn()
    _sync(device)
    return (clock() - t0) * 1e3


def bench(methods: dict, device, rounds: int, reps: dict) -> dict:
    """Median ms per call; methods are interleaved round by round so load drifts hit all alike."""
    for fn in methods.values():  # warm-up (Triton compile, allocator)
        fn()
    samples = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            for _ in range(reps.get(name, 1)):
                samples[name].append(time_once(fn, device))
    return {name: statistics.median(v) for name, v in samples.items()}


def copy_bandwidth_gbs(device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write bytes per second)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    ms = bench({"copy": lambda: dst.copy_(src)}, device, rounds=10, reps={})["copy"]
    return 2 * nbytes / (ms * 1e-3) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=512, help="tokens per document")
    ap.add_argument("--d-in", type=int, default=1024)
    ap.add_argument("--d-out", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32, help="k_in = k_out")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    B, T, di, do, k = args.docs, args.tokens, args.d_in, args.d_out, args.k
    N = B * T
    cu = torch.arange(B + 1, dtype=torch.int32) * T
    dtypes = [torch.float32] if device.type == "cpu" else [torch.bfloat16, torch.float32]
    gen = torch.Generator().manual_seed(0)
    copy_bw = copy_bandwidth_gbs(device) if device.type == "cuda" else None

    clock = "wall time" if device.type == "cuda" else "process CPU time"
    print(f"per_sample_projection: B={B} docs x T={T} tokens, d_in={di}, d_out={do}, k={k}, "
          f"device={device}, {torch.get_num_threads()} CPU thread(s), median {clock}")
    if copy_bw:
        print(f"device-to-device copy bandwidth: {copy_bw:.0f} GB/s")
    for dtype in dtypes:
        x = torch.randn(N, di, generator=gen).to(device, dtype)
        g = torch.randn(N, do, generator=gen).to(device, dtype)
        p_in = (torch.randn(k, di, generator=gen) / k ** 0.5).to(device)
        p_out = (torch.randn(k, do, generator=gen) / k ** 0.5).to(device)
        ref_proj = torch.randn(k, k, generator=gen).to(device)
        methods = {
            "reference op (fp32 projections + segmented v^T u)":
                lambda: per_sample_projection(x, g, cu, p_in, p_out, backend="reference"),
            "naive: materialise G_b (fp32), then project":
                lambda: materialized_per_sample_projection(x, g, cu, p_in, p_out, dtype=torch.float32),
            "naive: materialise G_b (float64 oracle)":
                lambda: materialized_per_sample_projection(x, g, cu, p_in, p_out),
            "score <G_b, R> (reference op)":
                lambda: per_sample_score(x, g, cu, p_in, p_out, ref_proj, backend="reference"),
        }
        if device.type == "cuda":
            methods["triton fused (deterministic)"] = lambda: per_sample_projection(
                x, g, cu, p_in, p_out, backend="triton", deterministic=True)
            methods["triton fused (atomic)"] = lambda: per_sample_projection(
                x, g, cu, p_in, p_out, backend="triton", deterministic=False)
            methods["triton fused score"] = lambda: per_sample_score(
                x, g, cu, p_in, p_out, ref_proj, backend="triton")
        reps = {name: (1 if "naive" in name else 3) for name in methods}
        ms = bench(methods, device, rounds=args.rounds, reps=reps)
        base = ms["reference op (fp32 projections + segmented v^T u)"]
        nbytes = x.numel() * x.element_size() + g.numel() * g.element_size()
        print(f"\ndtype {str(dtype).replace('torch.', '')}; x + g = {nbytes / 2**20:.1f} MiB")
        print("| method | median ms | time / reference op |" + (" GB/s (x+g) | % of copy bw |"
                                                                 if copy_bw else ""))
        print("|---|---|---|" + ("---|---|" if copy_bw else ""))
        for name, t in ms.items():
            row = f"| {name} | {t:.2f} | {t / base:.2f}x |"
            if copy_bw:
                gbs = nbytes / (t * 1e-3) / 1e9
                row += f" {gbs:.0f} | {100 * gbs / copy_bw:.0f}% |"
            print(row)


if __name__ == "__main__":
    main()
