"""Data influence on the model being pretrained: projected per-document gradients and the probe.

Names load on first use: importing the package (e.g. for the `synpro probe` CLI) stays light.
"""
import importlib

_EXPORTS = {
    "GradientCapture": "synpro_megatron.influence.hooks",
    "ExactGradientCapture": "synpro_megatron.influence.exact",
    "canonical_layer_name": "synpro_megatron.influence.hooks",
    "InfluenceProbe": "synpro_megatron.influence.probe",
    "layer_projections": "synpro_megatron.influence.projections",
    "projection_matrix": "synpro_megatron.influence.projections",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
