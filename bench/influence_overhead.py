"""Cost of data influence on the product paths, three ratios measured side by side in one process.

1. Pretraining step with always-on valuation (`synpro pretrain --value-documents`) against without:
   the trainer's own model + optimizer (`build_model_and_optimizer`) and micro-batch schedule
   (`run_microbatches`), packed rows of several documents each; the "on" step has the
   `DocumentValuation` hooks (segment cu_seqlens, loss scale, per-segment kernel scores, per-document
   losses, rows appended to the store). Steps alternate on/off; medians. The reference-factor refresh
   (once per evaluation) is timed on its own and built outside the timed region.
2. The probe: packed scoring (many texts per row, cu_seqlens) against the old one-text-per-row
   scoring, same texts and same reference factors: texts/s and the largest score difference.
3. The kernel against the reference op on the [s, b, h] tensors of a hooked layer (CUDA only; on CPU
   only the reference op runs: the Triton interpreter is a correctness tool, so backend="auto" picks
   the reference op there).

    python bench/influence_overhead.py [--config tiny] [--micro-batch 4] [--seq 256] [--rounds 7]
                                       [--checkpoint DIR] [--texts 48]

Without --checkpoint, part 2 trains a 2-step tiny checkpoint in a temporary directory first.
CPU times are process CPU time of one thread (stable on a shared machine); GPU times are wall time.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from synpro_megatron.cli import quiet_optional_dependency_warnings


def _device_name(gpu: bool) -> str:
    return torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _sync(gpu):
    if gpu:
        torch.cuda.synchronize()


def _random_docs_batch(micro_batch, seq, vocab, gen):
    """One micro-batch of packed rows: documents of random length 8..seq/2 tokens per row."""
    tokens = torch.randint(0, vocab, (micro_batch, seq), generator=gen)
    seg_len, seg_doc = [], []
    for _ in range(micro_batch):
        left = seq
        while left > 0:
            n = min(left, int(torch.randint(8, max(9, seq // 2), (1,), generator=gen)))
            seg_len.append(n)
            seg_doc.append(len(seg_doc))
            left -= n
    batch = {"tokens": tokens, "labels": torch.roll(tokens, -1, 1), "loss_mask": torch.ones(micro_batch, seq),
             "position_ids": torch.arange(seq).unsqueeze(0).expand(micro_batch, seq).contiguous()}
    return batch, [0] * len(seg_len), seg_doc, seg_len


def bench_step(args, gpu, out_dir):
    from synpro_megatron.influence.valuation import DocumentValuation
    from synpro_megatron.pretrain.config import PretrainConfig
    from synpro_megatron.pretrain.model import padded_vocab_size
    from synpro_megatron.pretrain.trainer import build_model_and_optimizer, run_microbatches

    vocab = 49152
    cfg = PretrainConfig(run_dir=out_dir, data="unused", model=args.config, seq_length=args.seq,
                         micro_batch=args.micro_batch, global_batch=args.micro_batch * args.microbatches,
                         lr=1e-5, min_lr=1e-6, lr_warmup_steps=0, bf16=gpu, max_steps=1000)
    gpt, ddp, opt, sched, _ = build_model_and_optimizer(cfg, vocab)
    gen = torch.Generator().manual_seed(0)
    batches = [_random_docs_batch(args.micro_batch, args.seq, padded_vocab_size(vocab, 1), gen)
               for _ in range(args.microbatches)]
    ref_batches = [_random_docs_batch(args.micro_batch, args.seq, vocab, gen)[0] for _ in range(2)]
    val = DocumentValuation(gpt, cfg, None, {"organic": "unused"}, resume_step=0,
                            num_microbatches=args.microbatches)
    # CPU: process CPU time (1 thread), which the other jobs of a shared machine disturb far less
    # than wall time; GPU: wall time after a synchronize.
    clock = time.perf_counter if gpu else time.process_time
    t = clock()
    val.refresh(ref_batches)
    _sync(gpu)
    refresh_s = clock() - t

    def step(valued: bool, step_no: int) -> float:
        val.capture.active = valued

        def stream():
            for b, src, doc, ln in batches:
                if valued:
                    val.announce(b, src, doc, ln)
                yield b

        _sync(gpu)
        t0 = clock()
        ddp.zero_grad_buffer()
        opt.zero_grad()
        run_microbatches(ddp, stream(), args.microbatches, args.seq, args.micro_batch, False, True)
        opt.step()
        if valued:
            val.end_step(step_no, opt.param_groups[0]["lr"])
        _sync(gpu)
        return clock() - t0

    for i in range(2):  # warm-up: allocator, kernels, autotune of backend="auto"
        step(False, i), step(True, i)
    off, on = [], []
    for i in range(args.rounds):
        off.append(step(False, i))
        on.append(step(True, i))
    val.close()
    n_docs = sum(len(b[2]) for b in batches)
    return {"off_s": statistics.median(off), "on_s": statistics.median(on), "refresh_s": refresh_s,
            "docs_per_step": n_docs, "layers": len(val.capture.layer_names)}


def _tiny_checkpoint(work):
    from synpro_megatron.data.prepare import PrepareConfig, prepare
    from synpro_megatron.pretrain.data import DEFAULT_WEB_SAMPLE

    prepare(PrepareConfig(input=DEFAULT_WEB_SAMPLE, output=os.path.join(work, "organic"), limit=200,
                          held_out=0.1, workers=1))
    cmd = [sys.executable, "-m", "synpro_megatron.cli", "pretrain", "--data", os.path.join(work, "organic"),
           "--run-dir", os.path.join(work, "run"), "--config", "tiny", "--seq-len", "256", "--micro-batch", "2",
           "--global-batch", "2", "--max-steps", "2", "--eval-interval", "0", "--save-interval", "0"]
    subprocess.run(cmd, check=True, capture_output=True)
    return os.path.join(work, "run", "checkpoints", "iter_0000002")


def bench_probe(args, work):
    from synpro_megatron.influence.probe import InfluenceProbe
    from synpro_megatron.pretrain.data import DEFAULT_WEB_SAMPLE

    clock = time.perf_counter if torch.cuda.is_available() else time.process_time
    ckpt = args.checkpoint or _tiny_checkpoint(work)
    with gzip.open(DEFAULT_WEB_SAMPLE, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f][:args.texts]
    # GRPO completions / reformat entries: a sentence or a few, of varied length
    texts = [d[:120 + 40 * (i % 8)] for i, d in enumerate(docs)]
    probe = InfluenceProbe(ckpt, max_ref_docs=16, cache=False, batch_size=4)
    res = {}
    for packing in (True, False, True, False):
        probe.packing = packing
        t = clock()
        scores = probe.score(texts)
        res.setdefault(packing, []).append((clock() - t, scores))
    probe.packing = True
    n_rows = len(probe._rows(probe._tokenize(texts)))
    probe.close()
    packed_t = min(t for t, _ in res[True])
    rows_t = min(t for t, _ in res[False])
    a, b = res[True][0][1], res[False][0][1]
    return {"texts": len(texts), "packed_texts_per_s": len(texts) / packed_t, "rows_texts_per_s": len(texts) / rows_t,
            "max_rel_diff": float((a - b).abs().max() / b.abs().max()),
            "rows_packed": n_rows, "max_len": probe.max_len}


def bench_kernel(args, gpu):
    from synpro_megatron.kernels import per_sample_score

    dev = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    s, b, d_in, d_out, k = args.seq, args.micro_batch, 1024, 4096, 32
    x = torch.randn(s, b, d_in, device=dev, dtype=dtype)
    g = torch.randn(s, b, d_out, device=dev, dtype=dtype)
    cu = torch.arange(0, s * b + 1, 64)
    p_in, p_out = torch.randn(k, d_in, device=dev), torch.randn(k, d_out, device=dev)
    ref = torch.randn(k, k, device=dev)
    backends = ["reference", "triton"] if gpu else ["reference"]
    clock = time.perf_counter if gpu else time.process_time
    times = {}
    for be in backends:
        fn = lambda be=be: per_sample_score(x, g, cu, p_in, p_out, ref, backend=be)  # noqa: E731
        fn()
        _sync(gpu)
        t = clock()
        for _ in range(args.rounds):
            fn()
        _sync(gpu)
        times[be] = (clock() - t) / args.rounds
    return {"shape": f"[s={s}, b={b}] {d_in}->{d_out}, k={k}, {str(dtype).replace('torch.', '')}", **times}


def main():
    quiet_optional_dependency_warnings()
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="tiny")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--microbatches", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--texts", type=int, default=48)
    p.add_argument("--skip-probe", action="store_true")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args()

    from synpro_megatron.pretrain.trainer import init_distributed

    gpu = torch.cuda.is_available()
    if not gpu:
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        init_distributed(1, 1, 1234)
        step = bench_step(args, gpu, os.path.join(work, "step"))
        kern = bench_kernel(args, gpu)
        probe = None if args.skip_probe else bench_probe(args, work)
    print(f"device: {_device_name(gpu)}; config {args.config}, {args.microbatches} x micro-batch {args.micro_batch}"
          f" x seq {args.seq}")
    ratio = step["on_s"] / step["off_s"]
    print(f"1. pretraining step ({step['layers']} linear layers, {step['docs_per_step']} documents/step): "
          f"off {step['off_s']:.4f} s, valuation on {step['on_s']:.4f} s -> ratio {ratio:.3f} "
          f"(goal <= {'1.03' if gpu else '1.10'}); factor refresh (per evaluation) {step['refresh_s']:.3f} s")
    if probe:
        print(f"2. probe, {probe['texts']} short texts (max_len {probe['max_len']}, packed into {probe['rows_packed']} rows): "
              f"packed {probe['packed_texts_per_s']:.1f} texts/s vs one per row {probe['rows_texts_per_s']:.1f} texts/s "
              f"-> {probe['packed_texts_per_s'] / probe['rows_texts_per_s']:.2f}x; max |score diff|/max|score| "
              f"{probe['max_rel_diff']:.1e}")
    line = f"3. per_sample_score {kern['shape']}: reference op {kern['reference'] * 1e3:.2f} ms"
    if "triton" in kern:
        line += f", kernel {kern['triton'] * 1e3:.2f} ms -> {kern['reference'] / kern['triton']:.2f}x"
    else:
        line += " (kernel not timed on CPU: interpreter only; backend='auto' uses the reference op)"
    print(line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": _device_name(gpu), "step": step, "probe": probe, "kernel": kern,
                       "step_ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
