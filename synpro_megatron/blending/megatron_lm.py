"""Scheduled blending in an existing Megatron-LM run (`pretrain_gpt.py`).

Megatron-LM up to core 0.16 (`pretrain(provider, ..., extra_args_provider=...)`)::

    +from synpro_megatron.blending.megatron_lm import with_synpro_args, train_valid_test_datasets_provider as synpro_provider
         pretrain(
    -        train_valid_test_datasets_provider,
    +        synpro_provider,
             ...
    -        extra_args_provider=add_modelopt_args if has_nvidia_modelopt else None,
    +        extra_args_provider=with_synpro_args(add_modelopt_args if has_nvidia_modelopt else None),

Megatron-LM with core >= 0.17 (`extra_args_provider` moved to `parse_and_validate_args()`)::

    +from synpro_megatron.blending.megatron_lm import with_synpro_args, train_valid_test_datasets_provider as synpro_provider
         args = parse_and_validate_args(
    -        extra_args_provider=add_modelopt_args if has_nvidia_modelopt else None,
    +        extra_args_provider=with_synpro_args(add_modelopt_args if has_nvidia_modelopt else None),
         ...
         pretrain(
             full_config,
    -        train_valid_test_datasets_provider,
    +        synpro_provider,

then launch with the tokenizer the data was prepared with (`--tokenizer-type HuggingFaceTokenizer
--tokenizer-model DIR`), `--synpro-schedule schedule.json --synpro-source organic=/data/organic
--synpro-source round1=/data/round1 --dataloader-type single`, and no --data-path.

* train: a `SynProBlendedDataset` over one GPTDataset per `--synpro-source`, each over *all* its
  documents, mixed per the schedule evaluated at the global sample index, so
  `consumed_train_samples` (and --phase-transition-iterations) resume it exactly;
* valid / test: the held-out documents `synpro prepare` wrote for the first (organic) source,
  `PREFIX_heldout.{bin,idx}` (or --synpro-heldout PREFIX); without such a file, the --split
  held-out part of the organic source (organic then trains on the rest).

`megatron.training` is imported only when no `args` are passed: it is absent from the
megatron-core 0.16.1 wheel (Python 3.11) and this module must import without it.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence

from synpro_megatron.blending.dataset import build_blended_dataset, build_source_datasets, is_object_storage_prefix
from synpro_megatron.blending.schedule import BlendSchedule

logger = logging.getLogger(__name__)

DEFAULT_SPLIT = "969,30,1"  # Megatron-LM's default --split
HELDOUT_SUFFIX = "_heldout"  # what `synpro prepare` writes beside PREFIX

# Megatron-LM data flags that pick the data themselves: with --synpro-* they would be ignored.
CONFLICTING_FLAGS = {
    "data_path": "--data-path", "data_args_path": "--data-args-path",
    "per_split_data_args_path": "--per-split-data-args-path", "train_data_path": "--train-data-path",
    "valid_data_path": "--valid-data-path", "test_data_path": "--test-data-path",
    "mock_data": "--mock-data", "sft": "--sft", "fim_data": "--fim-data",
}
# Flags whose behaviour depends on the end-of-document id being the one in the data.
EOD_FLAGS = {"eod_mask_loss": "--eod-mask-loss", "reset_position_ids": "--reset-position-ids",
             "reset_attention_mask": "--reset-attention-mask"}


class SynProArgsError(ValueError):
    """A Megatron-LM launch that cannot work with the SynPro provider (message lists every problem)."""


# ---------------------------------------------------------------------- arguments
def add_synpro_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The SynPro flags (an `extra_args_provider`; prefer `with_synpro_args`, which chains)."""
    group = parser.add_argument_group(title="synpro blending")
    group.add_argument("--synpro-schedule", type=str, default=None, metavar="PATH",
                       help="blend schedule (.json/.yaml): phases of target weights over named sources")
    group.add_argument("--synpro-source", type=str, action="append", default=[], metavar="NAME=PREFIX",
                       help="a schedule source and its Megatron .bin/.idx prefix; repeat per source")
    group.add_argument("--synpro-heldout", type=str, default=None, metavar="PREFIX",
                       help="validation/test documents (default: the first source's PREFIX_heldout "
                            "written by `synpro prepare`; without it, the --split held-out part)")
    return parser


def with_synpro_args(previous: Optional[Callable] = None) -> Callable:
    """An `extra_args_provider` that runs `previous` (e.g. add_modelopt_args) then adds ours."""

    def extra_args_provider(parser):
        if previous is not None:
            parser = previous(parser) or parser
        return add_synpro_args(parser)

    return extra_args_provider


def parse_sources(items: Sequence[str]) -> dict[str, str]:
    """['organic=/d/org_text_document', ...] -> {'organic': '/d/org_text_document', ...}."""
    sources: dict[str, str] = {}
    for item in items or []:
        name, sep, prefix = item.partition("=")
        name, prefix = name.strip(), prefix.strip()
        if not sep or not name or not prefix:
            raise ValueError(f"--synpro-source {item!r}: expected NAME=PREFIX")
        if name in sources:
            raise ValueError(f"--synpro-source: source {name!r} given twice")
        sources[name] = prefix
    return sources


def conflicting_flags(args) -> list[str]:
    """Megatron data flags set together with --synpro-*: each would be silently ignored."""
    return [flag for attr, flag in CONFLICTING_FLAGS.items() if getattr(args, attr, None)]


def phase_transition_iterations(args) -> list[int]:
    """--phase-transition-iterations as ints (Megatron's parser keeps the string 'i1,i2')."""
    value = getattr(args, "phase_transition_iterations", None)
    if not value:
        return []
    if isinstance(value, str):
        return [int(v) for v in value.split(",") if v.strip()]
    return [int(v) for v in value]


def phase_start_sample(args) -> int:
    """The global sample the current Megatron phase starts at (0 without phases).

    Megatron-LM rebuilds the train dataset at each phase (sized for the phase only) and starts
    its sampler at (iteration - last transition) * global batch, so the schedule must be offset
    by the phase's first sample; this mirrors get_train_valid_test_num_samples in training.py.
    """
    transitions = phase_transition_iterations(args)
    if not transitions:
        return 0
    if getattr(args, "rampup_batch_size", None):
        raise SynProArgsError("--phase-transition-iterations with --rampup-batch-size: the phase start "
                              "sample is not iteration * global batch; use a fixed --global-batch-size")
    iteration = int(getattr(args, "iteration", 0) or 0)
    last = max(t for t in (0, *transitions) if t <= iteration)
    return last * int(args.global_batch_size)


def total_train_samples(args, phase_samples: int, start: int) -> int:
    """The whole run's train samples (children are sized for it, the same in every phase)."""
    if getattr(args, "train_samples", None):
        return int(args.train_samples)
    if getattr(args, "train_iters", None) and getattr(args, "global_batch_size", None):
        return int(args.train_iters) * int(args.global_batch_size)
    return start + phase_samples


# ---------------------------------------------------------------------- ranks
def _mtp_on_this_rank(args, vp_stage: Optional[int]) -> bool:
    """megatron-core's mtp_on_this_rank, for the layout/MTP layers the args describe."""
    if not getattr(args, "mtp_num_layers", None):
        return False
    from megatron.core.transformer import multi_token_prediction as mtp

    layout = getattr(args, "pipeline_model_parallel_layout", None)
    if isinstance(layout, (str, list)):
        from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout

        layout = PipelineParallelLayerLayout(layout, args.pipeline_model_parallel_size)
    params = inspect.signature(mtp.mtp_on_this_rank).parameters
    if "config" in params:  # core <= 0.16: takes the TransformerConfig, reads these two fields
        view = argparse.Namespace(pipeline_model_parallel_layout=layout, mtp_num_layers=args.mtp_num_layers)
        return bool(mtp.mtp_on_this_rank(view, ignore_virtual=False, vp_stage=vp_stage))
    return bool(mtp.mtp_on_this_rank(layout=layout, mtp_num_layers=args.mtp_num_layers,
                                     ignore_virtual=False, vp_stage=vp_stage))


def is_dataset_built_on_rank(vp_stage: Optional[int] = None, args=None) -> bool:
    """Like pretrain_gpt.py: TP rank 0 of the first or last pipeline stage, or of a stage that
    holds multi-token-prediction layers (True without model parallelism)."""
    from megatron.core import parallel_state as mpu

    if not mpu.model_parallel_is_initialized():
        return True
    if mpu.get_tensor_model_parallel_rank() != 0:
        return False
    first_or_last = (mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
                     or mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage))
    return first_or_last or (args is not None and _mtp_on_this_rank(args, vp_stage))


# ---------------------------------------------------------------------- tokenizer
def _megatron_args():
    try:
        from megatron.training import get_args
    except ImportError as e:
        raise RuntimeError(
            "megatron.training is not importable (megatron-core 0.16.1 ships only megatron.core): "
            "pass args= explicitly"
        ) from e
    return get_args()


def build_megatron_tokenizer(args) -> Any:
    """The tokenizer Megatron-LM builds from these args (--legacy-tokenizer exists up to 0.16 only)."""
    if getattr(args, "legacy_tokenizer", False):
        from megatron.training import get_tokenizer

        return get_tokenizer()
    try:  # core >= 0.17
        from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer
    except ImportError:  # core 0.16
        from megatron.core.tokenizers.text.utils.build_tokenizer import build_tokenizer
    return build_tokenizer(args)


def read_meta(prefix: str) -> Optional[dict]:
    """PREFIX.meta.json written by `synpro prepare` (None when absent or on object storage)."""
    path = prefix + ".meta.json"
    if is_object_storage_prefix(prefix) or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SynProArgsError(f"{path}: unreadable ({e})") from None


def tokenizer_problems(tokenizer: Any, prefixes: dict[str, str], args=None) -> tuple[list[str], list[str]]:
    """(errors, warnings): Megatron's tokenizer against each source's PREFIX.meta.json.

    A different vocabulary size means different token ids: an error. A different end-of-document
    id matters only to the flags that look for it (--eod-mask-loss, --reset-*): an error with
    them, a warning without (documents are still separated by the data's own EOD token).
    """
    errors, warnings = [], []
    vocab = getattr(tokenizer, "vocab_size", None)
    eod = getattr(tokenizer, "eod", None)
    eod_flags = [flag for attr, flag in EOD_FLAGS.items() if args is not None and getattr(args, attr, False)]
    for name, prefix in prefixes.items():
        meta = read_meta(prefix)
        if meta is None:
            continue
        where = f"{prefix}.meta.json"
        if "vocab_size" in meta and vocab != meta["vocab_size"]:
            errors.append(f"source {name!r}: Megatron's tokenizer ({type(tokenizer).__name__}) has vocab_size "
                          f"{vocab}, but {where} was prepared with {meta.get('tokenizer_name')!r} "
                          f"(vocab_size {meta['vocab_size']}); pass --tokenizer-type HuggingFaceTokenizer "
                          f"--tokenizer-model <that tokenizer's folder>")
        if "eod" in meta and eod != meta["eod"]:
            text = (f"source {name!r}: Megatron's tokenizer ends documents with id {eod}, the data in {where} "
                    f"with id {meta['eod']}")
            if eod_flags:
                errors.append(text + f"; {', '.join(eod_flags)} would miss every document boundary")
            else:
                warnings.append(text + " (harmless without --eod-mask-loss/--reset-position-ids/"
                                       "--reset-attention-mask)")
    return errors, warnings


# ---------------------------------------------------------------------- dataset config
def _upstream_config_helper() -> Optional[Callable]:
    """pretrain_gpt.py's own core_gpt_dataset_config_from_args when it is the running script.

    Megatron-LM keeps that helper in the script, not in the package, at every version; when it
    is there we build from it (every field and check Megatron adds stays ours for free) and
    replace only the data fields.
    """
    helper = getattr(sys.modules.get("__main__"), "core_gpt_dataset_config_from_args", None)
    return helper if callable(helper) else None


def _upstream_data_args(args, tokenizer) -> dict:
    """The GPTDatasetConfig fields pretrain_gpt.py's core_gpt_dataset_config_from_args sets
    (same argument names, same parser defaults), for when that helper is not at hand."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    sequences_per_dataset = None
    if get("per_dataset_sequences_path"):
        with open(args.per_dataset_sequences_path, "r") as f:
            sequences_per_dataset = json.load(f)
    return {
        "random_seed": args.seed,
        "sequence_length": args.seq_length,
        "multiple_validation_sets": get("multiple_validation_sets", False),
        "full_validation": get("full_validation", False),
        "num_dataset_builder_threads": get("num_dataset_builder_threads", 1),
        "path_to_cache": get("data_cache_path"),
        "mmap_bin_files": get("mmap_bin_files", True),
        "tokenizer": tokenizer,
        "reset_position_ids": get("reset_position_ids", False),
        "reset_attention_mask": get("reset_attention_mask", False),
        "eod_mask_loss": get("eod_mask_loss", False),
        "create_attention_mask": get("create_attention_mask_in_dataloader", True),
        "object_storage_cache_path": get("object_storage_cache_path"),
        "mid_level_dataset_surplus": get("mid_level_dataset_surplus", 0.005),
        "allow_ambiguous_pad_tokens": get("allow_ambiguous_pad_tokens", False),
        "fast_cache_load": get("dataloader_fast_cache_load", False),
        "sequences_per_dataset": sequences_per_dataset,
        "defer_npy_index_mmap": get("dataloader_defer_npy_index_mmap", False),
        "context_parallel_size": get("context_parallel_size", 1),
        "data_parallel_size": get("data_parallel_size", 1),
        "sequence_parallel_size": get("tensor_model_parallel_size", 1) * bool(get("sequence_parallel", False)),
        "hybrid_context_parallel": get("hybrid_context_parallel", False),
        "inter_document_masking": get("dataloader_inter_document_masking", False),
    }


def gpt_dataset_config_from_args(args, train_prefixes: Sequence[str], heldout_prefixes: Sequence[str],
                                  tokenizer: Any = None):
    """A GPTDatasetConfig as Megatron-LM builds it, with our sources as the per-split blends.

    blend_per_split (not blend) keeps the config out of mock mode and valid with
    --dataloader-fast-cache-load; the weights come from the schedule, so none are given.
    """
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    heldout = (list(heldout_prefixes), None) if heldout_prefixes else None
    data = {"blend": None, "blend_per_split": [(list(train_prefixes), None), heldout, heldout], "split": None}
    helper = _upstream_config_helper()
    if helper is not None and tokenizer is None:
        return dataclasses.replace(helper(args), **data)

    tokenizer = tokenizer if tokenizer is not None else build_megatron_tokenizer(args)
    fields = {f.name: f for f in dataclasses.fields(GPTDatasetConfig) if f.init}
    values = _upstream_data_args(args, tokenizer)
    # A field this megatron-core lacks is fine while its flag is off (True == 1, hence `is`).
    unsupported = [name for name, value in values.items() if name not in fields
                   and not (value is None or value is False or (type(value) is int and value in (0, 1)))]
    if unsupported:
        import megatron.core

        raise SynProArgsError(f"megatron-core {getattr(megatron.core, '__version__', '?')}'s GPTDatasetConfig "
                              f"has no {unsupported}: that flag needs a newer megatron-core")
    return GPTDatasetConfig(**{k: v for k, v in values.items() if k in fields}, **data)


# ---------------------------------------------------------------------- the provider
@dataclasses.dataclass
class SynProSources:
    """What the flags resolve to: the schedule, train prefixes, and where validation reads."""

    schedule: BlendSchedule
    prefixes: dict[str, str]        # schedule order
    heldout: Optional[str]          # validation/test prefix, or None: the --split part of organic
    organic_bounds: tuple[float, float]  # document fractions organic trains on


def _split_matrix(split: str):
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    return convert_split_vector_to_split_matrix(parse_and_normalize_split(split))


def flag_problems(args) -> list[str]:
    """Megatron flags that do not work with the SynPro provider."""
    problems = []
    if getattr(args, "dataloader_type", None) not in (None, "single"):
        problems.append(f"--dataloader-type {args.dataloader_type}: the schedule is keyed on the global sample "
                        "index, which only the 'single' (sequential) sampler preserves; use --dataloader-type single")
    flags = conflicting_flags(args)
    if flags:
        problems.append(f"{', '.join(flags)} given with --synpro-schedule: Megatron would not read them "
                        "(the SynPro provider builds the data); drop them or drop --synpro-*")
    return problems


def without_conflicting_flags(args):
    """A copy of args with the conflicting data flags cleared (to go on checking the rest)."""
    import copy

    clean = copy.copy(args)
    for attr in CONFLICTING_FLAGS:
        if getattr(clean, attr, None):
            setattr(clean, attr, None)
    clean.dataloader_type = "single" if getattr(args, "dataloader_type", None) else None
    return clean


def resolve_sources(args) -> SynProSources:
    """Check the flags and resolve the sources; raises SynProArgsError listing every problem."""
    problems = flag_problems(args)
    if not getattr(args, "synpro_schedule", None):
        raise SynProArgsError("; ".join(problems + ["--synpro-schedule PATH is required"]))
    schedule = BlendSchedule.load(args.synpro_schedule)
    try:
        given = parse_sources(getattr(args, "synpro_source", []))
    except ValueError as e:
        raise SynProArgsError("; ".join(problems + [str(e)])) from None
    missing = [name for name in schedule.sources if name not in given]
    if missing:
        problems.append(f"{args.synpro_schedule}: sources {missing} have no --synpro-source NAME=PREFIX")
    unknown = [name for name in given if name not in schedule.sources]
    if unknown:
        problems.append(f"--synpro-source {unknown}: not sources of {args.synpro_schedule} "
                        f"({', '.join(schedule.sources)})")
    if problems:
        raise SynProArgsError("; ".join(problems))
    prefixes = {name: given[name] for name in schedule.sources}
    organic = prefixes[schedule.sources[0]]
    heldout = getattr(args, "synpro_heldout", None)
    if heldout is None and not is_object_storage_prefix(organic) and all(
            os.path.isfile(organic + HELDOUT_SUFFIX + s) for s in (".bin", ".idx")):
        heldout = organic + HELDOUT_SUFFIX
    if heldout is not None:
        bounds = (0.0, 1.0)
    else:
        split = getattr(args, "split", None) or DEFAULT_SPLIT
        bounds = _split_matrix(split)[0]
        if bounds is None:
            raise SynProArgsError(f"--split {split}: no train part left for source {schedule.sources[0]!r}")
    return SynProSources(schedule, prefixes, heldout, tuple(bounds))


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None, *, args=None, tokenizer=None):
    """Drop-in for pretrain_gpt.py's provider: (train, valid, test) datasets.

    `args` defaults to `megatron.training.get_args()`; `tokenizer` to the one Megatron-LM builds.
    Must run on every rank (is_distributed = True); ranks that do not read data get None.
    """
    args = args if args is not None else _megatron_args()
    sources = resolve_sources(args)
    schedule, prefixes = sources.schedule, sources.prefixes
    organic = schedule.sources[0]
    heldout_prefixes = [sources.heldout] if sources.heldout else [prefixes[organic]]
    config = gpt_dataset_config_from_args(args, list(prefixes.values()), heldout_prefixes, tokenizer)
    errors, warnings = tokenizer_problems(config.tokenizer, prefixes, args)
    for warning in warnings:
        logger.warning(warning)
    if errors:
        raise SynProArgsError("; ".join(errors))

    from megatron.core.datasets.utils import Split

    def built_here():
        return is_dataset_built_on_rank(vp_stage, args)

    num_train, num_valid, num_test = train_val_test_num_samples
    start = phase_start_sample(args)
    train = None
    if num_train:
        train = build_blended_dataset(
            schedule, prefixes, int(num_train), config, built_here, split=Split.train, start=start,
            total_samples=total_train_samples(args, int(num_train), start),
            bounds={organic: sources.organic_bounds})
    held_out = []
    for split, num in ((Split.valid, num_valid), (Split.test, num_test)):
        if sources.heldout:
            source, bounds = {organic: sources.heldout}, {organic: (0.0, 1.0)}
        else:
            matrix = _split_matrix(getattr(args, "split", None) or DEFAULT_SPLIT)
            source, bounds = {organic: prefixes[organic]}, {organic: matrix[split.value]}
        # num is None under --full-validation (one epoch of the held-out documents)
        if num == 0 or bounds[organic] is None:
            held_out.append(None)
            continue
        held_out.append(build_source_datasets(source, {organic: num}, config, split, built_here,
                                              bounds=bounds)[organic])
    return train, held_out[0], held_out[1]


train_valid_test_datasets_provider.is_distributed = True
