"""Run megatron-core 0.16 on a CPU-only torch build with gloo. Never imported when CUDA exists.

megatron-core assumes CUDA in a few places (research/megatron.md §B):
  * the tensor-parallel RNG tracker snapshots CUDA generator states;
  * buffers, optimizer scalars and pipeline schedules allocate on `torch.cuda.current_device()` or
    literally on "cuda", and call `torch.cuda.synchronize()`;
  * gradient clipping asserts the grads are `torch.cuda.FloatTensor`;
  * the distributed-checkpoint writer needs psutil (its forked writer dies without it, hanging the save).
`enable_cpu_mode()` fixes each of these, process-wide, and is idempotent; `disable_cpu_mode()`
undoes every patch (the trainer's `destroy_distributed` calls it), and `cpu_mode()` is the scoped
form (entered and left) for tests and tools that run megatron-core in-process, so nothing leaks
into code that runs later in the same process.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False
_UNDO: list = []  # (restore callable) for every patch in force, applied in reverse order


class CPURNGStatesTracker:
    """CPU stand-in for megatron's CudaRNGStatesTracker (same interface): named CPU generator states."""

    def __init__(self):
        self.reset()

    def reset(self):
        self._initialized = False
        self.states_ = {}
        self.seeds_ = set()

    def is_initialized(self):
        return self._initialized

    def get_states(self):
        return dict(self.states_)

    def set_states(self, states):
        self._initialized = True
        self.states_ = states

    def add(self, name, seed):
        self._initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"cuda rng state {name} already exists")
        self.seeds_.add(seed)
        saved = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(saved)

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise Exception(f"cuda rng state {name} is not added")
        saved = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)


def cpu_model_parallel_seed(seed: int) -> None:
    """CPU version of megatron's model_parallel_cuda_manual_seed: the same three named streams."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import random as mrandom

    tracker = CPURNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER = tracker
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    torch.manual_seed(seed)
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + ps.get_tensor_model_parallel_rank())
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME,
                seed + 1024 + 100 * ps.get_expert_model_parallel_rank() + ps.get_expert_tensor_parallel_rank())


def _is_cuda_device(d) -> bool:
    if isinstance(d, str):
        return d.startswith("cuda")
    if isinstance(d, torch.device):
        return d.type == "cuda"
    return isinstance(d, int) and not isinstance(d, bool)


class CudaToCpuMode(TorchFunctionMode):
    """Rewrite every request for a CUDA device into the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu") + tuple(args[2:])
        return func(*args, **kwargs)


def _clip_grad_by_total_norm_cpu(parameters, max_norm, total_norm, use_decoupled_grad=False):
    coeff = max_norm / (total_norm + 1.0e-6)
    if coeff < 1.0:
        params = [parameters] if isinstance(parameters, torch.Tensor) else parameters
        for p in params:
            grad = getattr(p, "decoupled_grad", None) if use_decoupled_grad else p.grad
            if grad is not None:
                grad.mul_(coeff)


def _patch(obj, name: str, value) -> None:
    original = getattr(obj, name)
    setattr(obj, name, value)
    _UNDO.append(lambda: setattr(obj, name, original))


def enable_cpu_mode() -> None:
    """Patch torch.cuda and megatron-core for CPU + gloo. Call before init_process_group."""
    global _ENABLED
    if _ENABLED:
        return
    if torch.cuda.is_available():
        raise RuntimeError("cpu_compat is for machines without CUDA; it must not be enabled on a GPU")
    _patch(torch.cuda, "current_device", lambda: 0)
    _patch(torch.cuda, "synchronize", lambda *a, **k: None)
    mode = CudaToCpuMode()
    mode.__enter__()
    _UNDO.append(lambda: mode.__exit__(None, None, None))

    import megatron.core.optimizer.optimizer as mopt

    _patch(mopt, "clip_grad_by_total_norm_fp32", _clip_grad_by_total_norm_cpu)

    from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa

    if not getattr(fsa, "HAVE_PSUTIL", True):
        _patch(fsa, "_process_memory", lambda: 0)  # the forked writer would die on psutil and hang the save
    _ENABLED = True


def disable_cpu_mode() -> None:
    """Undo every patch of enable_cpu_mode (no-op when it is not enabled)."""
    global _ENABLED
    while _UNDO:
        _UNDO.pop()()
    _ENABLED = False


def cpu_mode_enabled() -> bool:
    return _ENABLED


@contextlib.contextmanager
def cpu_mode():
    """Scoped CPU mode: enabled inside the block, and left as it was found afterwards."""
    owner = not _ENABLED
    if owner:
        enable_cpu_mode()
    try:
        yield
    finally:
        if owner:
            disable_cpu_mode()
