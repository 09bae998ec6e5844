"""NeMo-Run recipes for SynPro-Megatron (installed as `synpro_megatron.recipes`).

One module per model size (`synpro_tiny`, `synpro_400m`, `synpro_1b`) with a factory per stage
(`pretrain_recipe`, `probe_recipe`, `generator_rl_recipe`, `synthesis_recipe`, `blend_recipe`),
the executors (`local_executor`, `slurm_executor`) and `synpro_pipeline`, which chains one
round's stages as dependent jobs. `nemo synpro pretrain --factory synpro_1b` uses `cli`.
"""
from . import synpro_1b, synpro_400m, synpro_tiny
from .executors import local_executor, slurm_executor
from .pipeline import synpro_pipeline

__all__ = ["synpro_1b", "synpro_400m", "synpro_tiny", "local_executor", "slurm_executor", "synpro_pipeline"]
