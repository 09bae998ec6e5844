"""`synpro blend check-megatron`: find a broken Megatron-LM launch before the job starts.

    synpro blend check-megatron --schedule S.json --synpro-source organic=/d/org ... -- \
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model DIR --seq-length 2048 ...

The Megatron arguments are parsed the way the installed Megatron-LM parses them: with
`megatron.training.arguments.add_megatron_arguments` when `megatron.training` imports (the core
>= 0.17 wheels, or a Megatron-LM checkout on PYTHONPATH); otherwise (megatron-core 0.16.1 ships
no megatron.training) with `mirror_parser()`, which declares the subset of Megatron-LM's flags the
data path reads, under upstream's names and defaults; flags outside that subset are listed as
not checked. Then it checks conflicting flags, the sources against the schedule and on disk,
Megatron's tokenizer against each PREFIX.meta.json, builds the real train/valid datasets
(megatron-core GPTDatasets, in a temporary cache) and prints the realized mix of the first N
samples against the schedule.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
from typing import Optional

import numpy

from synpro_megatron.blending.schedule import ScheduleError

# megatron_lm (torch, megatron-core) is imported inside the functions: `synpro blend inspect`
# registers this subcommand and must stay numpy-only.

# pretrain_gpt.py's args_defaults: without tokenizer flags Megatron builds a GPT-2 BPE tokenizer.
PRETRAIN_GPT_DEFAULTS = {"tokenizer_type": "GPT2BPETokenizer"}
# Megatron's own vocab-file tokenizers (build_tokenizer's MEGATRON_TOKENIZERS)
GPT2_STYLE_TOKENIZERS = ("GPT2BPETokenizer", "BertWordPieceLowerCase", "BertWordPieceCase")


def mirror_parser() -> argparse.ArgumentParser:
    """The Megatron-LM flags the data path reads (names, types, defaults as in arguments.py)."""
    p = argparse.ArgumentParser(prog="megatron args", allow_abbrev=False, add_help=False)
    flag = p.add_argument
    # tokenizer
    flag("--tokenizer-type", type=str, default=None)
    flag("--tokenizer-model", type=str, default=None)
    flag("--tokenizer-metadata", type=str, default=None)
    flag("--tokenizer-special-tokens", type=str, nargs="+", default=None)
    flag("--vocab-size", type=int, default=None)
    flag("--vocab-file", type=str, default=None)
    flag("--merge-file", type=str, default=None)
    flag("--legacy-tokenizer", action="store_true", default=False)
    flag("--tiktoken-pattern", type=str, default=None)
    flag("--tiktoken-num-special-tokens", type=int, default=1000)
    flag("--tokenizer-sentencepiece-legacy", action="store_true", default=False)
    flag("--tokenizer-hf-use-fast", action="store_true", default=False)
    flag("--tokenizer-hf-include-special-tokens", action="store_true", default=False)
    flag("--trust-remote-code", action="store_true", default=False)
    # data
    for name in ("--data-path", "--train-data-path", "--valid-data-path", "--test-data-path"):
        flag(name, nargs="*", default=None)
    for name in ("--data-args-path", "--per-split-data-args-path", "--per-dataset-sequences-path",
                 "--data-cache-path", "--object-storage-cache-path", "--split", "--phase-transition-iterations"):
        flag(name, type=str, default=None)
    for name in ("--mock-data", "--sft", "--fim-data", "--full-validation", "--multiple-validation-sets",
                 "--reset-position-ids", "--reset-attention-mask", "--eod-mask-loss",
                 "--dataloader-fast-cache-load", "--dataloader-defer-npy-index-mmap",
                 "--allow-ambiguous-pad-tokens", "--dataloader-inter-document-masking",
                 "--sequence-parallel", "--hybrid-context-parallel"):
        flag(name, action="store_true", default=False)
    flag("--no-mmap-bin-files", action="store_false", dest="mmap_bin_files")
    flag("--no-create-attention-mask-in-dataloader", action="store_false", dest="create_attention_mask_in_dataloader")
    flag("--num-dataset-builder-threads", type=int, default=1)
    flag("--mid-level-dataset-surplus", type=float, default=0.005)
    flag("--dataloader-type", type=str, default=None, choices=["single", "cyclic", "external"])
    # training / parallelism the data path depends on
    flag("--seq-length", type=int, default=None)
    flag("--seed", type=int, default=1234)
    for name in ("--train-samples", "--train-iters", "--global-batch-size", "--micro-batch-size", "--mtp-num-layers"):
        flag(name, type=int, default=None)
    flag("--eval-iters", type=int, default=100)
    flag("--eval-interval", type=int, default=1000)
    flag("--rampup-batch-size", nargs="*", default=None)
    for name in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size"):
        flag(name, type=int, default=1)
    flag("--pipeline-model-parallel-layout", type=str, default=None)
    return p


def parse_megatron_args(argv: list[str]) -> tuple[argparse.Namespace, str, list[str]]:
    """(args, how they were parsed, flags not checked)."""
    from synpro_megatron.blending import megatron_lm

    try:
        from megatron.training.arguments import add_megatron_arguments
    except ImportError:
        add_megatron_arguments = None
    if add_megatron_arguments is not None:
        parser = argparse.ArgumentParser(allow_abbrev=False)
        parser = add_megatron_arguments(parser)
        parser = megatron_lm.with_synpro_args()(parser)
        args, unknown = parser.parse_known_args(argv)
        how = "megatron.training.arguments (installed Megatron-LM)"
        # Megatron's own flags it does not know are errors there: report them as problems.
        not_checked = []
        if unknown:
            raise SystemExit(f"error: Megatron-LM does not know {unknown}")
    else:
        parser = megatron_lm.add_synpro_args(mirror_parser())
        args, not_checked = parser.parse_known_args(argv)
        how = ("a mirror of Megatron-LM's data/tokenizer flags (megatron.training is not importable: "
               "megatron-core 0.16.1 ships only megatron.core)")
    for key, value in PRETRAIN_GPT_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    # what validate_args derives and the provider reads
    if getattr(args, "split", None) is None and not getattr(args, "per_split_data_args_path", None):
        args.split = megatron_lm.DEFAULT_SPLIT
    args.data_parallel_size = getattr(args, "data_parallel_size", None) or 1
    args.iteration = getattr(args, "iteration", 0) or 0
    return args, how, [a for a in not_checked if a.startswith("--")]


def _file_problems(sources) -> list[str]:
    from synpro_megatron.blending import megatron_lm

    problems = []
    named = dict(sources.prefixes)
    if sources.heldout:
        named["held-out"] = sources.heldout
    for name, prefix in named.items():
        if megatron_lm.is_object_storage_prefix(prefix):
            continue
        for suffix in (".bin", ".idx"):
            if not os.path.isfile(prefix + suffix):
                problems.append(f"source {name!r}: {prefix + suffix} not found")
    return problems


def check(argv: list[str], num_samples: int = 1000, window: Optional[int] = None, out=None) -> int:
    from synpro_megatron.blending import megatron_lm

    out = out if out is not None else sys.stdout  # looked up per call (tests and callers swap sys.stdout)

    args, how, not_checked = parse_megatron_args(argv)
    print(f"parsed with {how}", file=out)
    if not_checked:
        print(f"not checked (outside the mirrored subset): {' '.join(not_checked)}", file=out)
    # every problem at once: the flags, then the rest as if the flags were fixed
    problems = megatron_lm.flag_problems(args)
    sources = None
    try:
        sources = megatron_lm.resolve_sources(megatron_lm.without_conflicting_flags(args))
    except (megatron_lm.SynProArgsError, ScheduleError, FileNotFoundError) as e:
        problems.append(str(e))
    if sources is not None:
        problems += _file_problems(sources)
    if not args.seq_length:
        problems.append("--seq-length is required")
    tokenizer = None
    if args.tokenizer_type in GPT2_STYLE_TOKENIZERS and not getattr(args, "vocab_file", None):
        problems.append(f"--tokenizer-type {args.tokenizer_type} (pretrain_gpt.py's default) without --vocab-file: "
                        "Megatron stops at an AssertionError (<= 0.16) or tries to download a vocabulary; pass "
                        "--tokenizer-type HuggingFaceTokenizer --tokenizer-model <the folder `synpro prepare` used>")
        args = None  # nothing more to build
    try:
        tokenizer = megatron_lm.build_megatron_tokenizer(args) if args is not None else None
    except Exception as e:  # noqa: BLE001 - Megatron raises bare AssertionErrors here
        problems.append(f"Megatron cannot build its tokenizer (--tokenizer-type {args.tokenizer_type}): "
                        f"{type(e).__name__}: {e or 'no message'}; pass --tokenizer-type HuggingFaceTokenizer "
                        "--tokenizer-model <the folder `synpro prepare` used>")
    if tokenizer is not None and sources is not None:
        errors, warnings = megatron_lm.tokenizer_problems(tokenizer, sources.prefixes, args)
        problems += errors
        for warning in warnings:
            print(f"warning: {warning}", file=out)
    if problems:
        return _report(problems, out)
    assert args is not None and sources is not None

    start = megatron_lm.phase_start_sample(args)
    with tempfile.TemporaryDirectory(prefix="synpro-check-") as cache:
        check_args = copy.copy(args)
        check_args.data_cache_path = cache  # the check writes nothing beside the data
        check_args.train_samples, check_args.train_iters = start + num_samples, None
        valid_samples = None if args.full_validation else 1
        provider_log = logging.getLogger(megatron_lm.__name__)
        level = provider_log.level
        provider_log.setLevel(logging.ERROR)  # its tokenizer warnings are printed above already
        try:
            train, valid, _ = megatron_lm.train_valid_test_datasets_provider(
                [num_samples, valid_samples, 0], args=check_args, tokenizer=tokenizer)
            first = train[0]
        except Exception as e:  # noqa: BLE001 - shown as one line, not a traceback wall
            return _report([f"building the datasets failed: {type(e).__name__}: {e}"], out)
        finally:
            provider_log.setLevel(level)
        dataset_index = numpy.asarray(train.dataset_index[:num_samples], dtype=numpy.int64)
    schedule = sources.schedule
    print(f"train: {len(train)} samples of {len(first['tokens'])} tokens from global sample {start}; "
          f"valid: {'none' if valid is None else f'{len(valid)} samples'} from "
          f"{sources.heldout or sources.prefixes[schedule.sources[0]] + ' (--split part)'}", file=out)
    print(_mix_table(schedule, dataset_index, start, window or max(1, num_samples // 10)), file=out)
    print("ok", file=out)
    return 0


def _mix_table(schedule, dataset_index, start: int, window: int) -> str:
    n = dataset_index.shape[0]
    edges = numpy.unique(numpy.minimum(numpy.arange(0, n + window, window), n))
    cumulative = schedule.cumulative_targets(edges + start)
    target = numpy.diff(cumulative, axis=0) / numpy.diff(edges)[:, None]
    header = ["samples"] + [f"{name} target/realized" for name in schedule.sources]
    rows = []
    for w, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        counts = numpy.bincount(dataset_index[lo:hi], minlength=len(schedule.sources)) / (hi - lo)
        rows.append([f"{start + lo}-{start + hi - 1}"]
                    + [f"{t * 100:6.2f}% / {r * 100:6.2f}%" for t, r in zip(target[w], counts)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(wd) for h, wd in zip(header, widths))]
    lines += ["  ".join(c.rjust(wd) for c, wd in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _report(problems: list[str], out) -> int:
    print(f"{len(problems)} problem(s):", file=out)
    for problem in problems:
        print(f"  - {problem}", file=out)
    return 2


def _run(args: argparse.Namespace) -> int:
    argv = list(args.megatron_args)
    argv = ["--synpro-schedule", args.schedule] + [a for s in args.synpro_source for a in ("--synpro-source", s)] \
        + (["--synpro-heldout", args.synpro_heldout] if args.synpro_heldout else []) + argv
    return check(argv, args.num_samples, args.window)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


class _KeepMegatronArgsParser(argparse.ArgumentParser):
    """Keeps the flags it does not know (the Megatron-LM ones) in `megatron_args` instead of failing."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.megatron_args = [a for a in extras if a != "--"]
        return namespace, []


def register_blend_subcommand(blend_sub) -> None:
    """Adds `check-megatron` under `synpro blend` (called by blending/cli.py)."""
    p = blend_sub.add_parser(
        "check-megatron", allow_abbrev=False, help="check a Megatron-LM launch line with the SynPro provider before the job starts",
        description="Parses the Megatron-LM arguments after the SynPro ones as Megatron does, checks "
                    "tokenizer vs PREFIX.meta.json, sources vs schedule, conflicting flags, and prints the "
                    "realized mix of the first N samples.")
    p.add_argument("--schedule", required=True, help="blend schedule (.json/.yaml), as --synpro-schedule")
    p.add_argument("--synpro-source", action="append", default=[], metavar="NAME=PREFIX", required=True)
    p.add_argument("--synpro-heldout", default=None, metavar="PREFIX")
    p.add_argument("--num-samples", type=_positive_int, default=1000, help="samples whose mix is printed")
    p.add_argument("--window", type=_positive_int, default=None, help="samples per row (default N/10)")
    p.set_defaults(func=_run, megatron_args=[])
    p.__class__ = _KeepMegatronArgsParser  # every other flag is Megatron-LM's, checked by `check`
