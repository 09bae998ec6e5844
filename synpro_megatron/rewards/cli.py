"""`synpro train-verifier`: build the faithfulness verifier's weakly supervised pairs from an organic
corpus and fine-tune the cross-encoder (rewards/verifier.py). Cached outside the repository."""
from __future__ import annotations

import sys
from pathlib import Path


def register_cli(sub) -> None:
    p = sub.add_parser("train-verifier",
                       help="train the faithfulness verifier (cross-encoder) on weakly supervised pairs from a corpus")
    p.add_argument("--corpus", default=None, help="jsonl(.gz) of {id, text} documents (default: the packaged web sample)")
    p.add_argument("--output", default=None,
                   help="model folder (default: ~/.cache/synpro/verifier-<recipe hash>, used by the rewards)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-docs", type=int, default=None, help="training documents (default: the recipe's)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--sentences-per-doc", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None, help="tokens per (premise, hypothesis) pair")
    p.add_argument("--force", action="store_true", help="retrain even when the folder exists")
    p.set_defaults(func=_train_verifier_cli)


def _train_verifier_cli(args) -> int:
    import dataclasses
    import shutil

    from synpro_megatron.rewards.verifier import VerifierRecipe, default_verifier_dir, train_verifier

    recipe = VerifierRecipe(seed=args.seed)
    if args.corpus:
        recipe.corpus = str(Path(args.corpus).resolve())
    if args.max_docs is not None:
        recipe.max_docs = args.max_docs
    for name in ("epochs", "sentences_per_doc", "max_length"):
        if getattr(args, name) is not None:
            setattr(recipe, name, getattr(args, name))
    try:
        out = Path(args.output) if args.output else default_verifier_dir(recipe)
        if (out / "config.json").exists() and not args.force:
            print(f"verifier already built: {out} (recipe {recipe.digest()}; --force retrains)")
            return 0
        if out.exists() and args.force:
            shutil.rmtree(out)
        train_verifier(recipe, out, log=lambda m: print(m, flush=True))
    except (FileNotFoundError, ValueError) as e:
        print(f"synpro train-verifier: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote verifier {out} ({dataclasses.asdict(recipe)})")
    return 0


def add_reward_model_flags(p, quality: bool) -> None:
    """The reward-model flags shared by train-generator and synthesize (and passed on by the loop)."""
    p.add_argument("--judge-model", default=None,
                   help="LLM faithfulness judge (model path; vLLM on GPU, transformers on CPU) labelling each "
                        "sentence/entry Faithful/Unfaithful_Topic/Unfaithful_Content; default: the trained verifier")
    p.add_argument("--verifier", default="auto",
                   help="trained cross-encoder verifier: auto (the cached default one when built and "
                        "trusted), train (the default one, trained first when missing), off, or a folder")
    p.add_argument("--verifier-rejects", action="store_true",
                   help="a sentence/entry the verifier labels unfaithful fails the gate (default: its labels "
                        "only scale the faithfulness score)")
    if quality:
        p.add_argument("--quality-model", default=None,
                       help="model-based quality scorer (DataMan-style rating prompt; model path), mixed with the heuristics")


def reward_configs(args):
    """(FaithfulnessConfig, QualityConfig) from the flags add_reward_model_flags added."""
    from synpro_megatron.rewards.faithfulness import FaithfulnessConfig
    from synpro_megatron.rewards.quality import QualityConfig

    faith = FaithfulnessConfig(judge_model=args.judge_model, verifier=args.verifier,
                               verifier_rejects=args.verifier_rejects)
    return faith, QualityConfig(classifier_model=getattr(args, "quality_model", None))
