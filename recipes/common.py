"""What every size shares: the recipe factories, built from a `Size` (what differs per size).

A size module (synpro_tiny, synpro_400m, synpro_1b) holds its NAME and SIZE and gets its
factories from `define_recipes`, registered with NeMo-Run's CLI under the size's name:

    pretrain_recipe, probe_recipe, generator_rl_recipe, synthesis_recipe, blend_recipe

`pretrain_recipe` returns a `run.Partial(stages.pretrain, ...)` whose `model`, `trainer`
(resources + parallelism + schedule), `data` and `optim` are nested `run.Config`s, overridden by
attribute as in NeMo (`recipe.trainer.tp = 4`). The other stages have no model or optimizer;
their recipes are `run.Partial`s of the `loop.tasks` functions with the size's resources.
"""

import os
from dataclasses import dataclass
from typing import Callable, List, Optional

import nemo_run as run

from synpro_megatron.loop import tasks

from . import stages
from .configs import DataConfig, ModelConfig, OptimizerConfig, TrainerConfig, check_parallelism

DEFAULT_DIR = "runs"  # like NeMo's nemo_experiments/: relative to where the job starts


@dataclass(frozen=True)
class Size:
    """The settings that differ between model sizes (everything else is a config default)."""
    model: str
    num_gpus_per_node: int
    tp: int
    micro_batch: int
    global_batch: int
    max_steps: int
    lr: float
    eval_interval: int
    save_interval: int
    pp: int = 1


def run_dir(dir: Optional[str], name: str) -> str:
    """Run directory of a recipe: DIR/NAME. Every stage of one run must get the same one."""
    return os.path.join(dir or DEFAULT_DIR, name)


def pretrain(size: Size, dir: Optional[str], name: str, num_nodes: int, num_gpus_per_node: Optional[int],
             fn: Callable = stages.pretrain) -> run.Partial:
    trainer = TrainerConfig(num_nodes=num_nodes, num_gpus_per_node=num_gpus_per_node or size.num_gpus_per_node,
                            tp=size.tp, pp=size.pp, micro_batch=size.micro_batch, global_batch=size.global_batch,
                            max_steps=size.max_steps, eval_interval=size.eval_interval,
                            save_interval=size.save_interval)
    check_parallelism(trainer)  # fail at build time too, not only when the job starts
    return run.Partial(
        fn, run_dir=run_dir(dir, name), model=run.Config(ModelConfig, name=size.model),
        trainer=run.Config(TrainerConfig, **vars(trainer)), data=run.Config(DataConfig),
        optim=run.Config(OptimizerConfig, lr=size.lr))


def define_recipes(size_name: str, size: Size, module: str):
    """The five stage factories of one size, registered under `size_name`; returns them in the
    order pretrain, probe, generator_rl, synthesis, blend."""

    def pretrain_recipe(dir: Optional[str] = None, name: str = "default", num_nodes: int = 1,
                        num_gpus_per_node: Optional[int] = None, fn: Callable = stages.pretrain) -> run.Partial:
        """Pretraining (resumes from DIR/NAME/checkpoints when there is one); override the nested
        configs by attribute: recipe.trainer.tp, recipe.model.seq_length, recipe.data.prefix,
        recipe.optim.lr."""
        return pretrain(size, dir, name, num_nodes, num_gpus_per_node, fn=fn)

    def probe_recipe(dir: Optional[str] = None, name: str = "default", num_nodes: int = 1,
                     num_gpus_per_node: Optional[int] = None, round: int = 1, checkpoint: Optional[str] = None,
                     args: Optional[List[str]] = None, fn: Callable = tasks.probe_task) -> run.Partial:
        """Reference-set projected gradients at the newest (or given) checkpoint (one GPU)."""
        return run.Partial(fn, run_dir=run_dir(dir, name), num_nodes=num_nodes,
                           num_gpus_per_node=num_gpus_per_node or size.num_gpus_per_node, round=round,
                           checkpoint=checkpoint, args=list(args or []))

    def generator_rl_recipe(dir: Optional[str] = None, name: str = "default", num_nodes: int = 1,
                            num_gpus_per_node: Optional[int] = None, kind: str = "rephrase", round: int = 1,
                            checkpoint: Optional[str] = None, args: Optional[List[str]] = None,
                            judge_model: Optional[str] = None, quality_model: Optional[str] = None,
                            verifier: str = "auto", verifier_rejects: bool = False,
                            fn: Callable = tasks.generator_rl_task) -> run.Partial:
        """GRPO training of the rephrase/reformat generator against this model's checkpoint
        (recipe.judge_model = "/models/Qwen3-1.7B" puts an LLM faithfulness judge in the reward)."""
        return run.Partial(fn, run_dir=run_dir(dir, name), num_nodes=num_nodes,
                           num_gpus_per_node=num_gpus_per_node or size.num_gpus_per_node, kind=kind, round=round,
                           checkpoint=checkpoint, args=list(args or []), judge_model=judge_model,
                           quality_model=quality_model, verifier=verifier, verifier_rejects=verifier_rejects)

    def synthesis_recipe(dir: Optional[str] = None, name: str = "default", num_nodes: int = 1,
                         num_gpus_per_node: Optional[int] = None, kind: str = "rephrase", round: int = 1,
                         generator: Optional[str] = None, args: Optional[List[str]] = None,
                         judge_model: Optional[str] = None, verifier: str = "auto", verifier_rejects: bool = False,
                         fn: Callable = tasks.synthesis_task) -> run.Partial:
        """Synthesis of round ROUND with the trained KIND generator (judge_model, verifier and
        verifier_rejects choose the faithfulness gate)."""
        return run.Partial(fn, run_dir=run_dir(dir, name), num_nodes=num_nodes,
                           num_gpus_per_node=num_gpus_per_node or size.num_gpus_per_node, kind=kind, round=round,
                           generator=generator, args=list(args or []), judge_model=judge_model, verifier=verifier,
                           verifier_rejects=verifier_rejects)

    def blend_recipe(dir: Optional[str] = None, name: str = "default", round: int = 1,
                     kinds: Optional[List[str]] = None, organic: float = 0.5, new_round: Optional[dict] = None,
                     earlier_rounds: float = 0.1, fn: Callable = tasks.blend_task) -> run.Partial:
        """Extend the blend schedule with round ROUND from the newest checkpoint's sample on."""
        kinds = list(kinds or ["rephrase", "reformat"])
        return run.Partial(fn, run_dir=run_dir(dir, name), round=round, kinds=kinds, organic=organic,
                           new_round=dict(new_round or {k: 0.25 for k in kinds}), earlier_rounds=earlier_rounds)

    factories = [(pretrain_recipe, stages.pretrain), (probe_recipe, tasks.probe_task),
                 (generator_rl_recipe, tasks.generator_rl_task), (synthesis_recipe, tasks.synthesis_task),
                 (blend_recipe, tasks.blend_task)]
    out = []
    for factory, target in factories:
        factory.__module__ = module
        factory.__qualname__ = factory.__name__
        out.append(run.cli.factory(target=target, name=size_name)(factory))
    return tuple(out)
