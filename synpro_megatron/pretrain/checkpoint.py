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
from synpro_megatron.errors import UserError


class CheckpointError(UserError, ValueError, RuntimeError):
    """A checkpoint that cannot be loaded, named, with the way forward (a ValueError and a
    RuntimeError, so every command that loads checkpoints reports it as one line)."""


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


def _step_of(name: str) -> Optional[int]:
    if name.startswith("iter_") and name[5:].isdigit():
        return int(name[5:])
    return None


def looks_complete(path: str) -> bool:
    """Every file a finished save leaves (synpro_state.json is written after all ranks saved)."""
    return all(os.path.exists(os.path.join(path, f)) for f in ("metadata.json", "common.pt", "synpro_state.json"))


def complete_steps(run_dir: str) -> list:
    """Steps of the checkpoints under run_dir that look complete, oldest first."""
    root = checkpoint_root(run_dir)
    if not os.path.isdir(root):
        return []
    steps = [_step_of(n) for n in os.listdir(root)]
    return sorted(s for s in steps if s is not None and looks_complete(checkpoint_dir(run_dir, s)))


def way_forward(run_dir: str, below: Optional[int]) -> str:
    """What to do instead of loading a damaged checkpoint: the previous complete one, or start over."""
    earlier = [s for s in complete_steps(run_dir) if below is None or s < below]
    if earlier:
        return (f"the previous complete checkpoint is {checkpoint_dir(run_dir, earlier[-1])}: resume from it "
                f"with --resume --resume-from {earlier[-1]}")
    return "no earlier complete checkpoint: start over with --overwrite (the old run is moved aside)"


def resume_checkpoint(run_dir: str, step: Optional[int] = None) -> Optional[str]:
    """The checkpoint a `--resume` run loads: `step` when given (it must exist and look complete),
    else the newest (`latest`). None when there is none. Never falls back silently to another."""
    if step is None:
        path = latest_checkpoint(run_dir)
        if path is not None and not looks_complete(path):
            raise CheckpointError(f"newest checkpoint {path} is incomplete (missing "
                                  f"{', '.join(_missing(path))}); {way_forward(run_dir, _step_of(os.path.basename(path)))}")
        return path
    path = checkpoint_dir(run_dir, step)
    if not os.path.isdir(path) or not looks_complete(path):
        steps = complete_steps(run_dir)
        raise CheckpointError(f"--resume-from {step}: {path} is {'incomplete' if os.path.isdir(path) else 'missing'}; "
                              f"complete checkpoints: {', '.join(map(str, steps)) or 'none'}")
    return path


def _missing(path: str) -> list:
    return [f for f in ("metadata.json", "common.pt", "synpro_state.json") if not os.path.exists(os.path.join(path, f))]


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
        # synpro_state.json first: `latest` never names a checkpoint that lacks it (looks_complete)
        atomic_write_text(os.path.join(path, "synpro_state.json"), json.dumps(extra, indent=1))
        atomic_write_text(RunDir(run_dir).latest_file, f"{step}\n")
    dist.barrier()
    return path


def load_checkpoint(path: str, gpt_model, optimizer=None, scheduler=None) -> dict:
    """Load model (+ optimizer, scheduler) state; returns the SynPro extra state saved with it."""
    from megatron.core import dist_checkpointing

    path = resolve_checkpoint(path)
    try:
        state = dist_checkpointing.load(_state(gpt_model, optimizer, scheduler, True, {}), path)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - torch's CheckpointException is a BaseException; re-raised in one line
        cause = e
        failures = getattr(e, "failures", None)  # torch's CheckpointException: rank -> (exception, traceback)
        if isinstance(failures, dict) and failures:
            first = next(iter(failures.values()))
            cause = first[0] if isinstance(first, tuple) else first
        reason = (str(cause).strip().splitlines() or [""])[0][:200]
        reason = f"{type(cause).__name__}: {reason}" if reason else type(cause).__name__
        run_dir = os.path.dirname(os.path.dirname(os.path.normpath(path)))
        raise CheckpointError(f"checkpoint {path} is damaged or unreadable ({reason}); "
                              f"{way_forward(run_dir, _step_of(os.path.basename(path)))}") from None
    gpt_model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "opt_param_scheduler" in state:
        scheduler.load_state_dict(state["opt_param_scheduler"])
    extra = state.get("synpro", {})
    return extra if isinstance(extra, dict) else {}
