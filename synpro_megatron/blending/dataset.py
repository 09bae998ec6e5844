"""`SynProBlendedDataset`: Megatron's `BlendedDataset` contract, driven by a `BlendSchedule`.

Sample i is `{"dataset_id": k, **datasets[k][j]}` with (k, j) from `build_blend_indices`, so
Megatron's samplers, DP slicing and `consumed_samples` resume work unchanged, and the blend at
training time follows the schedule evaluated at the consumed-sample count.

The children are megatron-core `GPTDataset`s, one per source (organic, each synthetic
round/kind); `build_source_datasets` builds them sized from the schedule's cumulative targets.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy
import torch

from synpro_megatron.blending.indices import build_blend_indices, realized_counts
from synpro_megatron.blending.schedule import BlendSchedule
from synpro_megatron.data.indexed import check_indexed_dataset

logger = logging.getLogger(__name__)

# The greedy rule keeps each source's count within this many samples of T_k(n) (tests assert it);
# children are sized with this slack on top of ceil(T_k(N)) so they are never overdrawn.
TRACKING_SLACK = 2


def samples_per_source(schedule: BlendSchedule, num_samples: int, surplus: float = 0.005) -> dict[str, int]:
    """Samples to build per source for `num_samples` blended samples.

    Megatron sizes a child as ceil(ceil(N * w) * (1 + surplus)); with a schedule N * w becomes the
    cumulative target T_k(N), plus TRACKING_SLACK. Sources never drawn still get 1 (GPTDataset
    needs a positive size).
    """
    out = {}
    for name, target in schedule.target_counts(num_samples).items():
        need = math.ceil(target) + TRACKING_SLACK if target > 0 else 1
        out[name] = int(math.ceil(need * (1.0 + surplus)))
    return out


def _dist_rank() -> Optional[int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return None


class SynProBlendedDataset(torch.utils.data.Dataset):
    """A blend of per-source datasets whose mix follows a `BlendSchedule`.

    Args:
        datasets: one dataset per schedule source: a mapping name -> dataset, or a sequence in
            `schedule.sources` order. Each needs `__len__`/`__getitem__`; for caching also
            `unique_identifiers` (Megatron datasets have it) or `unique_description`.
        schedule: the blend schedule (global sample index -> target weights).
        size: number of blended samples.
        config: a Megatron `BlendedMegatronDatasetConfig` (optional); its `path_to_cache` is the
            default cache directory.
        path_to_cache: where to cache the index arrays (None: config's, or no caching).
        wrap: True (all sources), or the names of sources that wrap around when they run out
            (sample index modulo the child's length). Other sources must be big enough.
        synchronize_ranks: with torch.distributed, rank 0 builds and saves first, then a barrier,
            then the others load. Every rank must then construct the dataset.
        start: global sample index of this dataset's sample 0. Megatron-LM's
            --phase-transition-iterations rebuilds the train dataset per phase and restarts its
            sampler at 0, so the phase's dataset must begin at the phase's first global sample
            for the stream to equal an uninterrupted run.
    """

    def __init__(
        self,
        datasets: Union[Mapping[str, Any], Sequence[Any]],
        schedule: BlendSchedule,
        size: int,
        config: Any = None,
        *,
        path_to_cache: Optional[str] = None,
        wrap: Union[bool, Iterable[str]] = False,
        synchronize_ranks: bool = True,
        start: int = 0,
    ) -> None:
        self.schedule = schedule
        self.sources = schedule.sources
        self.datasets = self._align(datasets, schedule)
        if isinstance(size, bool) or not isinstance(size, (int, numpy.integer)) or size < 0:
            raise ValueError(f"size must be a non-negative integer, got {size!r}")
        self.size = int(size)
        if isinstance(start, bool) or not isinstance(start, (int, numpy.integer)) or start < 0:
            raise ValueError(f"start must be a non-negative integer, got {start!r}")
        self.start = int(start)
        self.config = config
        self.split = getattr(self.datasets[0], "index_split", None)
        self.wrap = self._wrap_names(wrap)
        self.path_to_cache = path_to_cache if path_to_cache is not None else getattr(config, "path_to_cache", None)

        self.unique_identifiers = OrderedDict()
        self.unique_identifiers["class"] = type(self).__name__
        self.unique_identifiers["sources"] = list(self.sources)
        self.unique_identifiers["datasets"] = [_identity(d, name) for d, name in zip(self.datasets, self.sources)]
        self.unique_identifiers["split"] = getattr(self.split, "name", None)
        self.unique_identifiers["schedule"] = schedule.to_dict()
        self.unique_identifiers["size"] = self.size
        if self.start:  # absent at 0 so caches written before `start` existed still hit
            self.unique_identifiers["start"] = self.start
        self.unique_identifiers["wrap"] = sorted(self.wrap)
        self.unique_description = json.dumps(self.unique_identifiers, indent=4, default=_identity)
        self.unique_description_hash = hashlib.md5(
            self.unique_description.encode("utf-8"), usedforsecurity=False
        ).hexdigest()

        self.dataset_index, self.dataset_sample_index = self._build_or_load(synchronize_ranks)

    # ------------------------------------------------------------------ Dataset protocol
    def __len__(self) -> int:
        return self.dataset_index.shape[0]

    def __getitem__(self, idx: int) -> dict:
        dataset_id = self.dataset_index[idx]
        dataset_sample_id = self.dataset_sample_index[idx]
        return {"dataset_id": dataset_id, **self.datasets[dataset_id][dataset_sample_id]}

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _align(datasets, schedule: BlendSchedule) -> list:
        if isinstance(datasets, Mapping):
            missing = [n for n in schedule.sources if n not in datasets]
            extra = [n for n in datasets if n not in schedule.sources]
            if missing or extra:
                raise ValueError(
                    f"datasets must cover the schedule's sources exactly: missing {missing}, unknown {extra}"
                )
            return [datasets[n] for n in schedule.sources]
        datasets = list(datasets)
        if len(datasets) != len(schedule.sources):
            raise ValueError(f"{len(datasets)} datasets for {len(schedule.sources)} sources {list(schedule.sources)}")
        return datasets

    def _wrap_names(self, wrap) -> set[str]:
        if wrap is True:
            return set(self.sources)
        if not wrap:
            return set()
        names = {wrap} if isinstance(wrap, str) else set(wrap)
        unknown = names - set(self.sources)
        if unknown:
            raise ValueError(f"wrap: unknown sources {sorted(unknown)} (sources: {', '.join(self.sources)})")
        return names

    def _cache_paths(self) -> Optional[dict[str, str]]:
        if not self.path_to_cache:
            return None
        split = self.unique_identifiers["split"] or "all"
        stem = os.path.join(self.path_to_cache, f"{self.unique_description_hash}-{type(self).__name__}-{split}")
        return {
            "description": f"{stem}-description.txt",
            "dataset_index": f"{stem}-dataset_index.npy",
            "dataset_sample_index": f"{stem}-dataset_sample_index.npy",
        }

    def _build_or_load(self, synchronize_ranks: bool):
        paths = self._cache_paths()
        rank = _dist_rank()

        def hit() -> bool:
            return paths is not None and all(os.path.isfile(p) for p in paths.values())

        arrays = None
        if rank in (None, 0):
            if hit():
                arrays = self._load(paths)
            else:
                arrays = self._build()
                if paths is not None:
                    self._save(paths, *arrays)
        # The barrier runs even without a cache so every rank follows the same protocol.
        if rank is not None and synchronize_ranks:
            torch.distributed.barrier()
        if arrays is None:  # other ranks: load what rank 0 wrote (or compute: same bytes)
            arrays = self._load(paths) if hit() else self._build()
        return arrays

    def _build(self):
        source_sizes = {name: len(d) for name, d in zip(self.sources, self.datasets) if name in self.wrap}
        dataset_index, dataset_sample_index = build_blend_indices(
            self.schedule, self.start + self.size, source_sizes or None)
        # Samples before `start` belong to earlier phases; children are drawn in the same order.
        counts = realized_counts(dataset_index, len(self.sources))
        dataset_index = numpy.ascontiguousarray(dataset_index[self.start:])
        dataset_sample_index = numpy.ascontiguousarray(dataset_sample_index[self.start:])
        for k, (name, child) in enumerate(zip(self.sources, self.datasets)):
            if name not in self.wrap and counts[k] > len(child):
                surplus = getattr(self.config, "mid_level_dataset_surplus", None)
                raise IndexError(
                    f"the schedule draws {counts[k]} samples from source {name!r} but its dataset has "
                    f"only {len(child)}: build it with at least samples_per_source(...)[{name!r}] samples"
                    + (f" (mid_level_dataset_surplus is {surplus})" if surplus is not None else "")
                    + f", or let it wrap around (wrap=[{name!r}])"
                )
        logger.info("built SynProBlendedDataset indices: %d samples from global sample %d, per-source counts "
                    "up to its end %s", self.size, self.start, dict(zip(self.sources, counts.tolist())))
        return dataset_index, dataset_sample_index

    def _save(self, paths: dict[str, str], dataset_index, dataset_sample_index) -> None:
        os.makedirs(self.path_to_cache, exist_ok=True)
        _atomic_write(paths["dataset_index"], lambda f: numpy.save(f, dataset_index, allow_pickle=False))
        _atomic_write(paths["dataset_sample_index"], lambda f: numpy.save(f, dataset_sample_index, allow_pickle=False))
        # The description goes last: a cache counts as present only when all three files exist.
        _atomic_write(paths["description"], lambda f: f.write(self.unique_description.encode("utf-8")))

    def _load(self, paths: dict[str, str]):
        dataset_index = numpy.load(paths["dataset_index"], mmap_mode="r", allow_pickle=False)
        dataset_sample_index = numpy.load(paths["dataset_sample_index"], mmap_mode="r", allow_pickle=False)
        if dataset_index.shape != (self.size,) or dataset_sample_index.shape != (self.size,):
            raise RuntimeError(f"cached blend indices {paths['dataset_index']} do not hold {self.size} samples; delete them")
        return dataset_index, dataset_sample_index


def _identity(obj: Any, name: Optional[str] = None) -> Any:
    """What identifies a child in the cache key (Megatron's unique_identifiers when present)."""
    for attr in ("unique_identifiers", "unique_description"):
        if hasattr(obj, attr):
            return getattr(obj, attr)
    label = f" (source {name!r})" if name else ""
    raise TypeError(f"{type(obj).__name__}{label} has no unique_identifiers/unique_description to key the cache")


def _atomic_write(path: str, write: Callable) -> None:
    """Write through a temporary file in the same directory, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------- children (GPTDatasets)
def is_object_storage_prefix(prefix: str) -> bool:
    """s3:// or msc:// prefixes, which megatron-core reads itself (object_storage_cache_path)."""
    try:
        from megatron.core.datasets.object_storage_utils import is_object_storage_path
    except ImportError:  # older megatron-core: no object storage support
        return False
    return bool(is_object_storage_path(prefix))


def build_source_datasets(
    prefixes: Mapping[str, str],
    num_samples_per_source: Mapping[str, Optional[int]],
    config: Any,
    split: Any = None,
    is_built_on_rank: Optional[Callable[[], bool]] = None,
    dataset_cls: Any = None,
    bounds: Optional[Mapping[str, tuple[float, float]]] = None,
) -> dict[str, Any]:
    """Build one megatron-core GPTDataset per source (`name -> .bin/.idx prefix`).

    Each is the `split` part (default train) of its IndexedDataset, asked for
    `num_samples_per_source[name]` samples (None: one epoch, as --full-validation asks), through Megatron's
    `BlendedMegatronDatasetBuilder.build_generic_dataset` (rank 0 builds and caches first under
    torch.distributed; a rank where `is_built_on_rank()` is False gets None).
    The part is `bounds[name]` = (begin, end) fractions of its documents when given, else the
    `split` row of `config.split_matrix`, else all documents (a config built from blend_per_split).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.utils import Split

    split = Split.train if split is None else split
    dataset_cls = GPTDataset if dataset_cls is None else dataset_cls
    is_built_on_rank = is_built_on_rank or (lambda: True)
    bounds = dict(bounds or {})
    for name in prefixes:
        if name not in bounds:
            matrix = getattr(config, "split_matrix", None)
            bounds[name] = matrix[split.value] if matrix is not None else (0.0, 1.0)
            if bounds[name] is None:
                raise ValueError(f"config.split {config.split!r} leaves the {split.name} split empty")
    missing = [n for n in prefixes if n not in num_samples_per_source]
    if missing:
        raise ValueError(f"num_samples_per_source has no entry for sources {missing}")

    distributed = _dist_rank() is not None
    out = {}
    for name, prefix in prefixes.items():
        built_here = not distributed or is_built_on_rank()
        low_level, indices = None, None
        if built_here:
            if not is_object_storage_prefix(prefix):  # a damaged .idx/.bin is named here, not at step 1
                check_indexed_dataset(prefix, f"source {name!r}")
            low_level = dataset_cls.build_low_level_dataset(prefix, config)
            num_elements = dataset_cls.numel_low_level_dataset(low_level)
            beg = int(round(bounds[name][0] * float(num_elements)))
            end = int(round(bounds[name][1] * float(num_elements)))
            if end <= beg:
                raise ValueError(
                    f"source {name!r} ({prefix}): the {split.name} split of its {num_elements} documents "
                    f"is empty (document fractions {bounds[name]})"
                )
            indices = numpy.arange(beg, end, dtype=numpy.int32)
        out[name] = BlendedMegatronDatasetBuilder.build_generic_dataset(
            dataset_cls, is_built_on_rank, True,
            low_level, prefix, indices, _as_count(num_samples_per_source[name]), split, config,
        )
    return out


def _as_count(num: Optional[int]) -> Optional[int]:
    """Megatron passes None for --full-validation: GPTDataset then builds exactly one epoch."""
    return None if num is None else int(num)


def build_blended_dataset(
    schedule: Union[BlendSchedule, str, os.PathLike],
    prefixes: Mapping[str, str],
    num_samples: int,
    config: Any,
    needs_data: Union[bool, Callable[[], bool]] = True,
    *,
    split: Any = None,
    wrap: Union[bool, Iterable[str]] = False,
    start: int = 0,
    total_samples: Optional[int] = None,
    bounds: Optional[Mapping[str, tuple[float, float]]] = None,
) -> Optional[SynProBlendedDataset]:
    """Children sized by `samples_per_source`, then the SynProBlendedDataset over them.

    schedule: a BlendSchedule or the path of its file. prefixes: name -> .bin/.idx prefix (extra
    names are ignored; every schedule source needs one). needs_data: whether this rank reads data
    (a bool or Megatron's `is_built_on_rank` callable). Call on every rank under
    torch.distributed; returns None where needs_data is False.
    start: the global sample index of sample 0 (a Megatron phase's first sample).
    total_samples: the whole run's train samples; children are sized for it (default
    start + num_samples), so every phase builds the same children as an uninterrupted run.
    bounds: per source, the (begin, end) fractions of its documents to train on.
    """
    if not isinstance(schedule, BlendSchedule):
        schedule = BlendSchedule.load(schedule)
    is_built_on_rank = needs_data if callable(needs_data) else (lambda: bool(needs_data))
    missing = [n for n in schedule.sources if n not in prefixes]
    if missing:
        raise ValueError(f"no data prefix for schedule sources {missing} (give NAME=PREFIX for each)")
    surplus = getattr(config, "mid_level_dataset_surplus", 0.005)
    total = start + num_samples if total_samples is None else max(int(total_samples), start + num_samples)
    sizes = samples_per_source(schedule, total, surplus)
    ordered = {name: prefixes[name] for name in schedule.sources}
    if _dist_rank() is None and not is_built_on_rank():
        return None
    children = build_source_datasets(ordered, sizes, config, split, is_built_on_rank, bounds=bounds)
    if any(child is None for child in children.values()):
        if _dist_rank() is not None:
            torch.distributed.barrier()  # matches the barrier inside SynProBlendedDataset on building ranks
        return None
    return SynProBlendedDataset(children, schedule, num_samples, config, wrap=wrap, start=start)
