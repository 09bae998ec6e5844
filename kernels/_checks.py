"""Input validation shared by every backend of the per-sample projection ops.

All backends must reject the same inputs with the same messages, so the checks live in one place and
run before any backend is chosen.
"""
from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_matrix(name: str, t, dtypes=SUPPORTED_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; supported: {names}")


def check_cu_seqlens(cu_seqlens, n_tokens: int, device: torch.device) -> torch.Tensor:
    """Validate document boundaries; return them as a CPU int64 tensor.

    The values are needed on the host anyway (tile plan, split sizes), so reading them here costs
    one small device-to-host copy when cu_seqlens lives on the GPU. Pass a CPU tensor to avoid it.
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(
            f"cu_seqlens must be 1-D with n_docs+1 >= 1 entries, got shape {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 (or int64), got {cu_seqlens.dtype}")
    if cu_seqlens.device.type != "cpu" and cu_seqlens.device != device:
        raise ValueError(
            f"cu_seqlens is on {cu_seqlens.device} but the tokens are on {device}; "
            "put it on the same device or on the CPU"
        )
    cu = cu_seqlens.detach().to("cpu", torch.int64)
    if int(cu[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {int(cu[0])}")
    if int(cu[-1]) != n_tokens:
        raise ValueError(
            f"cu_seqlens must end at the number of tokens N={n_tokens}, got {int(cu[-1])}"
        )
    if cu.numel() > 1 and bool((cu[1:] < cu[:-1]).any()):
        bad = int(torch.nonzero(cu[1:] < cu[:-1])[0, 0])
        raise ValueError(
            f"cu_seqlens must be non-decreasing; cu_seqlens[{bad + 1}]={int(cu[bad + 1])} "
            f"< cu_seqlens[{bad}]={int(cu[bad])}"
        )
    return cu


def _check_tokens(name: str, t) -> None:
    """Token tensors are (N, d) packed tokens or Megatron's (s, b, d) activations (read in place)."""
    if isinstance(t, torch.Tensor) and t.dim() == 3:
        _check_matrix(name, t[0] if t.shape[0] else t.new_zeros(0, t.shape[-1]))
    elif isinstance(t, torch.Tensor) and t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, d) or 3-D (s, b, d), got shape {tuple(t.shape)}")
    else:
        _check_matrix(name, t)


def token_count(t: torch.Tensor) -> int:
    """Packed tokens in (N, d) or (s, b, d): N, or b * s (documents index the (b, s) order)."""
    return t.shape[0] if t.dim() == 2 else t.shape[0] * t.shape[1]


def check_projection_inputs(x, g, cu_seqlens, p_in, p_out) -> torch.Tensor:
    """Validate the arguments of per_sample_projection; return cu_seqlens as CPU int64.

    x and g are either both (N, d) or both (s, b, d) with the same s and b; in the second case token
    n of the packed order is [n % s, n // s] (batch row after batch row), as Megatron lays out rows.
    """
    _check_tokens("x", x)
    _check_tokens("g", g)
    _check_matrix("p_in", p_in)
    _check_matrix("p_out", p_out)
    if x.dim() != g.dim() or x.shape[:-1] != g.shape[:-1]:
        raise ValueError(
            f"x and g must hold the same tokens: x is {tuple(x.shape)}, g is {tuple(g.shape)}"
        )
    if p_in.shape[1] != x.shape[-1]:
        raise ValueError(
            f"p_in must be (k_in, d_in) with d_in = x.shape[-1] = {x.shape[-1]}, got {tuple(p_in.shape)}"
        )
    if p_out.shape[1] != g.shape[-1]:
        raise ValueError(
            f"p_out must be (k_out, d_out) with d_out = g.shape[-1] = {g.shape[-1]}, "
            f"got {tuple(p_out.shape)}"
        )
    if p_in.shape[0] < 1 or p_out.shape[0] < 1:
        raise ValueError(f"k_in and k_out must be >= 1, got {p_in.shape[0]} and {p_out.shape[0]}")
    for name, t in (("g", g), ("p_in", p_in), ("p_out", p_out)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; all must match")
    return check_cu_seqlens(cu_seqlens, token_count(x), x.device)


def check_score_inputs(x, g, cu_seqlens, p_in, p_out, g_ref_proj) -> torch.Tensor:
    cu = check_projection_inputs(x, g, cu_seqlens, p_in, p_out)
    _check_matrix("g_ref_proj", g_ref_proj, dtypes=(torch.float32, torch.float16, torch.bfloat16,
                                                    torch.float64))
    if tuple(g_ref_proj.shape) != (p_out.shape[0], p_in.shape[0]):
        raise ValueError(
            f"g_ref_proj must be (k_out, k_in) = ({p_out.shape[0]}, {p_in.shape[0]}), "
            f"got {tuple(g_ref_proj.shape)}"
        )
    if g_ref_proj.device != x.device:
        raise ValueError(f"g_ref_proj is on {g_ref_proj.device} but x is on {x.device}")
    return cu
