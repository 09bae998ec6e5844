"""Recipe targets that take the nested configs (configs.py) and call the one implementation of
the stage in `synpro_megatron.loop.tasks`. Only pretraining has a model, parallelism, data and
an optimizer; the other stages are `loop.tasks` functions used as they are."""
from typing import Optional

from synpro_megatron.loop import tasks

from .configs import DataConfig, ModelConfig, OptimizerConfig, TrainerConfig, check_parallelism


def pretrain(run_dir: str, model: ModelConfig, trainer: TrainerConfig, data: DataConfig, optim: OptimizerConfig,
             resume: bool = True, stop_at_sample: Optional[int] = None, payload: str = "real") -> dict:
    """Pretrain (or resume) RUN_DIR with these configs; see `loop.tasks.pretrain_task`."""
    check_parallelism(trainer)
    return tasks.pretrain_task(
        run_dir=run_dir, data=data.prefix, model=model.name, seq_length=model.seq_length, tokenizer=model.tokenizer,
        tp=trainer.tp, pp=trainer.pp, num_nodes=trainer.num_nodes, num_gpus_per_node=trainer.num_gpus_per_node,
        micro_batch=trainer.micro_batch, global_batch=trainer.global_batch, max_steps=trainer.max_steps,
        eval_interval=trainer.eval_interval, save_interval=trainer.save_interval, seed=trainer.seed, lr=optim.lr,
        resume=resume, blend_schedule=data.blend_schedule, synthetic=dict(data.synthetic),
        stop_at_sample=stop_at_sample, payload=payload)
