"""`synpro pretrain` and `python -m synpro_megatron.pretrain`.

Run it under torchrun (the normal cluster path), or give `--nproc-per-node N` and it re-executes
itself under torchrun on this node. One process with no launcher also works (TP=PP=1).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from synpro_megatron.errors import UserError, guard_existing_output, run_child
from synpro_megatron.pretrain.config import MODEL_CONFIGS, PretrainConfig


def add_pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", dest="model", default="tiny", choices=sorted(MODEL_CONFIGS), help="model size")
    p.add_argument("--data", required=True, help="prefix written by `synpro prepare`")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    p.add_argument("--nproc-per-node", type=int, default=None,
                   help="launch this many processes with torchrun (default: tp*pp when not under torchrun)")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--seq-len", dest="seq_length", type=int, default=None)
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--num-attention-heads", type=int, default=None)
    p.add_argument("--ffn-hidden-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--min-lr", type=float, default=6e-5)
    p.add_argument("--lr-warmup-steps", type=int, default=10)
    p.add_argument("--lr-decay-style", choices=["cosine", "constant", "linear"], default="cosine")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument("--eval-interval", type=int, default=20)
    p.add_argument("--eval-iters", type=int, default=4)
    p.add_argument("--reference", default=None, help="reference-set JSONL (default: packaged reference_qa.jsonl)")
    p.add_argument("--reference-field", default="text")
    p.add_argument("--save-interval", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue from run-dir/checkpoints/latest")
    p.add_argument("--resume-from", type=int, default=None, metavar="STEP",
                   help="continue from this step's checkpoint (implies --resume)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run dir that holds a run: the old one is moved aside, never deleted")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--blend-schedule", default=None, help="BlendSchedule JSON/YAML over organic + synthetic sources")
    p.add_argument("--synthetic", action="append", default=[], metavar="NAME=PREFIX",
                   help="a synthetic source of the blend schedule (repeatable)")
    p.add_argument("--stop-at-sample", type=int, default=None)
    p.add_argument("--value-documents", action="store_true",
                   help="score every training document's influence and loss inside the step -> RUN_DIR/valuation")


def config_from_args(args) -> PretrainConfig:
    synthetic = {}
    for item in args.synthetic:
        name, sep, prefix = item.partition("=")
        if not sep or not name or not prefix:
            raise ValueError(f"--synthetic expects NAME=PREFIX, got {item!r}")
        synthetic[name] = prefix
    fields = {f: getattr(args, f) for f in (
        "run_dir", "data", "model", "num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
        "seq_length", "tokenizer", "tp", "pp", "micro_batch", "global_batch", "max_steps", "lr", "min_lr",
        "lr_warmup_steps", "lr_decay_style", "weight_decay", "clip_grad", "seed", "dropout", "bf16",
        "eval_interval", "eval_iters", "reference", "reference_field", "save_interval", "resume",
        "resume_from", "blend_schedule", "stop_at_sample", "value_documents")}
    fields["resume"] = fields["resume"] or fields["resume_from"] is not None
    return PretrainConfig(**fields, synthetic=synthetic)


def config_to_args(cfg: PretrainConfig) -> list:
    """The `synpro pretrain` arguments that rebuild `cfg` (inverse of config_from_args)."""
    parser = argparse.ArgumentParser()
    add_pretrain_args(parser)
    args = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of actions
        if not action.option_strings or action.dest in ("help", "nproc_per_node", "overwrite"):
            continue
        flag = action.option_strings[0]
        if action.dest == "synthetic":
            for name, prefix in sorted(cfg.synthetic.items()):
                args += [flag, f"{name}={prefix}"]
            continue
        value = getattr(cfg, action.dest)
        if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
            if value:
                args.append(flag)
        elif value is not None:
            args += [flag, repr(value) if isinstance(value, float) else str(value)]
    return args


def _under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(nproc: int, argv) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "synpro_megatron.pretrain", *argv]


def main(argv=None) -> int:
    from synpro_megatron.cli import quiet_optional_dependency_warnings

    quiet_optional_dependency_warnings()
    parser = argparse.ArgumentParser(prog="synpro pretrain")
    add_pretrain_args(parser)
    args = parser.parse_args(argv)
    return run(args, sys.argv[1:] if argv is None else list(argv))


def holds_a_run(run_dir: str) -> bool:
    """Anything a rerun without --resume would lose: checkpoints or logged metrics."""
    from synpro_megatron.pretrain.checkpoint import checkpoint_root

    root = checkpoint_root(run_dir)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    return ((os.path.isdir(root) and any(n == "latest" or n.startswith("iter_") for n in os.listdir(root)))
            or (os.path.exists(metrics) and os.path.getsize(metrics) > 0))


def guard_run_dir(cfg: PretrainConfig, overwrite: bool) -> None:
    """A fresh run (no --resume) never writes over an earlier one: refuse, or move it aside."""
    if cfg.resume:  # the checkpoint to resume from must be there and complete (checked before any model)
        from synpro_megatron.pretrain.checkpoint import resume_checkpoint

        resume_checkpoint(cfg.run_dir, cfg.resume_from)
        return
    if os.environ.get("RANK", "0") != "0" and overwrite:
        return  # another rank moves the old run aside
    guard_existing_output(cfg.run_dir, holds_a_run(cfg.run_dir), overwrite, "pretrain",
                          "a pretraining run (checkpoints or metrics.jsonl)",
                          "rerun with --resume to continue it (--resume-from STEP for an older checkpoint)")


def run(args, argv) -> int:
    try:
        cfg = config_from_args(args)
        from synpro_megatron.pretrain.data import check_inputs

        check_inputs(cfg)  # damaged or unused inputs fail here, before any process or model starts
        guard_run_dir(cfg, args.overwrite)
    except (ValueError, UserError, FileNotFoundError) as e:
        print(f"synpro pretrain: error: {e}", file=sys.stderr)
        return 2
    nproc = args.nproc_per_node or cfg.tp * cfg.pp
    if not _under_torchrun() and nproc > 1:
        try:  # a layout that cannot work fails here, not in every rank after startup
            cfg.validate(nproc)
        except ValueError as e:
            print(f"synpro pretrain: error: {e} (--nproc-per-node {nproc})", file=sys.stderr)
            return 2
        argv = [a for a in argv if a not in ("pretrain", "--overwrite")]  # the old run is aside already
        log = os.path.join(cfg.run_dir, "logs", f"pretrain-{time.strftime('%Y%m%d-%H%M%S')}.stderr")
        return run_child(torchrun_command(nproc, argv), "pretrain", log)
    from synpro_megatron.pretrain.trainer import destroy_distributed, pretrain

    try:
        cfg.validate(int(os.environ.get("WORLD_SIZE", 1)))
        summary = pretrain(cfg)
    except (ValueError, FileNotFoundError, UserError) as e:  # bad config or inputs: one clear line, no traceback
        print(f"synpro pretrain: error: {e}", file=sys.stderr)
        return 2
    finally:
        destroy_distributed()
    if os.environ.get("RANK", "0") == "0":
        print(f"pretrain done: step {summary['step']}, {summary['tokens']} tokens, "
              f"checkpoint {summary['checkpoint']}")
    return 143 if summary.get("preempted") else 0
