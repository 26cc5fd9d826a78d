"""The SSD decode step: one token for a batch of states, RoPE at the token's absolute position.

    S' = exp(dt A) S + dt x B~^T,   y = S' C~ + D x
One program per (batch row, head, block of p); the state is read and written once.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import load_rotated


@triton.jit
def _ssd_step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, cos_ptr, sin_ptr,
    y_ptr, new_ptr,
    H, G, P, N, HALF,
    HAS_D: tl.constexpr, ROPE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0)
    head = tl.program_id(1)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    p_mask = offs_p < P
    group = head // (H // G)
    # A one-row tile, so that B and C go through the same rotating load as in the chunked kernels.
    rows = row + tl.zeros([1], dtype=tl.int64)
    row_mask = rows >= 0
    Bt = load_rotated(B_ptr + group * N, G * N, rows, row_mask, cos_ptr, sin_ptr, N, HALF, BLOCK_N, ROPE)
    Ct = load_rotated(C_ptr + group * N, G * N, rows, row_mask, cos_ptr, sin_ptr, N, HALF, BLOCK_N, ROPE)
    dt = tl.load(dt_ptr + row * H + head).to(tl.float32)
    A = tl.load(A_ptr + head).to(tl.float32)
    x = tl.load(x_ptr + (row * H + head) * P + offs_p, mask=p_mask, other=0.0).to(tl.float32)
    state_off = ((row * H + head) * P + offs_p[:, None]) * N + offs_n[None, :]
    state_mask = p_mask[:, None] & (offs_n[None, :] < N)
    state = tl.load(state_ptr + state_off, mask=state_mask, other=0.0)
    new = tl.exp(dt * A) * state + (dt * x)[:, None] * Bt
    y = tl.sum(new * Ct, axis=1)
    if HAS_D:
        y += tl.load(D_ptr + head).to(tl.float32) * x
    tl.store(new_ptr + state_off, new, mask=state_mask)
    tl.store(y_ptr + (row * H + head) * P + offs_p, y.to(y_ptr.dtype.element_ty), mask=p_mask)
