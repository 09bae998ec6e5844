"""Executors for the SynPro recipes: local (this machine) and Slurm.

Slurm jobs use the torchrun launcher with one torchrun agent per node and `gpus_per_node`
ranks each (NeMo-Run turns ntasks_per_node=G into ntasks_per_node=1 + torchrun
--nproc-per-node G). Every job gets `--kill-on-invalid-dep=yes`: without it a job whose
upstream failed pends forever with DependencyNeverSatisfied and the pipeline hangs.

Preemption: `signal="USR1@300"` asks Slurm for SIGUSR1 five minutes before the end; torchrun
forwards it (PET_SIGNALS_TO_HANDLE), the trainer checkpoints and exits 143, and NeMo-Run's
sbatch script requeues the job while `retries` allows.
"""

import os
from typing import Dict, List, Optional

import nemo_run as run

# torchrun: forward SIGUSR1 too (default: TERM, INT, HUP, QUIT), and give the ranks time to
# write their checkpoint before it escalates to SIGKILL (default 30 s)
PREEMPTION_ENV = {
    "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
    "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "240",
}


def local_executor(devices: int = 1, env_vars: Optional[Dict[str, str]] = None) -> run.LocalExecutor:
    """This machine; `devices` > 1 launches that many ranks with torchrun."""
    return run.LocalExecutor(**_local_kwargs(devices, env_vars))


def slurm_executor(
    account: str,
    partition: Optional[str] = None,
    nodes: int = 1,
    gpus_per_node: int = 8,
    time: str = "04:00:00",
    container_image: Optional[str] = None,
    container_mounts: Optional[List[str]] = None,
    job_dir: Optional[str] = None,
    tunnel: Optional[run.LocalTunnel] = None,
    packager: Optional[run.Packager] = None,
    env_vars: Optional[Dict[str, str]] = None,
    launcher: Optional[str] = "torchrun",
    retries: int = 0,
    nproc_per_node: Optional[int] = None,
    signal: Optional[str] = "USR1@300",
    exclusive: Optional[bool] = None,
    mem: Optional[str] = None,
    setup_lines: Optional[str] = None,
    additional_parameters: Optional[Dict[str, str]] = None,
) -> run.SlurmExecutor:
    """A Slurm executor. `gpus_per_node=0` is a CPU partition (then `nproc_per_node` ranks).

    tunnel: default `LocalTunnel(job_dir=job_dir or $NEMORUN_HOME/experiments)` (submitting from
    the login node; LocalTunnel with another job_dir does not sync the code, NeMo-Run #299).
    packager: default `GitArchivePackager()` (ships the committed HEAD, NeMo's convention);
    `run.Packager()` ships nothing and relies on the installed package.
    container_image: pyxis image; None runs on the node's own environment.
    """
    kw = _slurm_kwargs(account, partition, nodes, gpus_per_node, time, container_image, container_mounts, env_vars,
                       launcher, retries, nproc_per_node, signal, exclusive, mem, setup_lines, additional_parameters)
    return run.SlurmExecutor(
        **kw,
        tunnel=tunnel or run.LocalTunnel(job_dir=_default_job_dir(job_dir)),
        packager=packager if packager is not None else run.GitArchivePackager(),
    )


# ---- the same, as run.Config factories for the `nemo` CLI (run.executor=slurm ...) -----------
@run.cli.factory(name="local")
def local_executor_config(devices: int = 1) -> run.Config[run.LocalExecutor]:
    return run.Config(run.LocalExecutor, **_local_kwargs(devices, None))


@run.cli.factory(name="slurm")
def slurm_executor_config(account: str = "synpro", partition: Optional[str] = None, nodes: int = 1,
                          gpus_per_node: int = 8, time: str = "04:00:00", container_image: Optional[str] = None,
                          job_dir: Optional[str] = None, retries: int = 0) -> run.Config[run.SlurmExecutor]:
    kw = _slurm_kwargs(account, partition, nodes, gpus_per_node, time, container_image, None, None, "torchrun",
                       retries, None, "USR1@300", None, None, None, None)
    return run.Config(run.SlurmExecutor, **kw, tunnel=run.Config(run.LocalTunnel, job_dir=_default_job_dir(job_dir)),
                      packager=run.Config(run.GitArchivePackager))


def _default_job_dir(job_dir: Optional[str]) -> str:
    from nemo_run.config import get_nemorun_home

    return job_dir or os.path.join(get_nemorun_home(), "experiments")


def _local_kwargs(devices, env_vars) -> dict:
    return dict(ntasks_per_node=devices, launcher="torchrun" if devices > 1 else None, env_vars=dict(env_vars or {}))


def _slurm_kwargs(account, partition, nodes, gpus_per_node, time, container_image, container_mounts, env_vars,
                  launcher, retries, nproc_per_node, signal, exclusive, mem, setup_lines, additional_parameters):
    ranks = nproc_per_node if nproc_per_node is not None else gpus_per_node
    if ranks < 1:
        raise ValueError("slurm_executor: gpus_per_node=0 needs nproc_per_node >= 1")
    params = {"kill_on_invalid_dep": "yes"}
    params.update(additional_parameters or {})
    env = dict(PREEMPTION_ENV)
    env.update(env_vars or {})
    return dict(account=account, partition=partition, nodes=nodes, ntasks_per_node=ranks,
                gpus_per_node=gpus_per_node or None, time=time, container_image=container_image,
                container_mounts=list(container_mounts or []), env_vars=env, launcher=launcher, retries=retries,
                signal=signal, exclusive=exclusive, mem=mem, setup_lines=setup_lines, job_name_prefix="synpro-",
                additional_parameters=params)
