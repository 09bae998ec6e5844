"""`synpro train-generator` and `synpro synthesize`."""
from __future__ import annotations

import json
import sys

from synpro_megatron.generators.prompts import KINDS


def register_cli(sub) -> None:
    t = sub.add_parser("train-generator", help="GRPO-train a rephrase/reformat generator (TRL) with the SynPro rewards")
    t.add_argument("--kind", choices=KINDS, required=True)
    t.add_argument("--checkpoint", default=None,
                   help="pretraining checkpoint (dir, checkpoints/ root or run dir) for the influence reward")
    t.add_argument("--run-dir", required=True,
                   help="output root: the generator goes to RUN_DIR/generators/KIND (or .../round_K/KIND with --round)")
    t.add_argument("--round", type=int, default=None)
    t.add_argument("--output", default=None, help="explicit output folder for the trained generator")
    t.add_argument("--generator", default=None, help="start policy: HF folder (default: offline SmolLM2-135M-Instruct)")
    t.add_argument("--source-jsonl", default=None,
                   help="organic documents (default: the prepared corpus of the run, else the packaged web sample)")
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
    t.add_argument("--few-shot", action="store_true",
                   help="prompts start with a worked example (for small generators); synthesis then does the same")
    _add_reward_model_flags(t, quality=True)
    t.set_defaults(func=_train_cli)

    s = sub.add_parser("synthesize", help="rewrite the organic pool with a generator into a synthetic round")
    s.add_argument("--kind", choices=KINDS, required=True)
    s.add_argument("--generator", default=None, help="trained generator folder (default: offline SmolLM2)")
    s.add_argument("--round", type=int, required=True)
    s.add_argument("--run-dir", required=True)
    s.add_argument("--select", default="all", help="all | top-loss:FRACTION (needs --doc-losses)")
    s.add_argument("--doc-losses", default=None, help=".npy aligned with the sources, or jsonl {id, loss}")
    s.add_argument("--source-jsonl", default=None,
                   help="documents to rewrite (default: the prepared corpus of the run, else the packaged web sample)")
    s.add_argument("--limit", type=int, default=None, help="only the first N source documents")
    s.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto")
    s.add_argument("--batch-size", type=int, default=16, help="documents per journal batch")
    s.add_argument("--max-new-tokens", type=int, default=1024)
    s.add_argument("--max-source-tokens", type=int, default=None)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=0.9)
    s.add_argument("--repetition-penalty", type=float, default=1.15)
    s.add_argument("--candidates", type=int, default=1,
                   help="samples per document piece; the best one passing the gate is kept")
    s.add_argument("--few-shot", dest="few_shot", action="store_true", default=None,
                   help="prompts start with a worked example (default: as the generator was trained)")
    s.add_argument("--no-few-shot", dest="few_shot", action="store_false")
    _add_reward_model_flags(s, quality=False)
    s.add_argument("--prefill", action="store_true", help="start each answer with the lead line / heading")
    s.add_argument("--no-clean", action="store_true",
                   help="no clean-ups before the gate (meta sentences, loops, cut-off tails, repeated entries)")
    s.add_argument("--no-entry-filter", action="store_true",
                   help="reformat: gate the entries as one block instead of keeping the faithful ones")
    s.add_argument("--seed", type=int, default=1234)
    s.add_argument("--tokenizer", default=None, help="pretraining tokenizer for the output (default: SmolLM2)")
    s.add_argument("--restart", action="store_true", help="discard this job's journal and start over")
    s.set_defaults(func=_synth_cli)


def _error(cmd: str, e: Exception) -> int:
    print(f"synpro {cmd}: error: {e}", file=sys.stderr)
    return 2


def _add_reward_model_flags(p, quality: bool) -> None:
    p.add_argument("--judge-model", default=None,
                   help="LLM faithfulness judge (model path; vLLM on GPU, transformers on CPU) labelling each "
                        "sentence/entry Faithful/Unfaithful_Topic/Unfaithful_Content; default: the trained verifier")
    p.add_argument("--verifier", default="auto",
                   help="trained cross-encoder verifier: auto (the cached one when built), off, or a folder")
    if quality:
        p.add_argument("--quality-model", default=None,
                       help="model-based quality scorer (DataMan-style rating prompt; model path), mixed with the heuristics")


def _reward_configs(args):
    from synpro_megatron.rewards.faithfulness import FaithfulnessConfig
    from synpro_megatron.rewards.quality import QualityConfig

    faith = FaithfulnessConfig(judge_model=args.judge_model, verifier=args.verifier)
    return faith, QualityConfig(classifier_model=getattr(args, "quality_model", None))


def _train_cli(args) -> int:
    from synpro_megatron.generators.backends import GeneratorLoadError
    from synpro_megatron.rl.grpo import GRPORunConfig, train_generator

    cfg = GRPORunConfig(
        kind=args.kind, run_dir=args.run_dir, round=args.round, output_dir=args.output, generator=args.generator,
        checkpoint=args.checkpoint, reference_jsonl=args.reference_jsonl, source_jsonl=args.source_jsonl,
        influence=not args.no_influence, num_prompts=args.num_prompts, steps=args.steps,
        num_generations=args.num_generations, prompts_per_device=args.prompts_per_device,
        gradient_accumulation_steps=args.grad_accum, max_completion_length=args.max_completion_length,
        max_source_tokens=args.max_source_tokens, learning_rate=args.lr, beta=args.beta, seed=args.seed,
        use_vllm=False if args.no_vllm else None, few_shot=args.few_shot)
    cfg.faithfulness, cfg.quality = _reward_configs(args)
    try:
        out = train_generator(cfg)
    except (GeneratorLoadError, FileNotFoundError, ValueError, RuntimeError) as e:
        return _error("train-generator", e)
    print(f"wrote generator {out}")
    return 0


def _synth_cli(args) -> int:
    from synpro_megatron.generators.backends import GeneratorLoadError
    from synpro_megatron.generators.synthesize import SynthesisConfig, run_synthesis

    cfg = SynthesisConfig(
        kind=args.kind, run_dir=args.run_dir, round=args.round, generator=args.generator,
        source_jsonl=args.source_jsonl, select=args.select, doc_losses=args.doc_losses, limit=args.limit,
        backend=args.backend, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        max_source_tokens=args.max_source_tokens, temperature=args.temperature, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        candidates=args.candidates, few_shot=args.few_shot, prefill=args.prefill, clean=not args.no_clean,
        filter_entries=not args.no_entry_filter, seed=args.seed, tokenizer=args.tokenizer, restart=args.restart)
    cfg.faithfulness = _reward_configs(args)[0]
    try:
        result = run_synthesis(cfg)
    except (GeneratorLoadError, FileNotFoundError, ValueError, TimeoutError) as e:
        return _error("synthesize", e)
    print(json.dumps({k: v for k, v in result.items() if k != "job"}, indent=1))
    return 0
