"""Pack many short documents into each row of a micro-batch, with document boundaries.

Scoring one text per row pads every short text to the longest one (GRPO completions and reformat
entries are short, so most of such a batch is padding). Here each document b with tokens ids_b
contributes its inputs ids_b[:-1] and labels ids_b[1:] (n_b - 1 positions, all with loss) to a row
of ``width`` positions; rows are filled first-fit in decreasing length order, the rest is padding
(EOD, no loss). The attention mask keeps attention inside each document (causal within it) and
position ids restart at 0 per document, so a packed document sees exactly what it would see alone
in a row (RoPE depends only on relative positions inside the document).

``cu_seqlens`` indexes the packed (row, position) order, as ``GradientCapture.set_documents`` and
the kernel expect; padding runs are segments of their own and ``doc_of_segment`` marks them -1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch


@dataclass
class PackedBatch:
    tokens: torch.Tensor         # (rows, width) int64 inputs
    labels: torch.Tensor         # (rows, width) int64 next tokens
    loss_mask: torch.Tensor      # (rows, width) float: 1 on document positions, 0 on padding
    position_ids: torch.Tensor   # (rows, width) restarting at 0 in every document
    attention_mask: torch.Tensor  # (rows, 1, width, width) bool, True = masked (Megatron's convention)
    cu_seqlens: torch.Tensor     # (n_segments + 1,) int64 over the packed (row, position) order
    doc_of_segment: List[int]    # input document index of each segment, -1 for padding
    segment_ids: torch.Tensor    # (rows, width) segment index of every position


def pack_rows(token_lists: Sequence[Sequence[int]], width: int) -> List[List[int]]:
    """Document indices per row: first-fit decreasing on n_b - 1 positions (deterministic)."""
    order = sorted(range(len(token_lists)), key=lambda i: (-(len(token_lists[i]) - 1), i))
    rows: List[List[int]] = []
    free: List[int] = []
    for i in order:
        need = len(token_lists[i]) - 1
        if need > width:
            raise ValueError(f"document {i} has {need} positions, more than the row width {width}")
        if need <= 0:
            continue  # one token: no next-token loss, nothing to pack (its score is 0)
        for r, room in enumerate(free):
            if room >= need:
                rows[r].append(i)
                free[r] -= need
                break
        else:
            rows.append([i])
            free.append(width - need)
    return rows


def pack_documents(token_lists: Sequence[Sequence[int]], width: int, pad_id: int,
                   rows: List[List[int]] | None = None) -> PackedBatch:
    """Build the packed batch of ``rows`` (default: ``pack_rows``) of documents."""
    rows = pack_rows(token_lists, width) if rows is None else rows
    n_rows = max(len(rows), 1)
    tokens = torch.full((n_rows, width), pad_id, dtype=torch.int64)
    labels = torch.full((n_rows, width), pad_id, dtype=torch.int64)
    loss_mask = torch.zeros(n_rows, width)
    position_ids = torch.zeros(n_rows, width, dtype=torch.int64)
    segment_ids = torch.zeros(n_rows, width, dtype=torch.int64)
    lengths, doc_of_segment = [], []
    for r, docs in enumerate(rows):
        pos = 0
        for i in docs:
            ids = torch.as_tensor(list(token_lists[i]), dtype=torch.int64)
            n = ids.numel() - 1
            tokens[r, pos:pos + n] = ids[:-1]
            labels[r, pos:pos + n] = ids[1:]
            loss_mask[r, pos:pos + n] = 1.0
            position_ids[r, pos:pos + n] = torch.arange(n)
            segment_ids[r, pos:pos + n] = len(lengths)
            lengths.append(n)
            doc_of_segment.append(i)
            pos += n
        if pos < width:  # trailing padding: a segment of its own, attending only to itself
            position_ids[r, pos:] = torch.arange(width - pos)
            segment_ids[r, pos:] = len(lengths)
            lengths.append(width - pos)
            doc_of_segment.append(-1)
    if not rows:
        lengths, doc_of_segment = [width], [-1]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    attention_mask = ~(same & causal)[:, None]
    return PackedBatch(tokens, labels, loss_mask, position_ids, attention_mask, cu, doc_of_segment,
                       segment_ids)


def one_per_row(token_lists: Sequence[Sequence[int]], width: int, pad_id: int) -> PackedBatch:
    """The unpacked layout (one document per row, padded), as the same structure: the baseline
    packed scoring is compared against."""
    rows = [[i] for i in range(len(token_lists)) if len(token_lists[i]) > 1]
    return pack_documents(token_lists, width, pad_id, rows=rows)


def split_long(ids: Sequence[int], width: int) -> List[List[int]]:
    """A document longer than a row is cut into consecutive windows of width + 1 tokens that
    overlap by one token, so every next-token prediction of the document appears exactly once."""
    ids = list(ids)
    if len(ids) <= width + 1:
        return [ids]
    return [ids[s:s + width + 1] for s in range(0, len(ids) - 1, width)]
