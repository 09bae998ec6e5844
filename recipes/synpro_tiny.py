"""SynPro tiny - a CPU-sized model with the same architecture (tests, smoke runs).

    nemo synpro pretrain --factory synpro_tiny
    nemo synpro pretrain --factory "synpro_tiny(num_nodes=2, name='my_run')" trainer.max_steps=100
    recipe = pretrain_recipe(name="my_run"); recipe.trainer.tp = 2     # from Python

Only what differs per size lives here; the factories come from common.define_recipes.
"""
from . import common

NAME = "synpro_tiny"
SIZE = common.Size(model="tiny", num_gpus_per_node=1, tp=1, micro_batch=2, global_batch=8, max_steps=200,
                   lr=6e-4, eval_interval=20, save_interval=50)

pretrain_recipe, probe_recipe, generator_rl_recipe, synthesis_recipe, blend_recipe = common.define_recipes(
    NAME, SIZE, __name__)
