"""`nemo synpro ...`: the `nemo_run.cli` entry point (setup.py: synpro = synpro_megatron.recipes.cli).

    nemo synpro pretrain --factory synpro_1b --dryrun
    nemo synpro pretrain --factory "synpro_tiny(name='smoke')" trainer.max_steps=20 trainer.tp=1 --yes
    nemo synpro generator_rl --factory "synpro_400m(kind='reformat')" run.executor=slurm_executor ...

Importing the size modules registers their factories.
"""
import nemo_run as run

from synpro_megatron.loop import tasks

from . import stages, synpro_1b, synpro_400m, synpro_tiny  # noqa: F401  (registers the factories)
from .executors import local_executor, slurm_executor  # noqa: F401  (registers the executor factories)

pretrain = run.cli.entrypoint(namespace="synpro", name="pretrain")(stages.pretrain)
probe = run.cli.entrypoint(namespace="synpro", name="probe")(tasks.probe_task)
generator_rl = run.cli.entrypoint(namespace="synpro", name="generator_rl")(tasks.generator_rl_task)
synthesis = run.cli.entrypoint(namespace="synpro", name="synthesis")(tasks.synthesis_task)
blend = run.cli.entrypoint(namespace="synpro", name="blend")(tasks.blend_task)
loop = run.cli.entrypoint(namespace="synpro", name="loop")(tasks.loop_task)
