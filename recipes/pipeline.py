"""`synpro_pipeline`: one SynPro round as a NeMo-Run experiment of dependent jobs.

    pretrain (to refresh_at_sample) -> probe -> generator-KIND (each) -> synthesis-KIND (each)
        -> blend -> pretrain-resume (to max_steps)

Each stage is its own job (on Slurm: its own sbatch, `--dependency=afterok:...` on its
upstream jobs, `--kill-on-invalid-dep=yes`). The static DAG needs the refresh point up front;
`synpro run` (the controller) finds it with the plateau detector instead, and loops over rounds.
"""

import copy
from typing import Optional, Sequence

import nemo_run as run

from synpro_megatron.rundir import RunDir
from synpro_megatron.loop.tasks import synthetic_sources

from . import common, synpro_1b, synpro_400m, synpro_tiny
from .executors import local_executor

SIZES = {"tiny": synpro_tiny, "400m": synpro_400m, "1b": synpro_1b}


def stage_executor(template, nodes: int, ranks_per_node: int, torchrun: bool):
    """A copy of `template` sized for one stage."""
    ex = copy.deepcopy(template)
    ex.nodes = nodes
    ex.ntasks_per_node = ranks_per_node
    ex.launcher = "torchrun" if torchrun else None
    if isinstance(ex, run.SlurmExecutor):
        ex.torchrun_nproc_per_node = None  # recomputed from ntasks_per_node by the torchrun launcher
    return ex


def synpro_pipeline(
    size: str = "tiny",
    dir: Optional[str] = None,
    name: str = "default",
    executor=None,
    num_nodes: int = 1,
    num_gpus_per_node: Optional[int] = None,
    round: int = 1,
    refresh_at_sample: Optional[int] = None,
    max_steps: Optional[int] = None,
    kinds: Sequence[str] = ("rephrase", "reformat"),
    payload: str = "real",
    data: Optional[str] = None,
    title: Optional[str] = None,
    base_dir: Optional[str] = None,
    judge_model: Optional[str] = None,
    quality_model: Optional[str] = None,
    verifier: str = "auto",
    verifier_rejects: bool = False,
) -> run.Experiment:
    """Build (not run) the experiment. `executor`: a LocalExecutor/SlurmExecutor template
    (default: local); every stage gets a copy sized for it. `refresh_at_sample`: where the first
    pretrain job stops and the new round starts (default: half the run). `judge_model`,
    `quality_model`, `verifier`, `verifier_rejects`: the reward models of the generator and
    synthesis jobs (an LLM judge and a quality scorer by model path, served by vLLM on GPU)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    mod = SIZES[size]
    kinds = list(kinds)
    pre = mod.pretrain_recipe(dir=dir, name=name, num_nodes=num_nodes, num_gpus_per_node=num_gpus_per_node)
    if max_steps is not None:
        pre.trainer.max_steps = max_steps
    pre.data.prefix = data
    pre.payload = payload
    pre.stop_at_sample = refresh_at_sample or (pre.trainer.max_steps // 2) * pre.trainer.global_batch
    resume = copy.deepcopy(pre)
    resume.stop_at_sample = None
    rd = common.run_dir(dir, name)
    resume.data.blend_schedule = RunDir(rd).blend_schedule(round)
    resume.data.synthetic = synthetic_sources(rd, round, kinds)
    gpus = pre.trainer.num_gpus_per_node

    template = executor if executor is not None else local_executor()
    train_ex = stage_executor(template, num_nodes, gpus, torchrun=True)
    single_ex = stage_executor(template, 1, 1, torchrun=False)

    exp = run.Experiment(title or f"synpro-{size}-{name}-round{round}", base_dir=base_dir)
    with exp:
        pretrain_id = exp.add(pre, executor=train_ex, name="pretrain")
        probe = mod.probe_recipe(dir=dir, name=name, round=round, num_gpus_per_node=gpus)
        probe.payload = payload
        probe_id = exp.add(probe, executor=copy.deepcopy(single_ex), name="probe", dependencies=[pretrain_id])
        synth_ids = []
        for kind in kinds:
            gen = mod.generator_rl_recipe(dir=dir, name=name, kind=kind, round=round, num_gpus_per_node=gpus,
                                          judge_model=judge_model, quality_model=quality_model, verifier=verifier,
                                          verifier_rejects=verifier_rejects)
            gen.payload = payload
            gen_id = exp.add(gen, executor=copy.deepcopy(single_ex), name=f"generator-{kind}",
                             dependencies=[probe_id])
            syn = mod.synthesis_recipe(dir=dir, name=name, kind=kind, round=round, num_gpus_per_node=gpus,
                                       judge_model=judge_model, verifier=verifier, verifier_rejects=verifier_rejects)
            syn.payload = payload
            synth_ids.append(exp.add(syn, executor=copy.deepcopy(single_ex), name=f"synthesis-{kind}",
                                     dependencies=[gen_id]))
        blend = mod.blend_recipe(dir=dir, name=name, round=round, kinds=kinds)
        blend_id = exp.add(blend, executor=copy.deepcopy(single_ex), name="blend", dependencies=synth_ids)
        exp.add(resume, executor=copy.deepcopy(train_ex), name="pretrain-resume", dependencies=[blend_id])
    return exp
