"""SynPro kernels: per-document Kronecker-projected weight gradients, Triton or plain PyTorch.

Installed as ``synpro_megatron.kernels`` (setup.py ``package_dir``); never import it as ``kernels``.

``per_sample_projection(x, g, cu_seqlens, p_in, p_out)`` returns, for every packed document b,
``sum_{t in b} (p_out g_t)(p_in x_t)^T`` = ``p_out G_b p_in^T`` with G_b the document's weight
gradient, without ever materialising G_b. ``backend`` picks the implementation:

* ``"auto"``: Triton when it is importable and the tensors are on CUDA, else the reference op;
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
]

BACKENDS = ("auto", "triton", "reference")


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it need not have a GPU)."""
    return importlib.util.find_spec("triton") is not None


def _resolve_backend(backend: str, x) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = isinstance(x, torch.Tensor) and x.is_cuda
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "reference"
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
    if _resolve_backend(backend, x) == "reference":
        return per_sample_projection_reference(x, g, cu_seqlens, p_in, p_out)
    from .triton_projection import per_sample_projection_triton

    return per_sample_projection_triton(x, g, cu_seqlens, p_in, p_out, deterministic=deterministic)


def per_sample_score(x, g, cu_seqlens, p_in, p_out, g_ref_proj, *, backend: str = "auto",
                     deterministic: bool = True) -> torch.Tensor:
    """Float32 (n_docs,): ``<Ĝ_b, g_ref_proj>_F`` with Ĝ_b as in ``per_sample_projection``.

    ``g_ref_proj`` is a (k_out, k_in) projected reference gradient (same p_in/p_out). Computed as
    ``sum_t v_t^T R u_t`` so no per-document k_out x k_in matrix is written.
    """
    if _resolve_backend(backend, x) == "reference":
        return per_sample_score_reference(x, g, cu_seqlens, p_in, p_out, g_ref_proj)
    from .triton_projection import per_sample_score_triton

    return per_sample_score_triton(x, g, cu_seqlens, p_in, p_out, g_ref_proj,
                                   deterministic=deterministic)
