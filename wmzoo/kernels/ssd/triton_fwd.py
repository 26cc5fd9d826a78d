"""The SSD forward kernel: one program per (sequence, head, block of p) walks its chunks.

Per chunk of Q tokens, with a_s = dt_s A and Lam_t = a_1 + ... + a_t (inside the chunk):
    y_t    = sum_{s<=t} exp(Lam_t - Lam_s) (C~_t . B~_s) dt_s x_s   (the quadratic, dual form)
           + exp(Lam_t) S C~_t                                      (the incoming state S)
           + D x_t
    S     <- exp(Lam_Q) S + sum_s exp(Lam_Q - Lam_s) dt_s x_s B~_s^T
The state (p x n, fp32) stays in registers from chunk to chunk, so the chunk states are never
written to memory: the forward reads x, dt, B, C once and writes y and the final state.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..registry import INTERPRET
from .triton_common import load_rotated, mm, sequence_range


def _configs():
    if INTERPRET:  # the interpreter takes exactly one config
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in ((4, 2), (8, 2), (4, 3))]


# Lengths, batch, head and group counts are not in the key: a new length never re-tunes.
@triton.autotune(configs=_configs(), key=["P", "N", "Q", "BLOCK_P", "BLOCK_N", "ROPE", "DOT"])
@triton.jit
def _ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, cu_ptr, cos_ptr, sin_ptr,
    y_ptr, final_ptr,
    T, H, G, P, N, HALF,
    HAS_D: tl.constexpr, HAS_H0: tl.constexpr, HAS_CU: tl.constexpr, ROPE: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr,
):
    k = tl.program_id(0)
    head = tl.program_id(1)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    steps = tl.arange(0, Q)
    start, end = sequence_range(cu_ptr, k, T, HAS_CU)
    group = head // (H // G)
    A = tl.load(A_ptr + head).to(tl.float32)
    p_mask = offs_p < P
    state_off = ((k * H + head) * P + offs_p[:, None]) * N + offs_n[None, :]
    state_mask = p_mask[:, None] & (offs_n[None, :] < N)
    if HAS_H0:
        state = tl.load(h0_ptr + state_off, mask=state_mask, other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    if HAS_D:
        skip = tl.load(D_ptr + head).to(tl.float32)
    causal = steps[:, None] >= steps[None, :]

    for c in range(0, tl.cdiv(end - start, Q)):
        rows = start + c * Q + steps
        row_mask = rows < end
        # Past the sequence end dt = x = B = C = 0: those steps neither decay nor feed the state.
        dt = tl.load(dt_ptr + rows * H + head, mask=row_mask, other=0.0).to(tl.float32)
        a = dt * A
        lam = tl.cumsum(a, axis=0)
        lam_end = tl.sum(a, axis=0)
        xy_off = (rows[:, None] * H + head) * P + offs_p[None, :]
        xy_mask = row_mask[:, None] & p_mask[None, :]
        x = tl.load(x_ptr + xy_off, mask=xy_mask, other=0.0).to(tl.float32)
        Bt = load_rotated(B_ptr + group * N, G * N, rows, row_mask, cos_ptr, sin_ptr, N, HALF, BLOCK_N, ROPE)
        Ct = load_rotated(C_ptr + group * N, G * N, rows, row_mask, cos_ptr, sin_ptr, N, HALF, BLOCK_N, ROPE)
        xd = x * dt[:, None]
        # The mask goes in before exp: above the diagonal Lam_t - Lam_s > 0 could overflow.
        decay = tl.exp(tl.where(causal, lam[:, None] - lam[None, :], float("-inf")))
        scores = mm(Ct, tl.trans(Bt), DOT) * decay
        y = mm(scores, xd, DOT) + tl.exp(lam)[:, None] * mm(Ct, tl.trans(state), DOT)
        if HAS_D:
            y += skip * x
        tl.store(y_ptr + xy_off, y.to(y_ptr.dtype.element_ty), mask=xy_mask)
        weighted = xd * tl.exp(lam_end - lam)[:, None]
        state = tl.exp(lam_end) * state + mm(tl.trans(weighted), Bt, DOT)

    tl.store(final_ptr + state_off, state, mask=state_mask)
