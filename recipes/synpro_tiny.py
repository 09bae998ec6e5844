"""SynPro tiny: a CPU-sized model with the same architecture (tests, smoke runs).

    nemo synpro pretrain --factory synpro_tiny
    nemo synpro pretrain --factory "synpro_tiny(num_nodes=2, name='my_run')" max_steps=100
    recipe = pretrain_recipe(name="my_run", num_nodes=1)     # from Python
"""

from typing import Callable, List, Optional

import nemo_run as run

from synpro_megatron.loop import tasks

from . import common

NAME = "synpro_tiny"
MODEL = "tiny"


@run.cli.factory(target=tasks.pretrain_task, name=NAME)
def pretrain_recipe(dir: Optional[str] = None, name: str = "default", num_nodes: int = 1,
                    num_gpus_per_node: int = 1, tensor_parallelism: int = 1, pipeline_parallelism: int = 1,
                    micro_batch: int = 2, global_batch: int = 8, max_steps: int = 200, lr: float = 6e-4,
                    eval_interval: int = 20, save_interval: int = 50, data: Optional[str] = None,
                    seq_length: Optional[int] = None, fn: Callable = tasks.pretrain_task) -> run.Partial:
    """Pretraining (resumes from DIR/NAME/checkpoints when there is one). data: organic prefix
    (default DIR/NAME/data/organic)."""
    return common.pretrain(MODEL, dir, name, num_nodes, num_gpus_per_node, tensor_parallelism,
                           pipeline_parallelism, micro_batch, global_batch, max_steps, lr, eval_interval,
                           save_interval, data, seq_length, fn=fn)


@run.cli.factory(target=tasks.probe_task, name=NAME)
def probe_recipe(dir: Optional[str] = None, name: str = "default", num_nodes: int = 1,
                 num_gpus_per_node: int = 1, round: int = 1, checkpoint: Optional[str] = None,
                 args: Optional[List[str]] = None, fn: Callable = tasks.probe_task) -> run.Partial:
    """Reference-set projected gradients at the newest (or given) checkpoint."""
    return common.probe(dir, name, num_nodes, num_gpus_per_node, round, checkpoint, args, fn=fn)


@run.cli.factory(target=tasks.generator_rl_task, name=NAME)
def generator_rl_recipe(dir: Optional[str] = None, name: str = "default", num_nodes: int = 1,
                        num_gpus_per_node: int = 1, kind: str = "rephrase", round: int = 1,
                        checkpoint: Optional[str] = None, args: Optional[List[str]] = None,
                        fn: Callable = tasks.generator_rl_task) -> run.Partial:
    """GRPO training of the rephrase/reformat generator against this model's checkpoint."""
    return common.generator_rl(dir, name, num_nodes, num_gpus_per_node, kind, round, checkpoint, args, fn=fn)


@run.cli.factory(target=tasks.synthesis_task, name=NAME)
def synthesis_recipe(dir: Optional[str] = None, name: str = "default", num_nodes: int = 1,
                     num_gpus_per_node: int = 1, kind: str = "rephrase", round: int = 1,
                     generator: Optional[str] = None, args: Optional[List[str]] = None,
                     fn: Callable = tasks.synthesis_task) -> run.Partial:
    """Synthesis of round ROUND with the trained KIND generator."""
    return common.synthesis(dir, name, num_nodes, num_gpus_per_node, kind, round, generator, args, fn=fn)


@run.cli.factory(target=tasks.blend_task, name=NAME)
def blend_recipe(dir: Optional[str] = None, name: str = "default", round: int = 1,
                 kinds: Optional[List[str]] = None, organic: float = 0.5, new_round: Optional[dict] = None,
                 earlier_rounds: float = 0.1, fn: Callable = tasks.blend_task) -> run.Partial:
    """Extend the blend schedule with round ROUND from the newest checkpoint's sample on."""
    kinds = list(kinds or ["rephrase", "reformat"])
    return common.blend(dir, name, round, kinds, organic, new_round or {k: 0.25 for k in kinds}, earlier_rounds,
                        fn=fn)
