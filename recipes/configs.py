"""The nested configs a pretraining recipe is built from (NeMo's recipe shape).

    recipe = synpro_1b.pretrain_recipe(name="exp1")
    recipe.trainer.tp = 4                 # parallelism and schedule
    recipe.model.seq_length = 4096        # architecture
    recipe.data.prefix = "/data/organic"  # what is read
    recipe.optim.lr = 2e-4                # how it learns

Each is a plain dataclass wrapped in `run.Config` by the recipe, so the NeMo-Run CLI and YAML
overrides reach every field by attribute (`trainer.max_steps=100`). `stages.pretrain` turns them
into the one pretraining implementation (`loop.tasks.pretrain_task`).
"""
from dataclasses import dataclass, field
from typing import Dict, Optional


@dataclass
class ModelConfig:
    name: str = "tiny"  # a config of synpro_megatron.pretrain.models: tiny | 400m | 1b
    seq_length: Optional[int] = None  # None: the model config's own
    tokenizer: Optional[str] = None  # None: the run's (SmolLM2's)


@dataclass
class TrainerConfig:
    """Resources, parallelism and schedule: the world is num_nodes x num_gpus_per_node ranks,
    split tp x pp x (data parallel)."""
    num_nodes: int = 1
    num_gpus_per_node: int = 1
    tp: int = 1
    pp: int = 1
    micro_batch: int = 2
    global_batch: int = 8
    max_steps: int = 200
    eval_interval: int = 20
    save_interval: int = 50
    seed: int = 1234

    @property
    def world(self) -> int:
        return self.num_nodes * self.num_gpus_per_node


@dataclass
class DataConfig:
    prefix: Optional[str] = None  # organic IndexedDataset prefix; None: RUN_DIR/data/organic
    blend_schedule: Optional[str] = None  # a blend schedule (JSON) once synthetic rounds exist
    synthetic: Dict[str, str] = field(default_factory=dict)  # source name -> prefix, as the schedule names them


@dataclass
class OptimizerConfig:
    lr: float = 6e-4


def check_parallelism(trainer: TrainerConfig) -> None:
    if trainer.world % (trainer.tp * trainer.pp):
        raise ValueError(f"num_nodes*num_gpus_per_node = {trainer.world} is not divisible by "
                         f"tp*pp = {trainer.tp}*{trainer.pp}")
    if trainer.global_batch % trainer.micro_batch:
        raise ValueError(f"global_batch {trainer.global_batch} is not a multiple of micro_batch {trainer.micro_batch}")
