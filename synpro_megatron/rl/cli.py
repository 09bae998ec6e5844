"""`synpro train-generator`."""
from __future__ import annotations

import sys

from synpro_megatron.generators.backends import add_sampling_args
from synpro_megatron.generators.prompts import KINDS
from synpro_megatron.rewards.cli import add_reward_model_flags, reward_configs


def register_cli(sub) -> None:
    t = sub.add_parser("train-generator", help="GRPO-train a rephrase/reformat generator (TRL) with the SynPro rewards")
    t.add_argument("--kind", choices=KINDS, required=True)
    t.add_argument("--checkpoint", default=None,
                   help="pretraining checkpoint (dir, checkpoints/ root or run dir) for the influence reward "
                        "(default: the run's newest)")
    t.add_argument("--run-dir", required=True,
                   help="the run root: the generator goes to RUN_DIR/rounds/round_K/generators/KIND")
    t.add_argument("--round", type=int, default=1, help="the round K the generator is for")
    t.add_argument("--output", default=None, help="explicit output folder for the trained generator")
    t.add_argument("--generator", default=None, help="start policy: HF folder (default: offline SmolLM2-135M-Instruct)")
    t.add_argument("--source-jsonl", default=None,
                   help="documents to rewrite (default: the run's prepared organic pool without its held-out "
                        "documents; the packaged web sample only when the run has no prepared data)")
    t.add_argument("--organic", default=None, help="prepared organic prefix (default: RUN_DIR/data/organic)")
    t.add_argument("--reference-jsonl", default=None, help="reference set for the influence probe (default: packaged)")
    t.add_argument("--no-influence", action="store_true", help="train without the influence reward")
    t.add_argument("--steps", type=int, default=240)
    t.add_argument("--num-prompts", type=int, default=64)
    t.add_argument("--num-generations", type=int, default=None, help="group size (default 8 on GPU, 4 on CPU)")
    t.add_argument("--prompts-per-device", type=int, default=None)
    t.add_argument("--grad-accum", type=int, default=None)
    t.add_argument("--max-completion-length", type=int, default=None)
    t.add_argument("--max-source-tokens", type=int, default=None)
    t.add_argument("--lr", type=float, default=1e-6)
    t.add_argument("--beta", type=float, default=0.005)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--no-vllm", action="store_true", help="generate rollouts with transformers even on GPU")
    t.add_argument("--save-steps", type=int, default=None,
                   help="checkpoint the trainer every N steps (default 50, as the paper's 30-60)")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its newest checkpoint (step count, reward log, data order)")
    t.add_argument("--gpus", default="1",
                   help="GPUs on this node to train on: N or 'all' (the visible ones); more than one relaunches "
                        "under accelerate with one colocated vLLM engine per GPU")
    t.add_argument("--strategy", choices=["zero2", "fsdp"], default="zero2",
                   help="multi-GPU sharding: DeepSpeed ZeRO-2 (the paper's) or FSDP2")
    add_sampling_args(t, "rollouts (synthesis with this generator then samples the same way)")
    t.add_argument("--few-shot", action="store_true",
                   help="prompts start with a worked example (for small generators); synthesis then does the same")
    add_reward_model_flags(t, quality=True)
    t.set_defaults(func=_train_cli)


def _error(cmd: str, e: Exception) -> int:
    print(f"synpro {cmd}: error: {e}", file=sys.stderr)
    return 2


def _train_cli(args) -> int:
    from synpro_megatron.generators.backends import GeneratorLoadError, SamplingConfig
    from synpro_megatron.rl import launch
    from synpro_megatron.rl.grpo import DEFAULT_SAVE_STEPS, GRPORunConfig, generator_output_dir, train_generator

    sampling = SamplingConfig().override(temperature=args.temperature, top_p=args.top_p,
                                         repetition_penalty=args.repetition_penalty)
    cfg = GRPORunConfig(
        kind=args.kind, run_dir=args.run_dir, round=args.round, output_dir=args.output, generator=args.generator,
        checkpoint=args.checkpoint, reference_jsonl=args.reference_jsonl, source_jsonl=args.source_jsonl, organic=args.organic,
        influence=not args.no_influence, num_prompts=args.num_prompts, steps=args.steps,
        num_generations=args.num_generations, prompts_per_device=args.prompts_per_device,
        gradient_accumulation_steps=args.grad_accum, max_completion_length=args.max_completion_length,
        max_source_tokens=args.max_source_tokens, learning_rate=args.lr, beta=args.beta, seed=args.seed,
        use_vllm=False if args.no_vllm else None, few_shot=args.few_shot,
        save_steps=args.save_steps or DEFAULT_SAVE_STEPS, resume=args.resume, temperature=sampling.temperature,
        top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty)
    cfg.faithfulness, cfg.quality = reward_configs(args)
    visible = launch.visible_gpus() if args.gpus != "1" else 1
    try:
        gpus = max(1, visible) if args.gpus == "all" else int(args.gpus)
    except ValueError:
        return _error("train-generator", ValueError(f"--gpus {args.gpus!r}: expected a number or 'all'"))
    if gpus > 1 and not launch.inside_distributed_launch():
        import subprocess

        if visible < gpus:
            return _error("train-generator", ValueError(f"--gpus {gpus} but {visible} GPU(s) are visible"))
        argv = sys.argv[sys.argv.index("train-generator"):] if "train-generator" in sys.argv else None
        if argv is None:
            return _error("train-generator", ValueError("--gpus N > 1 needs the synpro command line to relaunch"))
        out_dir = generator_output_dir(cfg)
        cmd = launch.relaunch_command(argv, gpus, args.strategy, out_dir.parent / f".{out_dir.name}.launch")
        print("train-generator: " + " ".join(cmd), flush=True)
        return subprocess.call(cmd)
    try:
        out = train_generator(cfg)
    except (GeneratorLoadError, FileNotFoundError, ValueError, RuntimeError) as e:
        return _error("train-generator", e)
    print(f"wrote generator {out}")
    return 0
