"""Pretraining throughput: tokens/s per config (and model FLOPs utilization on GPU).

CPU (default): the `tiny` config on the packaged web sample, TP=1 and TP=2 side by side.
GPU: `400m` and `1b` in bf16 (pass --configs 400m 1b); MFU uses the card's dense bf16 peak.

    python bench/pretrain_throughput.py [--configs tiny] [--steps 8] [--tp 1 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

from synpro_megatron.data.prepare import PrepareConfig, prepare
from synpro_megatron.pretrain.config import get_model_config
from synpro_megatron.pretrain.data import DEFAULT_WEB_SAMPLE

# Dense bf16 tensor-core peaks (TFLOP/s) of common training cards.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "B200": 2250.0}
VOCAB = 49152


def model_flops_per_token(mc) -> float:
    """6 * params (matmuls, fwd+bwd) + attention scores (12 * layers * hidden * seq), per token."""
    n = mc.num_params(VOCAB) - VOCAB * mc.hidden_size  # input embedding is a lookup, not a matmul
    return 6 * n + 12 * mc.num_layers * mc.hidden_size * mc.seq_length


def peak_flops():
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def run(corpus, config, tp, steps, workdir, gpu):
    mc = get_model_config(config)
    nproc = max(tp, torch.cuda.device_count() if gpu else tp)
    micro = 4 if config == "tiny" else 2
    global_batch = micro * (nproc // tp) * 2
    run_dir = os.path.join(workdir, f"{config}-tp{tp}")
    cmd = [sys.executable, "-m", "synpro_megatron.cli", "pretrain", "--config", config, "--data", corpus,
           "--run-dir", run_dir, "--tp", str(tp), "--nproc-per-node", str(nproc), "--max-steps", str(steps),
           "--micro-batch", str(micro), "--global-batch", str(global_batch), "--eval-interval", "0",
           "--save-interval", "0", "--lr-warmup-steps", "1"]
    if gpu:
        cmd.append("--bf16")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if '"train"' in line]
    tps = statistics.median(r["tokens_per_s"] for r in recs[2:])  # skip warm-up steps
    peak = peak_flops()
    mfu = tps * model_flops_per_token(mc) / (peak * nproc) if peak else None
    return {"config": config, "tp": tp, "procs": nproc, "seq": mc.seq_length, "global_batch": global_batch,
            "tokens_per_s": tps, "mfu": mfu}


def main():
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser()
    p.add_argument("--configs", nargs="+", default=["400m", "1b"] if gpu else ["tiny"])
    p.add_argument("--tp", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="prepare only the first N documents (faster)")
    args = p.parse_args()
    device = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as work:
        corpus = os.path.join(work, "organic")
        prepare(PrepareConfig(input=DEFAULT_WEB_SAMPLE, output=corpus, held_out=0.02, workers=2, limit=args.limit))
        rows = [run(corpus, c, tp, args.steps, work, gpu) for c in args.configs for tp in args.tp]
    print(f"device: {device}")
    print(f"{'config':>6} {'tp':>3} {'procs':>5} {'seq':>5} {'gbs':>4} {'tokens/s':>10} {'MFU':>7}")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"{r['config']:>6} {r['tp']:>3} {r['procs']:>5} {r['seq']:>5} {r['global_batch']:>4} "
              f"{r['tokens_per_s']:>10.1f} {mfu:>7}")


if __name__ == "__main__":
    main()
