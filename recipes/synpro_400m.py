"""SynPro 400m - 400M parameters, as in the SynPro paper.

    nemo synpro pretrain --factory synpro_400m
    nemo synpro pretrain --factory "synpro_400m(num_nodes=2, name='my_run')" trainer.max_steps=100
    recipe = pretrain_recipe(name="my_run"); recipe.trainer.tp = 2     # from Python

Only what differs per size lives here; the factories come from common.define_recipes.
"""
from . import common

NAME = "synpro_400m"
SIZE = common.Size(model="400m", num_gpus_per_node=8, tp=1, micro_batch=8, global_batch=512, max_steps=10000,
                   lr=4e-4, eval_interval=500, save_interval=1000)

pretrain_recipe, probe_recipe, generator_rl_recipe, synthesis_recipe, blend_recipe = common.define_recipes(
    NAME, SIZE, __name__)
