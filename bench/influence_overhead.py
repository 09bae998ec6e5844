"""Overhead of per-document influence capture on a training step.

Times a forward+backward of the GPT with GradientCapture hooks (every linear layer, Kronecker
projection k x k, one document per row) against the same step without hooks, interleaved in one
process (median of N rounds). Goal: <= 1.15x on CPU, <= 1.05x on GPU.

    python bench/influence_overhead.py [--config tiny] [--batch 4] [--seq 256] [--k 32] [--rounds 7]
"""
import argparse
import os
import statistics
import time

import torch

from synpro_megatron.cli import quiet_optional_dependency_warnings


def main():
    quiet_optional_dependency_warnings()
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="tiny")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()

    from synpro_megatron.influence.hooks import GradientCapture
    from synpro_megatron.pretrain.config import get_model_config
    from synpro_megatron.pretrain.model import build_gpt_model
    from synpro_megatron.pretrain.trainer import init_distributed

    init_distributed(1, 1, 1234)
    gpu = torch.cuda.is_available()
    mc = get_model_config(args.config, seq_length=args.seq)
    model, _ = build_gpt_model(mc, 49152, 1, 1, bf16=gpu)
    dev = "cuda" if gpu else "cpu"
    tokens = torch.randint(0, 49152, (args.batch, args.seq), device=dev)
    labels = torch.randint(0, 49152, (args.batch, args.seq), device=dev)
    pos = torch.arange(args.seq, device=dev).unsqueeze(0).expand_as(tokens)

    def step():
        loss = model(tokens, pos, None, labels=labels).float().mean()
        loss.backward()
        for prm in model.parameters():
            prm.grad = None
        if gpu:
            torch.cuda.synchronize()

    capture = GradientCapture(model, k_in=args.k, k_out=args.k)
    capture.remove()  # built once (projection matrices cached); hooks added per timed round

    def timed(with_hooks):
        if with_hooks:
            c = GradientCapture(model, k_in=args.k, k_out=args.k)
        t = time.perf_counter()
        step()
        dt = time.perf_counter() - t
        if with_hooks:
            assert c.results()  # the projections were really computed
            c.remove()
        return dt

    for _ in range(2):  # warm-up (allocator, kernels, projection caches)
        timed(False), timed(True)
    base, hooked = [], []
    for _ in range(args.rounds):
        base.append(timed(False))
        hooked.append(timed(True))
    b, h = statistics.median(base), statistics.median(hooked)
    device = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"device: {device}; config {args.config}, batch {args.batch} x seq {args.seq}, k={args.k}, "
          f"{len(capture.layer_names)} linear layers hooked")
    print(f"{'step':>22} {'median s':>9}")
    print(f"{'fwd+bwd':>22} {b:9.4f}")
    print(f"{'fwd+bwd + projection':>22} {h:9.4f}")
    print(f"overhead ratio: {h / b:.3f} (goal <= {'1.05' if gpu else '1.15'})")


if __name__ == "__main__":
    main()
