"""Shared builders behind the per-size recipe modules (synpro_tiny, synpro_400m, synpro_1b).

The size modules hold the NeMo-style factories (`dir`, `name`, `num_nodes`, `num_gpus_per_node`,
parallel sizes) and their defaults; these builders turn them into `run.Partial`s of the stage
functions in `synpro_megatron.loop.tasks`.
"""

import os
from typing import Callable, List, Optional

import nemo_run as run

from synpro_megatron.loop import tasks

DEFAULT_DIR = "runs"  # like NeMo's nemo_experiments/: relative to where the job starts


def run_dir(dir: Optional[str], name: str) -> str:
    """Run directory of a recipe: DIR/NAME. Every stage of one run must get the same one."""
    return os.path.join(dir or DEFAULT_DIR, name)


def pretrain(model: str, dir, name, num_nodes, num_gpus_per_node, tensor_parallelism, pipeline_parallelism,
             micro_batch, global_batch, max_steps, lr, eval_interval, save_interval, data, seq_length,
             fn: Callable = tasks.pretrain_task, **extra) -> run.Partial:
    world = num_nodes * num_gpus_per_node
    if world % (tensor_parallelism * pipeline_parallelism):
        raise ValueError(f"num_nodes*num_gpus_per_node = {world} is not divisible by "
                         f"tensor_parallelism*pipeline_parallelism = {tensor_parallelism}*{pipeline_parallelism}")
    return run.Partial(
        fn, run_dir=run_dir(dir, name), data=data, model=model, tp=tensor_parallelism, pp=pipeline_parallelism,
        num_nodes=num_nodes, num_gpus_per_node=num_gpus_per_node, micro_batch=micro_batch,
        global_batch=global_batch, seq_length=seq_length, max_steps=max_steps, lr=lr, eval_interval=eval_interval,
        save_interval=save_interval, **extra)


def probe(dir, name, num_nodes, num_gpus_per_node, round, checkpoint, args: Optional[List[str]] = None,
          fn: Callable = tasks.probe_task) -> run.Partial:
    return run.Partial(fn, run_dir=run_dir(dir, name), num_nodes=num_nodes, num_gpus_per_node=num_gpus_per_node,
                       round=round, checkpoint=checkpoint, args=list(args or []))


def generator_rl(dir, name, num_nodes, num_gpus_per_node, kind, round, checkpoint,
                 args: Optional[List[str]] = None, fn: Callable = tasks.generator_rl_task) -> run.Partial:
    return run.Partial(fn, run_dir=run_dir(dir, name), num_nodes=num_nodes, num_gpus_per_node=num_gpus_per_node,
                       kind=kind, round=round, checkpoint=checkpoint, args=list(args or []))


def synthesis(dir, name, num_nodes, num_gpus_per_node, kind, round, generator,
              args: Optional[List[str]] = None, fn: Callable = tasks.synthesis_task) -> run.Partial:
    return run.Partial(fn, run_dir=run_dir(dir, name), num_nodes=num_nodes, num_gpus_per_node=num_gpus_per_node,
                       kind=kind, round=round, generator=generator, args=list(args or []))


def blend(dir, name, round, kinds, organic, new_round, earlier_rounds, fn: Callable = tasks.blend_task) -> run.Partial:
    return run.Partial(fn, run_dir=run_dir(dir, name), round=round, kinds=list(kinds), organic=organic,
                       new_round=dict(new_round), earlier_rounds=earlier_rounds)
