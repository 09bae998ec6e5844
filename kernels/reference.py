"""Plain-PyTorch reference ops that define the semantics of the per-sample projection kernels.

For a linear layer y = x W^T with packed tokens split into documents by ``cu_seqlens``, document b's
weight gradient is G_b = sum_{t in b} g_t x_t^T (d_out x d_in). Its Kronecker ("LoGra") projection is

    Ĝ_b = P_out G_b P_in^T = sum_{t in b} (P_out g_t)(P_in x_t)^T       (k_out x k_in)

The right-hand side never builds G_b: project the tokens once (u = x P_in^T, v = g P_out^T), then take
a per-document v^T u. ``per_sample_projection_reference`` is that route (fp32), the CPU fallback of
``synpro_megatron.kernels.per_sample_projection``; ``materialized_per_sample_projection`` builds every
G_b (float64 by default) and is the test oracle and the benchmark baseline.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_projection_inputs, check_score_inputs

# Above this padding overhead the padded-bmm path would allocate too much; loop over documents then.
_MAX_PAD_FACTOR = 4


def _doc_ids_and_positions(cu: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = cu[1:] - cu[:-1]
    doc = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    pos = torch.arange(int(cu[-1])) - cu[:-1][doc]
    return doc.to(device), pos.to(device)


def _segmented_vtu(v: torch.Tensor, u: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """out[b] = v[s_b:e_b]^T u[s_b:e_b] without an (N, k_out, k_in) intermediate."""
    n_docs = cu.numel() - 1
    out = torch.zeros(n_docs, v.shape[1], u.shape[1], dtype=v.dtype, device=v.device)
    if n_docs == 0 or v.shape[0] == 0:
        return out
    lengths = cu[1:] - cu[:-1]
    max_len = int(lengths.max())
    if n_docs * max_len == v.shape[0]:  # equal lengths (e.g. one document per row): no padding
        return torch.bmm(v.view(n_docs, max_len, -1).transpose(1, 2), u.view(n_docs, max_len, -1))
    if n_docs * max_len <= _MAX_PAD_FACTOR * v.shape[0]:
        # Padded batch: one bmm instead of n_docs small matmuls (Python overhead dominates otherwise).
        doc, pos = _doc_ids_and_positions(cu, v.device)
        vp = v.new_zeros(n_docs, max_len, v.shape[1])
        up = u.new_zeros(n_docs, max_len, u.shape[1])
        vp[doc, pos] = v
        up[doc, pos] = u
        return torch.bmm(vp.transpose(1, 2), up)
    # Very ragged documents: padding would blow up memory, so loop (only over non-empty docs).
    for b in torch.nonzero(lengths).flatten().tolist():
        s, e = int(cu[b]), int(cu[b + 1])
        out[b] = v[s:e].T @ u[s:e]
    return out


def per_sample_projection_reference(x, g, cu_seqlens, p_in, p_out) -> torch.Tensor:
    """Reference op: float32 (n_docs, k_out, k_in), out[b] = sum_{t in b} (p_out g_t)(p_in x_t)^T."""
    return _projection_reference(x, g, check_projection_inputs(x, g, cu_seqlens, p_in, p_out), p_in, p_out)


def _packed(t: torch.Tensor) -> torch.Tensor:
    """(N, k) in packed (b, s) token order from (N, k) or (s, b, k); k is small, so the copy is too."""
    return t if t.dim() == 2 else t.transpose(0, 1).reshape(-1, t.shape[-1])


def _project_tokens(x, g, p_in, p_out):
    # Project first, reorder after: the (s, b, d) activations are read in place, only the
    # (s, b, k) projections are reordered into packed token order.
    u = _packed(F.linear(x.float(), p_in.float()))  # (N, k_in): fp32 projections of the inputs
    v = _packed(F.linear(g.float(), p_out.float()))  # (N, k_out): of the output-gradients
    return u, v


def _projection_reference(x, g, cu, p_in, p_out) -> torch.Tensor:
    """Body of the reference op; ``cu`` is the validated CPU int64 cu_seqlens."""
    u, v = _project_tokens(x, g, p_in, p_out)
    return _segmented_vtu(v, u, cu)


def per_sample_score_reference(x, g, cu_seqlens, p_in, p_out, g_ref_proj) -> torch.Tensor:
    """Reference op: float32 (n_docs,), score[b] = <Ĝ_b, g_ref_proj>_F.

    Uses <sum_t v_t u_t^T, R> = sum_t v_t^T R u_t, so no per-document k_out x k_in matrix is formed.
    """
    cu = check_score_inputs(x, g, cu_seqlens, p_in, p_out, g_ref_proj)
    return _score_reference(x, g, cu, p_in, p_out, g_ref_proj)


def _score_reference(x, g, cu, p_in, p_out, g_ref_proj) -> torch.Tensor:
    u, v = _project_tokens(x, g, p_in, p_out)
    per_token = ((v @ g_ref_proj.float()) * u).sum(dim=1)
    # Segmented sum by differences of a float64 prefix sum: deterministic on every device (unlike
    # index_add_ on CUDA) and float64 keeps the cancellation error far below fp32 resolution.
    csum = torch.zeros(per_token.shape[0] + 1, dtype=torch.float64, device=per_token.device)
    csum[1:] = torch.cumsum(per_token.double(), dim=0)
    cu_dev = cu.to(per_token.device)
    return (csum[cu_dev[1:]] - csum[cu_dev[:-1]]).float()


def materialized_per_sample_projection(
    x, g, cu_seqlens, p_in, p_out, *, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Naive route: build each document's full weight gradient G_b (d_out x d_in), then project.

    Costs 2*T*d_in*d_out FLOPs and d_in*d_out memory per document; exists as the test oracle (float64)
    and as the baseline the fused kernel is benchmarked against.
    """
    cu = check_projection_inputs(x, g, cu_seqlens, p_in, p_out)
    n_docs = cu.numel() - 1
    xd, gd = _packed(x).to(dtype), _packed(g).to(dtype)
    pin, pout = p_in.to(dtype), p_out.to(dtype)
    out = torch.zeros(n_docs, p_out.shape[0], p_in.shape[0], dtype=dtype, device=x.device)
    for b in range(n_docs):
        s, e = int(cu[b]), int(cu[b + 1])
        G_b = gd[s:e].T @ xd[s:e]  # (d_out, d_in): the per-document weight gradient
        out[b] = pout @ G_b @ pin.T
    return out
