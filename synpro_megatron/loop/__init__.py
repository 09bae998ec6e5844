"""The SynPro loop: plateau detector, controller state machine, stage runners, NeMo-Run tasks.

`synpro run --config CONFIG.yaml --run-dir DIR` drives it (see `controller` for the stages).
Nothing here imports torch or megatron at module level.
"""
from .config import BlendWeights, ConfigError, GeneratorConfig, LoopConfig, ParallelConfig, TrainConfig
from .controller import Controller
from .plateau import PlateauConfig, PlateauDecision, PlateauDetector, detect_plateau
from .runner import CliRunner, Interrupted, StageFailed, StageRunner
from .state import LoopState

__all__ = [
    "BlendWeights", "CliRunner", "ConfigError", "Controller", "GeneratorConfig", "Interrupted", "LoopConfig",
    "LoopState", "ParallelConfig", "PlateauConfig", "PlateauDecision", "PlateauDetector",
    "StageFailed", "StageRunner", "TrainConfig", "detect_plateau",
]
