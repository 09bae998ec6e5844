"""SynPro-Megatron: model-aware synthetic pretraining data as a Megatron-Core plugin."""

__version__ = "0.1.0"
