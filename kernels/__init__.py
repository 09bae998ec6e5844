"""SynPro kernels: per-document Kronecker-projected weight gradients, Triton or plain PyTorch.

Installed as ``synpro_megatron.kernels`` (setup.py ``package_dir``); never import it as ``kernels``.

``per_sample_projection(x, g, cu_seqlens, p_in, p_out)`` returns, for every packed document b,
``sum_{t in b} (p_out g_t)(p_in x_t)^T`` = ``p_out G_b p_in^T`` with G_b the document's weight
gradient, without ever materialising G_b. ``backend`` picks the implementation:

* ``"auto"``: on CUDA with Triton importable, whichever of the kernel and the reference op is faster
  for this shape (timed once per (dtype, d_in, d_out, k_in, k_out, token-count bucket), then
  cached: where the kernel does not beat the reference op on a card, auto does not use it);
  elsewhere the reference op;
* ``"triton"``: the fused kernel; on CPU tensors only under the Triton interpreter
  (``TRITON_INTERPRET=1`` set before the kernel module is first imported, as tests/conftest.py does);
* ``"reference"``: the plain-PyTorch op in ``reference.py`` that defines the semantics.

The Triton module is imported lazily, so importing this package never needs Triton.
"""
from __future__ import annotations

import importlib.util

import torch

from .reference import (
    materialized_per_sample_projection,
    per_sample_projection_reference,
    per_sample_score_reference,
)

__all__ = [
    "per_sample_projection",
    "per_sample_score",
    "per_sample_projection_reference",
    "per_sample_score_reference",
    "materialized_per_sample_projection",
    "triton_available",
    "CALLS",
]

BACKENDS = ("auto", "triton", "reference")


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it need not have a GPU)."""
    return importlib.util.find_spec("triton") is not None


# (dtype, d_in, d_out, k_in, k_out, log2 token bucket, score?) -> the faster backend on this device
_AUTO_CHOICE: dict[tuple, str] = {}
# Counts of calls per backend actually run (tests assert the kernel is on a path, not assume it).
CALLS = {"triton": 0, "reference": 0}


def _timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up (Triton compiles here)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _auto_pick(x, g, p_in, p_out, run, score: bool) -> str:
    n = x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[1]
    key = (x.dtype, x.shape[-1], g.shape[-1], p_in.shape[0], p_out.shape[0], max(n, 1).bit_length(), score)
    if key not in _AUTO_CHOICE:
        times = {b: _timed(lambda b=b: run(b)) for b in ("triton", "reference")}
        _AUTO_CHOICE[key] = min(times, key=times.get)
    return _AUTO_CHOICE[key]


def _resolve_backend(backend: str, x) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = isinstance(x, torch.Tensor) and x.is_cuda
    if backend == "auto":
        return "auto" if on_cuda and triton_available() else "reference"
    if backend == "triton" and not triton_available():
        raise RuntimeError("backend='triton' requested but the triton package is not installed")
    return backend


def per_sample_projection(x, g, cu_seqlens, p_in, p_out, *, backend: str = "auto",
                          deterministic: bool = True) -> torch.Tensor:
    """Float32 (n_docs, k_out, k_in): ``out[b] = sum_{t in b} (p_out g_t)(p_in x_t)^T``.

    Args:
        x: (N, d_in) layer inputs of N packed tokens (fp32, fp16 or bf16).
        g: (N, d_out) gradients of the loss w.r.t. the layer outputs for the same tokens.
        cu_seqlens: (n_docs+1,) int32 document boundaries: 0 = c_0 <= c_1 <= ... <= c_n = N.
            Empty documents give zero matrices. A CPU tensor avoids a device-to-host copy.
        p_in: (k_in, d_in) input-side projection; p_out: (k_out, d_out) output-side projection.
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (see the module docstring).
        deterministic: Triton only. True: per-(tile, document) partials summed in a fixed order,
            bit-reproducible. False: atomic_add into the output (faster, run-to-run rounding noise).
    """
    def run(b):
        CALLS[b] += 1
        if b == "reference":
            return per_sample_projection_reference(x, g, cu_seqlens, p_in, p_out)
        from .triton_projection import per_sample_projection_triton

        return per_sample_projection_triton(x, g, cu_seqlens, p_in, p_out, deterministic=deterministic)

    chosen = _resolve_backend(backend, x)
    if chosen == "auto":
        chosen = _auto_pick(x, g, p_in, p_out, run, score=False)
    return run(chosen)


def per_sample_score(x, g, cu_seqlens, p_in, p_out, g_ref_proj, *, backend: str = "auto",
                     deterministic: bool = True) -> torch.Tensor:
    """Float32 (n_docs,): ``<Ĝ_b, g_ref_proj>_F`` with Ĝ_b as in ``per_sample_projection``.

    ``g_ref_proj`` is a (k_out, k_in) projected reference gradient (same p_in/p_out). Computed as
    ``sum_t v_t^T R u_t`` so no per-document k_out x k_in matrix is written.
    """
    def run(b):
        CALLS[b] += 1
        if b == "reference":
            return per_sample_score_reference(x, g, cu_seqlens, p_in, p_out, g_ref_proj)
        from .triton_projection import per_sample_score_triton

        return per_sample_score_triton(x, g, cu_seqlens, p_in, p_out, g_ref_proj,
                                       deterministic=deterministic)

    chosen = _resolve_backend(backend, x)
    if chosen == "auto":
        chosen = _auto_pick(x, g, p_in, p_out, run, score=True)
    return run(chosen)
