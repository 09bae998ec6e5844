"""Schedule-aware blending of organic and synthetic sources for Megatron-Core.

* `BlendSchedule` / `Phase`: target weights over named sources per global sample index.
* `build_blend_indices`: Megatron's (dataset_index, dataset_sample_index) for a schedule
  (C++ in csrc/blend.cpp, byte-identical Python fallback).
* `SynProBlendedDataset`, `build_source_datasets`, `build_blended_dataset`, `samples_per_source`:
  the BlendedDataset-shaped dataset and its GPTDataset children (these import torch and
  megatron-core, so they load on first use).
* `realized_mix`: per-window shares of each source (used by `synpro blend inspect` and reports).
* Drop-ins: `megatron_lm` (Megatron-LM's pretrain_gpt.py provider and flags), `bridge`
  (`SynProDatasetProvider` for Megatron Bridge), `check_megatron` (`synpro blend check-megatron`).
"""
from synpro_megatron.blending.indices import build_blend_indices, have_extension, realized_counts
from synpro_megatron.blending.schedule import BlendSchedule, Phase, ScheduleError, SegmentTable

_LAZY = {
    "SynProBlendedDataset": "synpro_megatron.blending.dataset",
    "build_source_datasets": "synpro_megatron.blending.dataset",
    "build_blended_dataset": "synpro_megatron.blending.dataset",
    "samples_per_source": "synpro_megatron.blending.dataset",
    "realized_mix": "synpro_megatron.blending.inspect",
    "target_mix": "synpro_megatron.blending.inspect",
}

__all__ = [
    "BlendSchedule", "Phase", "ScheduleError", "SegmentTable",
    "build_blend_indices", "have_extension", "realized_counts", *_LAZY,
]


def __getattr__(name):
    # Keeps `synpro blend inspect` (numpy only) from importing torch and megatron-core.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synpro_megatron.blending' has no attribute {name!r}")
