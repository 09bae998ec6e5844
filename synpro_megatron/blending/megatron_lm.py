"""Scheduled blending in an existing Megatron-LM run (`pretrain_gpt.py`).

The three-line change in Megatron-LM's `pretrain_gpt.py` (one import, two arguments of `pretrain`)::

    +from synpro_megatron.blending.megatron_lm import add_synpro_args, train_valid_test_datasets_provider as synpro_provider
         pretrain(
    -        train_valid_test_datasets_provider,
    +        synpro_provider,
             ...
    -        extra_args_provider=add_modelopt_args if has_nvidia_modelopt else None,
    +        extra_args_provider=add_synpro_args,

then launch with `--synpro-schedule schedule.json --synpro-source organic=/data/organic_text_document
--synpro-source round1=/data/round1_text_document --dataloader-type single` (and no `--data-path`).

* train: a `SynProBlendedDataset` over one GPTDataset per `--synpro-source`, mixed per the schedule
  evaluated at the global sample index, so `consumed_train_samples` resumes it exactly;
* valid / test: held-out documents of the schedule's first source (the organic corpus), per
  `--split`, so the validation loss stays comparable across synthetic rounds.

`megatron.training` is imported only inside the provider, and only when no `args` are passed: it is
absent from megatron-core 0.16.1 (Python 3.11) and this module must import without it.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional, Sequence

from synpro_megatron.blending.dataset import build_blended_dataset, build_source_datasets
from synpro_megatron.blending.schedule import BlendSchedule

DEFAULT_SPLIT = "969,30,1"  # Megatron-LM's default --split


def add_synpro_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Megatron-LM `extra_args_provider`: adds --synpro-schedule and --synpro-source."""
    group = parser.add_argument_group(title="synpro blending")
    group.add_argument("--synpro-schedule", type=str, default=None, metavar="PATH",
                       help="blend schedule (.json/.yaml): phases of target weights over named sources")
    group.add_argument("--synpro-source", type=str, action="append", default=[], metavar="NAME=PREFIX",
                       help="a schedule source and its Megatron .bin/.idx prefix; repeat per source")
    return parser


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


def is_dataset_built_on_rank(vp_stage: Optional[int] = None) -> bool:
    """Like pretrain_gpt.py: TP rank 0 of the first or last pipeline stage (True without mpu)."""
    from megatron.core import parallel_state as mpu

    if not mpu.model_parallel_is_initialized():
        return True
    first_or_last = (mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
                     or mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage))
    return first_or_last and mpu.get_tensor_model_parallel_rank() == 0


def _megatron_args():
    try:
        from megatron.training import get_args
    except ImportError as e:
        raise RuntimeError(
            "megatron.training is not importable (megatron-core 0.16.1 ships only megatron.core): "
            "pass args= explicitly"
        ) from e
    return get_args()


def _tokenizer_from_args(args) -> Any:
    if getattr(args, "legacy_tokenizer", True):  # older Megatron-LM: the global tokenizer
        from megatron.training import get_tokenizer

        return get_tokenizer()
    from megatron.core.tokenizers.text.utils.build_tokenizer import build_tokenizer

    return build_tokenizer(args)


def gpt_dataset_config_from_args(args, prefixes: dict[str, str], tokenizer: Any = None):
    """A GPTDatasetConfig with the same fields pretrain_gpt.py sets (the blend lists our sources)."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    tokenizer = tokenizer if tokenizer is not None else _tokenizer_from_args(args)
    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=(list(prefixes.values()), None),  # not mock: honours --split; the weights come from the schedule
        split=getattr(args, "split", None) or DEFAULT_SPLIT,
        num_dataset_builder_threads=getattr(args, "num_dataset_builder_threads", 1),
        path_to_cache=getattr(args, "data_cache_path", None),
        mmap_bin_files=getattr(args, "mmap_bin_files", True),
        tokenizer=tokenizer,
        reset_position_ids=getattr(args, "reset_position_ids", False),
        reset_attention_mask=getattr(args, "reset_attention_mask", False),
        eod_mask_loss=getattr(args, "eod_mask_loss", False),
        create_attention_mask=getattr(args, "create_attention_mask_in_dataloader", True),
        mid_level_dataset_surplus=getattr(args, "mid_level_dataset_surplus", 0.005),
        allow_ambiguous_pad_tokens=getattr(args, "allow_ambiguous_pad_tokens", False),
    )


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None, *, args=None, tokenizer=None):
    """Drop-in for pretrain_gpt.py's provider: (train, valid, test) datasets.

    `args` defaults to `megatron.training.get_args()`; `tokenizer` to the one Megatron-LM built.
    Must run on every rank (is_distributed = True); ranks that do not read data get None.
    """
    args = args if args is not None else _megatron_args()
    if getattr(args, "dataloader_type", None) not in (None, "single"):
        raise ValueError(
            f"--dataloader-type {args.dataloader_type}: the schedule is keyed on the global sample "
            "index, which only the 'single' (sequential) sampler preserves; use --dataloader-type single"
        )
    if not getattr(args, "synpro_schedule", None):
        raise ValueError("--synpro-schedule PATH is required")
    schedule = BlendSchedule.load(args.synpro_schedule)
    prefixes = parse_sources(getattr(args, "synpro_source", []))
    missing = [name for name in schedule.sources if name not in prefixes]
    if missing:
        raise ValueError(f"{args.synpro_schedule}: sources {missing} have no --synpro-source NAME=PREFIX")
    prefixes = {name: prefixes[name] for name in schedule.sources}
    config = gpt_dataset_config_from_args(args, prefixes, tokenizer)

    from megatron.core.datasets.utils import Split

    def built_here():
        return is_dataset_built_on_rank(vp_stage)

    num_train, num_valid, num_test = train_val_test_num_samples
    train = None
    if num_train:
        train = build_blended_dataset(schedule, prefixes, int(num_train), config, built_here, split=Split.train)
    organic = schedule.sources[0]
    held_out = []
    for split, num in ((Split.valid, num_valid), (Split.test, num_test)):
        if num == 0 or config.split_matrix[split.value] is None:
            held_out.append(None)
            continue
        held_out.append(build_source_datasets({organic: prefixes[organic]}, {organic: num}, config, split,
                                              built_here)[organic])
    return train, held_out[0], held_out[1]


train_valid_test_datasets_provider.is_distributed = True
