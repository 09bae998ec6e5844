"""Deterministic, shardable random projection matrices for the Kronecker gradient projection.

A layer's projection is a pair P_in (k_in x d_in) and P_out (k_out x d_out) of Gaussian matrices scaled
by 1/sqrt(k), so that E[P^T P] = I and inner products of projected gradients estimate those of the
full gradients (Johnson-Lindenstrauss).

Why a generator per column block: with tensor parallelism a rank only holds a slice of d_in
(RowParallelLinear) or d_out (ColumnParallelLinear), and must use exactly the columns of the TP=1
matrix for that slice, so that summing the ranks' partial projections reproduces the TP=1 result.
Column j of the full matrix belongs to block j // COLUMN_BLOCK, and each block is drawn from its own
``torch.Generator`` seeded by a hash of (seed, layer name, block index). A shard therefore only
generates the blocks it overlaps and slices them, and any shard boundary (block-aligned or not)
gives bit-identical columns. Generation is always done in float32 on the CPU, then cast and moved,
so the bytes do not depend on the target device.

Layer names must be independent of TP and PP: see ``synpro_megatron.influence.hooks.canonical_layer_name``
(the pipeline-local index in ``decoder.layers.<i>`` is replaced by the global layer index, and
wrapper prefixes such as DDP's ``module.`` are dropped). P_in and P_out of one layer use the names
``"<layer>/in"`` and ``"<layer>/out"`` (see ``layer_projections``).
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch

COLUMN_BLOCK = 64  # columns per independently seeded block


def _block_seed(seed: int, name: str, k: int, block: int) -> int:
    key = f"synpro-proj|{int(seed)}|{name}|{int(k)}|{int(block)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def _block(seed: int, name: str, k: int, block: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_block_seed(seed, name, k, block))
    return torch.randn(k, COLUMN_BLOCK, generator=gen, dtype=torch.float32)


def projection_matrix(
    seed: int,
    layer_name: str,
    k: int,
    full_dim: int,
    shard_offset: int = 0,
    shard_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Columns [shard_offset, shard_offset + shard_size) of the full (k, full_dim) projection.

    The full matrix is N(0, 1/k) entries, fixed by (seed, layer_name, k). Concatenating the shards of
    any split of [0, full_dim) along dim 1 gives exactly ``projection_matrix(seed, layer_name, k,
    full_dim)``.
    """
    if not isinstance(layer_name, str) or not layer_name:
        raise ValueError(f"layer_name must be a non-empty string, got {layer_name!r}")
    if k < 1 or full_dim < 1:
        raise ValueError(f"k and full_dim must be >= 1, got k={k}, full_dim={full_dim}")
    if shard_size is None:
        shard_size = full_dim - shard_offset
    if shard_offset < 0 or shard_size < 0 or shard_offset + shard_size > full_dim:
        raise ValueError(
            f"shard [{shard_offset}, {shard_offset + shard_size}) is outside [0, {full_dim}) "
            f"for layer {layer_name!r}"
        )
    out = torch.empty(k, shard_size, dtype=torch.float32)
    first = shard_offset // COLUMN_BLOCK
    last = (shard_offset + shard_size - 1) // COLUMN_BLOCK if shard_size else first - 1
    for blk in range(first, last + 1):
        b0 = blk * COLUMN_BLOCK
        lo, hi = max(b0, shard_offset), min(b0 + COLUMN_BLOCK, shard_offset + shard_size)
        out[:, lo - shard_offset:hi - shard_offset] = _block(seed, layer_name, k, blk)[:, lo - b0:hi - b0]
    out.mul_(1.0 / math.sqrt(k))
    return out.to(device=device, dtype=dtype)


def projection_columns(
    seed: int,
    layer_name: str,
    k: int,
    full_dim: int,
    ranges: Sequence[tuple[int, int]],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The full matrix's columns for several (offset, size) ranges, concatenated in that order.

    Needed where a rank's shard is not one contiguous slice of the TP=1 layout, e.g. the fused
    [gate; up] weight of a SwiGLU ``linear_fc1`` (each rank holds a slice of gate and one of up).
    """
    parts = [projection_matrix(seed, layer_name, k, full_dim, o, s) for o, s in ranges]
    return torch.cat(parts, dim=1).to(device=device, dtype=dtype)


def layer_projections(
    seed: int,
    layer_name: str,
    k_in: int,
    k_out: int,
    d_in: int,
    d_out: int,
    in_ranges: Sequence[tuple[int, int]] | None = None,
    out_ranges: Sequence[tuple[int, int]] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P_in, P_out) of one layer for this rank's shard; ranges default to the whole dimension."""
    p_in = projection_columns(seed, f"{layer_name}/in", k_in, d_in, in_ranges or [(0, d_in)],
                              dtype, device)
    p_out = projection_columns(seed, f"{layer_name}/out", k_out, d_out,
                               out_ranges or [(0, d_out)], dtype, device)
    return p_in, p_out
