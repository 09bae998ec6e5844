"""`synpro demo` (what `make demo` runs): the whole SynPro loop at toy scale on a laptop CPU.

1. a data-bound organic pool: N documents of the packaged web sample (or --input JSONL);
2. the SynPro loop (`synpro run`): tiny GPT pretraining until the reference loss plateaus, then the
   influence probe, a few GRPO steps per generator (offline SmolLM2), a synthetic round for the
   documents the model finds hardest, and pretraining continues on the scheduled blend;
3. the repetition baseline with the same token budget: until the refresh point both runs are the
   same computation (same data order, same seed), so the baseline starts from the SynPro run's
   plateau checkpoint and continues on the organic pool alone;
4. zero-shot multiple-choice accuracy of both final checkpoints (`synpro eval`);
5. the report (`synpro report`), with every number read from the two runs' logs.

Everything lands in OUT (default runs/demo): OUT/synpro/, OUT/repetition/, OUT/report/report.md.
Rerunning continues where it stopped (the loop's state.json, the baseline's checkpoints).
"""
from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time

from synpro_megatron.fsutil import atomic_write_text, read_json
from synpro_megatron.pretrain.data import DEFAULT_WEB_SAMPLE
from synpro_megatron.rundir import RunDir


def _write_pool(src: str, dst: str, n_docs: int, seed: int) -> int:
    """A fixed random sample of n_docs documents (stable for a given seed), as JSONL."""
    opener = gzip.open if src.endswith(".gz") else open
    with opener(src, "rt", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(lines)), min(n_docs, len(lines))))
    atomic_write_text(dst, "".join(lines[i] if lines[i].endswith("\n") else lines[i] + "\n" for i in picked))
    return len(picked)


def loop_config(pool: str, out: str, args) -> dict:
    doc_losses = RunDir(os.path.join(out, "synpro")).probe_doc_losses(1)
    return {
        "model": "tiny",
        "input": pool,
        # a small pool needs a larger held-out share for 16 evaluation windows of held-out text
        "held_out": 0.1,
        "token_budget": args.budget_tokens,
        "max_rounds": 1,
        "seed": args.seed,
        "parallel": {"tp": 1, "pp": 1, "nproc_per_node": 1},
        "train": {"micro_batch": 4, "global_batch": 8, "seq_length": args.seq_len, "lr": 2e-3,
                  "eval_interval": args.eval_interval, "save_interval": args.eval_interval, "chunk_evals": 2},
        "plateau": {"metric": "reference_loss", "smoothing": "ema", "ema_alpha": 0.5, "window": 2,
                    "rel_threshold": args.plateau_threshold, "patience": 1, "min_steps_after_refresh": 0},
        "generators": {
            "kinds": ["rephrase", "reformat"],
            # the probe's reference factors (64 reference documents, the probe default) are the ones
            # the GRPO influence reward loads: computed once per plateau checkpoint
            "probe_args": ["--doc-losses"],
            # short sources, so that a 64-token completion can be a whole rewrite the gate may pass
            # (a cut-off one never does, and a group of zero rewards teaches nothing); on a CPU the
            # prompt length is most of a GRPO step's cost. No --source-jsonl: GRPO and synthesis
            # read the run's prepared pool, held-out documents excluded.
            "train_args": ["--steps", str(args.grpo_steps), "--num-prompts", "2", "--num-generations", "4",
                           "--max-source-tokens", "64", "--max-completion-length", "64"],
            # --few-shot: a 135M generator follows a worked example far better than written rules,
            # but then answers with the example's own entries: --anchor-first-entry starts each
            # reformat answer on the document (and synthesis bans the example's names by default).
            # Short pieces (reformat) and two samples per piece: the best faithful one of each is kept
            "synth_args": ["--select", f"top-loss:{args.synth_fraction}",
                           "--doc-losses", doc_losses, "--max-new-tokens", "160", "--max-source-tokens", "300",
                           "--batch-size", "8", "--temperature", "0.5", "--candidates", "2",
                           "--repetition-penalty", "1.0", "--few-shot", "--anchor-first-entry"],
        },
        "blend": {"organic": 0.6, "new_round": {"rephrase": 0.2, "reformat": 0.2}, "earlier_rounds": 0.0},
    }


def _refresh_step(synpro_dir: str):
    """Step of the first plateau that started a round (from the loop log), or None."""
    path = RunDir(synpro_dir).loop_log
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "plateau" and str(rec.get("action", "")).startswith("refresh"):
                return int(rec["step"])
    return None


def run_repetition_baseline(synpro_dir: str, base_dir: str) -> None:
    """Continue the SynPro run's pre-refresh checkpoint on organic data only, to the same budget."""
    from synpro_megatron.pretrain.config import PretrainConfig
    from synpro_megatron.pretrain.launch import config_to_args

    synpro, baseline = RunDir(synpro_dir), RunDir(base_dir)
    cfg = PretrainConfig.from_dict(read_json(synpro.pretrain_config))
    step = _refresh_step(synpro_dir)
    os.makedirs(base_dir, exist_ok=True)
    if step is not None and not os.path.exists(baseline.latest_file):
        # Shared prefix: copy the checkpoint and the metrics up to the refresh point.
        dst = baseline.checkpoint(step)
        if os.path.exists(dst):
            shutil.rmtree(dst)
        shutil.copytree(synpro.checkpoint(step), dst, ignore=shutil.ignore_patterns("influence"))
        with open(synpro.metrics, encoding="utf-8") as f:
            kept = [line for line in f if json.loads(line).get("step", 0) <= step]
        atomic_write_text(baseline.metrics, "".join(kept))
        atomic_write_text(baseline.latest_file, f"{step}\n")  # last: the baseline now has a checkpoint
    base = PretrainConfig.from_dict({**json.loads(cfg.to_json()), "run_dir": base_dir, "blend_schedule": None,
                                     "synthetic": {}, "resume": True, "stop_at_sample": None})
    cmd = [sys.executable, "-m", "synpro_megatron.pretrain", *config_to_args(base)]
    print(f"[synpro demo] repetition baseline: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)


def run(args) -> int:
    from synpro_megatron.eval.report import build_report
    from synpro_megatron.loop.config import LoopConfig
    from synpro_megatron.loop.controller import Controller
    from synpro_megatron.loop.runner import StageFailed

    t0 = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    pool = os.path.join(out, "organic_pool.jsonl")
    if not os.path.exists(pool):
        n = _write_pool(args.input or DEFAULT_WEB_SAMPLE, pool, args.docs, args.seed)
        print(f"[synpro demo] organic pool: {n} documents -> {pool}", flush=True)
    cfg_path = os.path.join(out, "synpro_loop.json")
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(loop_config(pool, out, args), f, indent=1)
    cfg = LoopConfig.load(cfg_path)
    synpro_dir = os.path.join(out, "synpro")
    try:
        state = Controller(cfg, synpro_dir, echo=lambda m: print(m, flush=True)).run()
    except StageFailed as e:
        print(f"synpro demo: error: {e}", file=sys.stderr)
        return 1
    print(f"[synpro demo] SynPro loop done: {state.tokens} tokens, {state.rounds_done} round(s) "
          f"({time.time() - t0:.0f} s)", flush=True)
    run_repetition_baseline(synpro_dir, os.path.join(out, "repetition"))
    for run_dir in (synpro_dir, os.path.join(out, "repetition")):  # zero-shot multiple choice, both runs
        subprocess.run([sys.executable, "-m", "synpro_megatron.cli", "eval", "--checkpoint", run_dir,
                        "--limit-per-task", str(args.mc_limit)], check=True)
    result = build_report(out)
    print(f"[synpro demo] finished in {time.time() - t0:.0f} s; report: {result['report']}", flush=True)
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("demo", help="the whole SynPro loop at toy scale, with a repetition baseline and a report")
    p.add_argument("--input", default=None, help="JSONL(.gz) corpus (default: the packaged web sample)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--docs", type=int, default=70,
                   help="organic pool size (documents): small = data-bound (~3.5 epochs in the default budget)")
    p.add_argument("--budget-tokens", type=int, default=128 * 8 * 120, help="pretraining tokens per run")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--eval-interval", type=int, default=10)
    p.add_argument("--plateau-threshold", type=float, default=0.03)
    p.add_argument("--grpo-steps", type=int, default=2)
    p.add_argument("--synth-fraction", type=float, default=0.15, help="rewrite this fraction of the pool (hardest first)")
    p.add_argument("--mc-limit", type=int, default=20, help="multiple-choice examples per task in the final eval")
    p.add_argument("--seed", type=int, default=1234)
    p.set_defaults(func=run)
