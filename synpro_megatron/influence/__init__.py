"""Data influence on the model being pretrained: projected per-document gradients and the probe."""
from synpro_megatron.influence.hooks import GradientCapture, canonical_layer_name
from synpro_megatron.influence.probe import InfluenceProbe
from synpro_megatron.influence.projections import layer_projections, projection_matrix

__all__ = ["GradientCapture", "InfluenceProbe", "canonical_layer_name", "layer_projections", "projection_matrix"]
