"""Scheduled blending in Megatron Bridge (NVIDIA-NeMo/Megatron-Bridge).

Bridge takes any `DatasetProvider` as `ConfigContainer.dataset`: at setup it calls
`provider.build_datasets(context)` on every rank with a `DatasetBuildContext` (train_samples,
valid_samples, test_samples, tokenizer, pg_collection), then wraps the datasets in its
samplers per `dataloader_type`. `SynProDatasetProvider` is such a provider::

    from synpro_megatron.blending.bridge import SynProDatasetProvider
    cfg.dataset = SynProDatasetProvider(
        schedule="schedule.json",
        sources={"organic": "/data/organic", "round_1_rephrase": "/data/round1"},
        sequence_length=cfg.model.seq_length, random_seed=cfg.rng.seed)

Train: a `SynProBlendedDataset` (the schedule at the global sample index; the sequential
"single" sampler keeps that index = consumed samples, so resume is exact). Valid/test: the
organic source's `PREFIX_heldout` written by `synpro prepare` (or `heldout=`).

Bridge needs Transformer Engine and does not install everywhere; when it is importable the
provider subclasses its `DatasetProvider` (Bridge dispatches on isinstance), otherwise a local
base with the same dataloader fields stands in, so the provider can be built and tested alone.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from synpro_megatron.blending.dataset import build_blended_dataset, build_source_datasets, is_object_storage_prefix
from synpro_megatron.blending.megatron_lm import HELDOUT_SUFFIX, tokenizer_problems, SynProArgsError
from synpro_megatron.blending.schedule import BlendSchedule

try:  # pragma: no cover - Bridge is not installable on CPU-only machines
    from megatron.bridge.data.base import DatasetProvider as _ProviderBase
    HAVE_BRIDGE = True
except ImportError:
    HAVE_BRIDGE = False

    @dataclasses.dataclass(kw_only=True)
    class _ProviderBase:
        """Bridge's DataloaderConfig fields (megatron/bridge/data/base.py), for use without Bridge."""

        dataloader_type: Optional[str] = None
        num_workers: int = 2
        data_sharding: bool = True
        pin_memory: bool = True
        drop_last: bool = True
        persistent_workers: bool = True
        trust_remote_code: Optional[bool] = None
        dataloader_save: Optional[str] = None
        dataloader_load: Optional[str] = None

        def finalize(self) -> None:
            if self.num_workers == 0 and self.persistent_workers:
                self.persistent_workers = False


@dataclasses.dataclass(kw_only=True)
class SynProDatasetProvider(_ProviderBase):
    """A Megatron Bridge dataset provider whose train mix follows a `BlendSchedule`.

    schedule: a BlendSchedule or its file. sources: schedule source name -> .bin/.idx prefix.
    heldout: the validation/test prefix (default: the first source's PREFIX_heldout; without it,
    `split` decides the organic held-out part). The other fields are GPTDatasetConfig's.
    """

    schedule: Any
    sources: dict
    sequence_length: int
    random_seed: int = 1234
    heldout: Optional[str] = None
    split: str = "969,30,1"
    path_to_cache: Optional[str] = None
    mmap_bin_files: bool = True
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    eod_mask_loss: bool = False
    create_attention_mask: bool = True
    mid_level_dataset_surplus: float = 0.005
    object_storage_cache_path: Optional[str] = None
    dataloader_type: Optional[str] = "single"

    def __post_init__(self) -> None:
        if self.dataloader_type != "single":
            raise SynProArgsError(
                f"dataloader_type={self.dataloader_type!r}: the schedule is keyed on the global sample index, "
                "which only the 'single' (sequential) sampler preserves")
        if not isinstance(self.schedule, BlendSchedule):
            self.schedule = BlendSchedule.load(self.schedule)
        missing = [n for n in self.schedule.sources if n not in self.sources]
        unknown = [n for n in self.sources if n not in self.schedule.sources]
        if missing or unknown:
            raise SynProArgsError(f"sources must name the schedule's sources ({', '.join(self.schedule.sources)}): "
                                  f"missing {missing}, unknown {unknown}")

    # ------------------------------------------------------------------ Bridge's contract
    def build_datasets(self, context) -> tuple[Any, Any, Any]:
        """(train, valid, test) for `context` (Bridge's DatasetBuildContext)."""
        from megatron.core.datasets.utils import Split

        if context.tokenizer is None:
            raise SynProArgsError("SynProDatasetProvider needs the context's tokenizer (Bridge passes cfg.tokenizer's)")
        prefixes = {name: self.sources[name] for name in self.schedule.sources}
        errors, _ = tokenizer_problems(context.tokenizer, prefixes, self)
        if errors:
            raise SynProArgsError("; ".join(errors))
        organic = self.schedule.sources[0]
        heldout = self._heldout_prefix(prefixes[organic])
        config = self._config(context.tokenizer, list(prefixes.values()), [heldout or prefixes[organic]])
        # Bridge reads batches on every TP rank and on middle pipeline stages (gpt_step.get_batch),
        # and its own GPT provider builds on every rank: so do we (build_datasets runs on all ranks).
        built_here = lambda: True  # noqa: E731

        matrix = self._split_matrix()
        train = None
        if context.train_samples:
            organic_bounds = (0.0, 1.0) if heldout else matrix[Split.train.value]
            train = build_blended_dataset(self.schedule, prefixes, int(context.train_samples), config, built_here,
                                          split=Split.train, bounds={organic: organic_bounds})
        held = []
        for split, num in ((Split.valid, context.valid_samples), (Split.test, context.test_samples)):
            bounds = (0.0, 1.0) if heldout else matrix[split.value]
            if num == 0 or bounds is None:
                held.append(None)
                continue
            source = {organic: heldout or prefixes[organic]}
            held.append(build_source_datasets(source, {organic: num}, config, split, built_here,
                                              bounds={organic: bounds})[organic])
        return train, held[0], held[1]

    # ------------------------------------------------------------------ helpers
    def _heldout_prefix(self, organic: str) -> Optional[str]:
        if self.heldout is not None:
            return self.heldout
        if not is_object_storage_prefix(organic) and all(
                os.path.isfile(organic + HELDOUT_SUFFIX + s) for s in (".bin", ".idx")):
            return organic + HELDOUT_SUFFIX
        return None

    def _split_matrix(self):
        from megatron.core.datasets.blended_megatron_dataset_config import (
            convert_split_vector_to_split_matrix,
            parse_and_normalize_split,
        )

        return convert_split_vector_to_split_matrix(parse_and_normalize_split(self.split))

    def _config(self, tokenizer, train_prefixes, heldout_prefixes):
        from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

        return GPTDatasetConfig(
            random_seed=self.random_seed, sequence_length=self.sequence_length,
            blend_per_split=[(train_prefixes, None), (heldout_prefixes, None), (heldout_prefixes, None)],
            path_to_cache=self.path_to_cache, mmap_bin_files=self.mmap_bin_files, tokenizer=tokenizer,
            reset_position_ids=self.reset_position_ids, reset_attention_mask=self.reset_attention_mask,
            eod_mask_loss=self.eod_mask_loss, create_attention_mask=self.create_attention_mask,
            mid_level_dataset_surplus=self.mid_level_dataset_surplus,
            object_storage_cache_path=self.object_storage_cache_path,
        )
