"""Megatron distributed checkpoints: run_dir/checkpoints/iter_XXXXXXX + a `latest` file.

A checkpoint holds global (unsharded) tensors, so it loads at any TP/PP/DP layout. The `latest`
file is written (atomically) only after every rank finished saving: a crash mid-save leaves the
previous checkpoint as the one to resume from.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
from multiprocessing.managers import SyncManager
from typing import Optional

import torch.distributed as dist

from synpro_megatron.fsutil import atomic_write_text
from synpro_megatron.rundir import RunDir


_WRITER_MANAGER = None


def _ignore_stop_signals():
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def prepare_checkpoint_writer() -> None:
    """Create the results queue of megatron's async checkpoint writer up front, in a helper process
    that ignores SIGTERM/SIGUSR1/SIGINT.

    Megatron otherwise starts a spawned multiprocessing Manager at the first save: ~3 s of
    re-imports, a required __main__ guard, and a process in the rank's process group, so a Slurm
    preemption signal (srun and torchrun signal the whole group) kills it and the very checkpoint
    the signal asked for fails. Call before CUDA or the process group is initialised (it forks).
    """
    global _WRITER_MANAGER
    from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa

    if getattr(fsa, "_results_queue", None) is not None:
        return
    manager = SyncManager(ctx=multiprocessing.get_context("fork"))
    manager.start(initializer=_ignore_stop_signals)
    _WRITER_MANAGER = manager  # keep it alive for the life of this process
    fsa._results_queue = manager.Queue()


def checkpoint_root(run_dir: str) -> str:
    return RunDir(run_dir).checkpoints


def checkpoint_dir(run_dir: str, step: int) -> str:
    return RunDir(run_dir).checkpoint(step)


def latest_checkpoint(run_dir_or_root: str) -> Optional[str]:
    """Path of the newest complete checkpoint, or None. Accepts a run dir or its checkpoints/ folder."""
    root = run_dir_or_root
    if os.path.isdir(os.path.join(root, "checkpoints")):
        root = os.path.join(root, "checkpoints")
    marker = os.path.join(root, "latest")
    if not os.path.exists(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        text = f.read().strip()
    try:
        step = int(text)
    except ValueError:
        raise ValueError(f"{marker}: expected a step number, found {text!r}") from None
    path = os.path.join(root, f"iter_{step:07d}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{marker} names step {step} but {path} does not exist")
    return path


def resolve_checkpoint(path: str) -> str:
    """A checkpoint dir, a checkpoints/ root or a run dir -> the checkpoint dir to load."""
    if os.path.exists(os.path.join(path, "metadata.json")):
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no Megatron distributed checkpoint at {path} (no metadata.json or latest file)")
    return found


def _state(gpt_model, optimizer, scheduler, is_loading: bool, extra: dict):
    msd = gpt_model.sharded_state_dict()
    state = {"model": msd}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(msd, is_loading=is_loading)
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
    state.update(extra)
    return state


def save_checkpoint(run_dir: str, step: int, gpt_model, optimizer, scheduler, extra: dict) -> str:
    from megatron.core import dist_checkpointing

    path = checkpoint_dir(run_dir, step)
    if dist.get_rank() == 0:
        os.makedirs(path, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(_state(gpt_model, optimizer, scheduler, False, {"synpro": extra}), path)
    dist.barrier()
    if dist.get_rank() == 0:
        atomic_write_text(RunDir(run_dir).latest_file, f"{step}\n")
        atomic_write_text(os.path.join(path, "synpro_state.json"), json.dumps(extra, indent=1))
    dist.barrier()
    return path


def load_checkpoint(path: str, gpt_model, optimizer=None, scheduler=None) -> dict:
    """Load model (+ optimizer, scheduler) state; returns the SynPro extra state saved with it."""
    from megatron.core import dist_checkpointing

    path = resolve_checkpoint(path)
    try:
        state = dist_checkpointing.load(_state(gpt_model, optimizer, scheduler, True, {}), path)
    except Exception as e:  # noqa: BLE001 - re-raised naming the checkpoint
        raise RuntimeError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from e
    gpt_model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "opt_param_scheduler" in state:
        scheduler.load_state_dict(state["opt_param_scheduler"])
    extra = state.get("synpro", {})
    return extra if isinstance(extra, dict) else {}
