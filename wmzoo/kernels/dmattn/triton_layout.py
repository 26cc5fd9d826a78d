"""Query-block layout shared by the DMAttn Triton kernels, built without host syncs.

Dense batches: block ``m`` of every batch row covers positions [m*M, m*M + M) of [0, t).
Packed varlen (``cu_seqlens``): blocks never straddle a sequence boundary. Sequence s owns
ceil(len_s / M) blocks starting at ``blk_start[s]``; the grid has a static upper bound
ceil(total / M) + num_seqs blocks (known from shapes alone), and each block's
(sequence start, sequence end, first query) comes from small device tables, so no
``.item()`` is needed. Surplus blocks get an empty range and do nothing. ``block_bounds``
reads a block's range inside a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..varlen import bucket_of


@dataclass
class BlockLayout:
    varlen: bool
    block_m: int
    n_blocks: int  # query blocks per batch row (the grid's first axis)
    blk_info: torch.Tensor  # int32 (4, n_blocks): sequence start, sequence end, first query, sequence


def block_layout(t: int, cu_seqlens: torch.Tensor | None, block_m: int, device) -> BlockLayout:
    if cu_seqlens is None:
        dummy = torch.zeros(1, dtype=torch.int32, device=device)
        return BlockLayout(False, block_m, triton.cdiv(t, block_m), dummy)
    cu = cu_seqlens.to(torch.int32)
    num_seqs = cu.shape[0] - 1
    n_blocks = triton.cdiv(t, block_m) + num_seqs
    lens = cu[1:] - cu[:-1]
    per_seq = torch.div(lens + (block_m - 1), block_m, rounding_mode="floor")
    blk_start = torch.cat([per_seq.new_zeros(1), torch.cumsum(per_seq, 0, dtype=torch.int32)])
    blk = torch.arange(n_blocks, device=device, dtype=torch.int32)
    seq = bucket_of(blk_start, blk)  # num_seqs for the surplus blocks
    real = seq < num_seqs
    seq = seq.clamp(max=num_seqs - 1)
    start = cu[seq]
    end = torch.where(real, cu[seq + 1], start)
    first = start + (blk - blk_start[seq]) * block_m
    info = torch.stack([start, end, torch.where(real, first, end), seq]).to(torch.int32).contiguous()
    return BlockLayout(True, block_m, n_blocks, info)


@triton.jit
def block_bounds(pid_m, info_ptr, T, N_BLK, VARLEN: tl.constexpr, BLOCK_M: tl.constexpr):
    """(sequence start, sequence end, first query) of query block pid_m."""
    if VARLEN:
        start = tl.load(info_ptr + pid_m)
        end = tl.load(info_ptr + N_BLK + pid_m)
        i0 = tl.load(info_ptr + 2 * N_BLK + pid_m)
    else:
        start = 0
        end = T
        i0 = pid_m * BLOCK_M
    return start, end, i0
