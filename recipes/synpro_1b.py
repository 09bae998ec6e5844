"""SynPro 1b - 1.1B parameters (16 layers, hidden 2048), as in the SynPro paper.

    nemo synpro pretrain --factory synpro_1b
    nemo synpro pretrain --factory "synpro_1b(num_nodes=2, name='my_run')" trainer.max_steps=100
    recipe = pretrain_recipe(name="my_run"); recipe.trainer.tp = 2     # from Python

Only what differs per size lives here; the factories come from common.define_recipes.
"""
from . import common

NAME = "synpro_1b"
SIZE = common.Size(model="1b", num_gpus_per_node=8, tp=2, micro_batch=4, global_batch=512, max_steps=20000,
                   lr=3e-4, eval_interval=500, save_interval=1000)

pretrain_recipe, probe_recipe, generator_rl_recipe, synthesis_recipe, blend_recipe = common.define_recipes(
    NAME, SIZE, __name__)
