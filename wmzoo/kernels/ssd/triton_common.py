"""Triton pieces shared by the SSD kernels: RoPE applied to B / C tiles as they are loaded,
the matrix product in the precision the inputs allow, and each program's token range.

Every SSD kernel runs one program per (sequence, head[, block of p]) and walks that sequence's
chunks in order. A packed varlen batch is just a list of sequences whose token ranges come from
``cu_seqlens`` (read inside the kernel: no host sync); chunks start at each sequence's first
token, so a chunk never holds two sequences and no state can cross a boundary.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Codes of the DOT constexpr: how tl.dot multiplies (see `mm`).
DOT_IEEE = 0  # fp32 inputs, or the CPU interpreter: exact fp32 products
DOT_BF16 = 1  # bf16 inputs on the GPU: bf16 tensor cores, fp32 accumulation
DOT_FP16 = 2  # fp16 inputs on the GPU


@triton.jit
def mm(a, b, DOT: tl.constexpr):
    """a @ b with fp32 accumulation; operands rounded to the inputs' half type on the GPU."""
    if DOT == 1:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif DOT == 2:
        return tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def sequence_range(cu_ptr, k, T, HAS_CU: tl.constexpr):
    """First and one-past-last flattened token of sequence k (batch row k without cu_seqlens)."""
    if HAS_CU:
        start = tl.load(cu_ptr + k).to(tl.int64)
        end = tl.load(cu_ptr + k + 1).to(tl.int64)
    else:
        start = k.to(tl.int64) * T
        end = start + T
    return start, end


@triton.jit
def load_rotated(ptr, row_stride, rows, row_mask, cos_ptr, sin_ptr, N, HALF,
                 BLOCK_N: tl.constexpr, ROPE: tl.constexpr):
    """Rows ``rows`` of a (tokens, n) view (row stride ``row_stride``) as fp32, with RoPE.

    With ROPE the first 2*HALF channels are rotated in rotate-half pairs (i, i + HALF) by the
    token's cos / sin (tables (tokens, HALF), fp32): z~_i = z_i cos - z_{i+HALF} sin and
    z~_{i+HALF} = z_{i+HALF} cos + z_i sin. The partner channels are a second, cached load of
    the same rows, so no rotated copy of B or C ever exists in memory.
    """
    cols = tl.arange(0, BLOCK_N)
    mask = row_mask[:, None] & (cols[None, :] < N)
    base = ptr + rows[:, None] * row_stride
    z = tl.load(base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if ROPE:
        first = cols < HALF
        rotated = row_mask[:, None] & (cols[None, :] < 2 * HALF)
        partner = tl.where(first, cols + HALF, cols - HALF)
        freq = tl.where(first, cols, cols - HALF)
        zp = tl.load(base + partner[None, :], mask=rotated, other=0.0).to(tl.float32)
        table = rows[:, None] * HALF + freq[None, :]
        cos = tl.load(cos_ptr + table, mask=rotated, other=1.0)
        sin = tl.load(sin_ptr + table, mask=rotated, other=0.0)
        sign = tl.where(first, -1.0, 1.0)
        z = z * cos + sign[None, :] * zp * sin
    return z
