"""Fused Triton kernel for per-document Kronecker-projected weight gradients (and scores).

One program per tile of BLOCK_T packed tokens:

1. stream x over d_in in BLOCK_D chunks: u = x_tile P_in^T   (BLOCK_T x K_IN, fp32 registers)
2. stream g over d_out:                   v = g_tile P_out^T  (BLOCK_T x K_OUT)
3. for each document overlapping the tile (a host-built tile -> [doc_lo, doc_hi) map), mask the rows
   outside the document and reduce: part = v_masked^T u (projection) or
   sum_t v_t^T R u_t (score against a projected reference R).

x and g are read exactly once and u, v never reach memory. Partials go either to one slot per
(tile, document) pair, summed per document in slot order by a second small kernel (deterministic,
bit-reproducible) or straight into the output with atomic_add (fast, order-dependent rounding).

Interpreter facts this module relies on (see research/kernels.md §3): ``TRITON_INTERPRET=1`` must be
set before this module is imported (``@triton.jit`` decides at decoration time), bf16 ``tl.dot`` is
wrong in the interpreter (operands are upcast to fp32 there), and no block pointers / libdevice.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_projection_inputs, check_score_inputs, token_count

# Fixed at import on purpose: the kernels below were decorated in this mode.
INTERPRET = bool(triton.knobs.runtime.interpret)
# Largest k_in / k_out handled by one launch: u, v and the (k_out x k_in) partial live on chip, and at
# k=128 (BLOCK_T=BLOCK_D=32) that already takes ~80 KB of shared memory. Larger k is split into
# chunks of output rows/columns on the host, each launch re-reading x and g.
MAX_K = 128


@triton.jit
def _project_rows(a_ptr, stride_s, stride_b, SEQ, p_ptr, stride_p, rows, row_mask, D, K,
                  K_P: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                  UPCAST: tl.constexpr, PREC: tl.constexpr):
    """(BLOCK_T, K_P) fp32 = a[rows] @ P^T, streaming the feature dimension D in BLOCK_D chunks.

    Packed token n lives at (n % SEQ) * stride_s + (n // SEQ) * stride_b: Megatron's [s, b, h]
    activations are read in place (a flat (N, d) tensor is SEQ = N, stride_b = 0)."""
    kk = tl.arange(0, K_P)
    kmask = kk < K  # K is padded to a power of two >= 16 (tl.arange and tl.dot need it)
    rd = tl.arange(0, BLOCK_D)
    r64 = rows.to(tl.int64)  # int64: N * d can exceed 2^31
    row_off = (r64 % SEQ) * stride_s + (r64 // SEQ) * stride_b
    p_off = kk.to(tl.int64) * stride_p
    acc = tl.zeros((BLOCK_T, K_P), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + rd
        dmask = cols < D
        a = tl.load(a_ptr + row_off[:, None] + cols[None, :],
                    mask=row_mask[:, None] & dmask[None, :], other=0.0)
        # P^T tile (BLOCK_D, K_P): element [d, k] = P[k, d0 + d]
        p = tl.load(p_ptr + p_off[None, :] + cols[:, None],
                    mask=dmask[:, None] & kmask[None, :], other=0.0)
        if UPCAST:  # mixed dtypes, or bf16 under the interpreter (its bf16 tl.dot is wrong)
            a = a.to(tl.float32)
            p = p.to(tl.float32)
        acc = tl.dot(a, p, acc, input_precision=PREC)
    return acc


@triton.jit
def _kron_tile_kernel(x_ptr, g_ptr, pin_ptr, pout_ptr, ref_ptr, cu_ptr,
                      tile_lo_ptr, tile_hi_ptr, slot_start_ptr, out_ptr,
                      N, SEQ, D_IN, D_OUT, K_IN, K_OUT,
                      sx_s, sx_b, sg_s, sg_b, stride_pin, stride_pout,
                      K_IN_P: tl.constexpr, K_OUT_P: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                      SCORE: tl.constexpr, USE_ATOMIC: tl.constexpr,
                      UPCAST_IN: tl.constexpr, UPCAST_OUT: tl.constexpr, PREC: tl.constexpr):
    tile = tl.program_id(0)
    rows = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < N
    u = _project_rows(x_ptr, sx_s, sx_b, SEQ, pin_ptr, stride_pin, rows, rmask, D_IN, K_IN,
                      K_IN_P, BLOCK_T, BLOCK_D, UPCAST_IN, PREC)
    v = _project_rows(g_ptr, sg_s, sg_b, SEQ, pout_ptr, stride_pout, rows, rmask, D_OUT, K_OUT,
                      K_OUT_P, BLOCK_T, BLOCK_D, UPCAST_OUT, PREC)
    ki = tl.arange(0, K_IN_P)
    ko = tl.arange(0, K_OUT_P)
    kmask = (ko[:, None] < K_OUT) & (ki[None, :] < K_IN)
    offs = ko[:, None] * K_IN + ki[None, :]
    if SCORE:
        r = tl.load(ref_ptr + offs, mask=kmask, other=0.0)
        tok = tl.sum(tl.dot(v, r, input_precision=PREC) * u, axis=1)  # v_t^T R u_t per token
    doc_lo = tl.load(tile_lo_ptr + tile)
    doc_hi = tl.load(tile_hi_ptr + tile)
    # Destination of the first document's partial: its slot (deterministic) or its output row
    # (atomic). Both advance by one row per document; a running int64 pointer avoids i32 overflow
    # (and loop variables are plain ints in the interpreter).
    if USE_ATOMIC:
        first = doc_lo
    else:
        first = tl.load(slot_start_ptr + tile)
    if SCORE:
        dst = out_ptr + first.to(tl.int64)
    else:
        dst = out_ptr + first.to(tl.int64) * (K_OUT * K_IN)
    for doc in range(doc_lo, doc_hi):  # usually 1-2 documents; many only for very short docs
        start = tl.load(cu_ptr + doc)
        end = tl.load(cu_ptr + doc + 1)
        in_doc = (rows >= start) & (rows < end)
        if SCORE:
            val = tl.sum(tl.where(in_doc, tok, 0.0), axis=0)
            if USE_ATOMIC:
                tl.atomic_add(dst, val)
            else:
                tl.store(dst, val)
            dst += 1
        else:
            vm = tl.where(in_doc[:, None], v, 0.0)
            part = tl.dot(tl.trans(vm), u, input_precision=PREC)  # (K_OUT_P, K_IN_P)
            if USE_ATOMIC:
                tl.atomic_add(dst + offs, part, mask=kmask)
            else:
                tl.store(dst + offs, part, mask=kmask)
            dst += K_OUT * K_IN


@triton.jit
def _segment_sum_kernel(part_ptr, slot_lo_ptr, slot_hi_ptr, out_ptr, S, BLOCK_S: tl.constexpr):
    """out[doc] = sum of partial slots [slot_lo[doc], slot_hi[doc]) in slot order (deterministic)."""
    doc = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    m = offs < S
    lo = tl.load(slot_lo_ptr + doc)
    hi = tl.load(slot_hi_ptr + doc)
    src = part_ptr + lo.to(tl.int64) * S
    acc = tl.zeros((BLOCK_S,), dtype=tl.float32)
    for _ in range(lo, hi):
        acc += tl.load(src + offs, mask=m, other=0.0)
        src += S
    tl.store(out_ptr + doc.to(tl.int64) * S + offs, acc, mask=m)


def _token_strides(x, g):
    """(SEQ, x's (stride_s, stride_b), g's): packed token n is row n % SEQ of batch row n // SEQ."""
    if x.dim() == 2:
        return max(x.shape[0], 1), (x.stride(0), 0), (g.stride(0), 0)
    return max(x.shape[0], 1), (x.stride(0), x.stride(1)), (g.stride(0), g.stride(1))


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(int(n)))


def _tile_plan(cu: torch.Tensor, n_tokens: int, block_t: int):
    """Host-side schedule (CPU int64 in, CPU tensors out).

    tile_lo/tile_hi: documents [lo, hi) overlapping token tile i; slot_start: first partial slot of
    tile i (one slot per (tile, document) pair, in tile-major order so each document's slots are
    contiguous); doc_slot_lo/hi: each document's slot range (empty for documents with no tokens).
    """
    n_docs = cu.numel() - 1
    n_tiles = triton.cdiv(n_tokens, block_t)
    t0 = torch.arange(n_tiles, dtype=torch.int64) * block_t
    t1 = torch.clamp(t0 + block_t, max=n_tokens)
    lo = torch.searchsorted(cu[1:].contiguous(), t0, right=True)  # first doc ending after t0
    hi = torch.searchsorted(cu[:-1].contiguous(), t1, right=False)  # docs starting before t1
    count = hi - lo
    slot_start = torch.cumsum(count, 0) - count
    n_slots = int(count.sum())
    slot_doc = torch.repeat_interleave(lo, count) + (
        torch.arange(n_slots) - torch.repeat_interleave(slot_start, count))
    docs = torch.arange(n_docs, dtype=torch.int64)
    doc_slot_lo = torch.searchsorted(slot_doc, docs, right=False)
    doc_slot_hi = torch.searchsorted(slot_doc, docs, right=True)
    return n_tiles, n_slots, lo, hi, slot_start, doc_slot_lo, doc_slot_hi


def _default_blocks(n_tokens: int, d_max: int, k_max: int):
    if INTERPRET:
        # The interpreter costs ~0.1 ms per tl op per program: few, big tiles are fastest.
        # Blocks up to Triton's 2^20-element limit (a (BLOCK_T, BLOCK_D) tile): a vocabulary-sized
        # d_out (~50k) then takes ~12 iterations instead of ~200.
        bt = min(256, _pow2_at_least_16(n_tokens))
        return bt, min(4096, (1 << 20) // bt, _pow2_at_least_16(d_max)), 4
    # GPU (compiled for sm_80/sm_90 ahead of time; not yet tuned on a device): u and v are
    # 2 * BLOCK_T * K fp32 values on chip; k=128 needs smaller tiles to stay under ~99 KB of shared
    # memory (consumer GPUs), k <= 64 uses ~48 KB at 64 x 64 tiles.
    return (64, 64, 4) if _pow2_at_least_16(k_max) <= 64 else (32, 32, 8)


def _launch(x, g, cu, p_in, p_out, ref, *, deterministic, block_t, block_d, num_warps):
    if not (x.is_cuda or INTERPRET):
        raise RuntimeError(
            "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set in the environment "
            "before synpro_megatron.kernels.triton_projection is first imported (CPU interpreter)")
    k_in, k_out = p_in.shape[0], p_out.shape[0]
    if k_in > MAX_K or k_out > MAX_K:
        return _launch_chunked(x, g, cu, p_in, p_out, ref, deterministic=deterministic,
                               block_t=block_t, block_d=block_d, num_warps=num_warps)
    n_tokens, d_in, d_out = token_count(x), x.shape[-1], g.shape[-1]
    n_docs = cu.numel() - 1
    score = ref is not None
    S = 1 if score else k_out * k_in
    out_shape = (n_docs,) if score else (n_docs, k_out, k_in)
    if n_docs == 0 or n_tokens == 0:
        return torch.zeros(out_shape, dtype=torch.float32, device=x.device)

    bt, bd, nw = _default_blocks(n_tokens, max(d_in, d_out), max(k_in, k_out))
    block_t, block_d, num_warps = block_t or bt, block_d or bd, num_warps or nw
    for name, val in (("block_t", block_t), ("block_d", block_d)):
        if val < 16 or val & (val - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {val}")

    # The kernel indexes tokens with strides (no copy into packed order) but assumes unit stride
    # along features, which every Megatron activation and gradient has.
    x = x if x.stride(-1) == 1 else x.contiguous()
    g = g if g.stride(-1) == 1 else g.contiguous()
    seq, (sx_s, sx_b), (sg_s, sg_b) = _token_strides(x, g)
    p_in, p_out = p_in.contiguous(), p_out.contiguous()
    upcast_in = x.dtype != p_in.dtype or (INTERPRET and torch.bfloat16 in (x.dtype, p_in.dtype))
    upcast_out = g.dtype != p_out.dtype or (INTERPRET and torch.bfloat16 in (g.dtype, p_out.dtype))
    # fp32 inputs get exact fp32 dots (influence scores are differences of small numbers); half
    # inputs are already coarser than tf32, so let the tensor cores run.
    all_fp32 = all(t.dtype == torch.float32 for t in (x, g, p_in, p_out))
    prec = "ieee" if all_fp32 else "tf32"

    n_tiles, n_slots, lo, hi, slot_start, doc_slot_lo, doc_slot_hi = _tile_plan(cu, n_tokens, block_t)
    dev = x.device
    as_dev = lambda t: t.to(device=dev, dtype=torch.int32)  # noqa: E731
    cu_d, lo_d, hi_d, ss_d = as_dev(cu), as_dev(lo), as_dev(hi), as_dev(slot_start)
    ref_d = ref.to(device=dev, dtype=torch.float32).contiguous() if score else x  # x: unused dummy

    if deterministic:
        dst = torch.empty((n_slots, S), dtype=torch.float32, device=dev)
    else:
        dst = torch.zeros((n_docs, S), dtype=torch.float32, device=dev)
    _kron_tile_kernel[(n_tiles,)](
        x, g, p_in, p_out, ref_d, cu_d, lo_d, hi_d, ss_d, dst,
        n_tokens, seq, d_in, d_out, k_in, k_out,
        sx_s, sx_b, sg_s, sg_b, p_in.stride(0), p_out.stride(0),
        K_IN_P=_pow2_at_least_16(k_in), K_OUT_P=_pow2_at_least_16(k_out),
        BLOCK_T=block_t, BLOCK_D=block_d, SCORE=score, USE_ATOMIC=not deterministic,
        UPCAST_IN=upcast_in, UPCAST_OUT=upcast_out, PREC=prec, num_warps=num_warps,
    )
    if not deterministic:
        return dst.view(out_shape)
    out = torch.empty((n_docs, S), dtype=torch.float32, device=dev)
    block_s = min(1024, triton.next_power_of_2(S))
    _segment_sum_kernel[(n_docs, triton.cdiv(S, block_s))](
        dst, as_dev(doc_slot_lo), as_dev(doc_slot_hi), out, S, BLOCK_S=block_s)
    return out.view(out_shape)


def _launch_chunked(x, g, cu, p_in, p_out, ref, **kw):
    """k above MAX_K: one launch per (k_out chunk, k_in chunk). Projections are blockwise (rows of
    P_out, rows of P_in), and a score is the sum of its blocks' scores."""
    k_in, k_out = p_in.shape[0], p_out.shape[0]
    n_docs = cu.numel() - 1
    if ref is None:
        out = torch.empty((n_docs, k_out, k_in), dtype=torch.float32, device=x.device)
    else:
        out = torch.zeros((n_docs,), dtype=torch.float32, device=x.device)
    for o in range(0, k_out, MAX_K):
        for i in range(0, k_in, MAX_K):
            po, pi = p_out[o:o + MAX_K], p_in[i:i + MAX_K]
            if ref is None:
                out[:, o:o + MAX_K, i:i + MAX_K] = _launch(x, g, cu, pi, po, None, **kw)
            else:
                out += _launch(x, g, cu, pi, po, ref[o:o + MAX_K, i:i + MAX_K], **kw)
    return out


def per_sample_projection_triton(x, g, cu_seqlens, p_in, p_out, *, deterministic: bool = True,
                                 block_t: int | None = None, block_d: int | None = None,
                                 num_warps: int | None = None) -> torch.Tensor:
    """Triton version of ``per_sample_projection``: float32 (n_docs, k_out, k_in)."""
    cu = check_projection_inputs(x, g, cu_seqlens, p_in, p_out)
    return _launch(x, g, cu, p_in, p_out, None, deterministic=deterministic, block_t=block_t,
                   block_d=block_d, num_warps=num_warps)


def per_sample_score_triton(x, g, cu_seqlens, p_in, p_out, g_ref_proj, *,
                            deterministic: bool = True, block_t: int | None = None,
                            block_d: int | None = None, num_warps: int | None = None):
    """Triton version of ``per_sample_score``: float32 (n_docs,) = <Ĝ_b, g_ref_proj>."""
    cu = check_score_inputs(x, g, cu_seqlens, p_in, p_out, g_ref_proj)
    return _launch(x, g, cu, p_in, p_out, g_ref_proj, deterministic=deterministic,
                   block_t=block_t, block_d=block_d, num_warps=num_warps)
