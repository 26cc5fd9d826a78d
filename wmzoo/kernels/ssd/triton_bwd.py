"""The SSD backward: two kernels, each one program per (sequence, head) walking its chunks.

Notation of triton_fwd (a_s = dt_s A, Lam = in-chunk cumsum of a, xd_s = dt_s x_s, B~ / C~ the
rotated B / C, S the state entering a chunk, dS the gradient of the state leaving it).

``_ssd_bwd_forward_sweep`` (chunks in order, recomputing S):
    dC~_t = sum_{s<=t} exp(Lam_t - Lam_s) (dy_t . xd_s) B~_s + exp(Lam_t) dy_t^T S
  and writes C~_t . dC~_t, plus <dfinal, final> per (sequence, head).
``_ssd_bwd_reverse_sweep`` (chunks in reverse, carrying dS):
    dxd_s = sum_{t>=s} exp(Lam_t - Lam_s) (C~_t . B~_s) dy_t + exp(Lam_Q - Lam_s) dS B~_s
    dB~_s = sum_{t>=s} exp(Lam_t - Lam_s) (dy_t . xd_s) C~_t + exp(Lam_Q - Lam_s) dS^T xd_s
    dS   <- exp(Lam_Q) dS + sum_t exp(Lam_t) dy_t C~_t^T      (dS at the start = d initial_state)
The decays: with G_t the cumulative log decay over the whole sequence, the loss depends on G
only through exp(G_t - G_s) and exp(G_t) factors, which gives
    dL/dG_t = C~_t . dC~_t - B~_t . dB~_t  (+ <dfinal, final> at the last token),
so d a_s = sum_{t>=s} dL/dG_t, a reverse cumsum the reverse sweep carries across chunks; then
ddt_s = x_s . dxd_s + A d a_s and dA = sum_s dt_s d a_s. dB~ and dC~ are written per head in
fp32; the backend sums heads into groups and rotates them back (RoPE's transpose).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..registry import INTERPRET
from .triton_common import load_rotated, mm, sequence_range


def _configs():
    if INTERPRET:  # the interpreter takes exactly one config
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in ((4, 1), (8, 1), (8, 2))]


# Lengths, batch, head and group counts are not in the key: a new length never re-tunes.
_KEY = ["P", "N", "Q", "BLOCK_P", "BLOCK_N", "ROPE", "DOT"]


@triton.autotune(configs=_configs(), key=_KEY)
@triton.jit
def _ssd_bwd_forward_sweep(
    dy_ptr, dfinal_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, cu_ptr, cos_ptr, sin_ptr,
    dC_ptr, cdc_ptr, dff_ptr,
    T, H, G, P, N, HALF,
    HAS_DFINAL: tl.constexpr, HAS_H0: tl.constexpr, HAS_CU: tl.constexpr, ROPE: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr,
):
    k = tl.program_id(0)
    head = tl.program_id(1)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    steps = tl.arange(0, Q)
    start, end = sequence_range(cu_ptr, k, T, HAS_CU)
    group = head // (H // G)
    A = tl.load(A_ptr + head).to(tl.float32)
    p_mask = offs_p < P
    n_mask = offs_n < N
    state_off = ((k * H + head) * P + offs_p[:, None]) * N + offs_n[None, :]
    state_mask = p_mask[:, None] & n_mask[None, :]
    if HAS_H0:
        state = tl.load(h0_ptr + state_off, mask=state_mask, other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    causal = steps[:, None] >= steps[None, :]

    for c in range(0, tl.cdiv(end - start, Q)):
        rows = start + c * Q + steps
        row_mask = rows < end
        dt = tl.load(dt_ptr + rows * H + head, mask=row_mask, other=0.0).to(tl.float32)
        a = dt * A
        lam = tl.cumsum(a, axis=0)
        lam_end = tl.sum(a, axis=0)
        xy_off = (rows[:, None] * H + head) * P + offs_p[None, :]
        xy_mask = row_mask[:, None] & p_mask[None, :]
        xd = tl.load(x_ptr + xy_off, mask=xy_mask, other=0.0).to(tl.float32) * dt[:, None]
        dy = tl.load(dy_ptr + xy_off, mask=xy_mask, other=0.0).to(tl.float32)
        Bt = load_rotated(B_ptr + group * N, G * N, rows, row_mask, cos_ptr, sin_ptr, N, HALF, BLOCK_N, ROPE)
        Ct = load_rotated(C_ptr + group * N, G * N, rows, row_mask, cos_ptr, sin_ptr, N, HALF, BLOCK_N, ROPE)
        decay = tl.exp(tl.where(causal, lam[:, None] - lam[None, :], float("-inf")))
        dyxd = mm(dy, tl.trans(xd), DOT) * decay  # [t, s]
        dC = mm(dyxd, Bt, DOT) + tl.exp(lam)[:, None] * mm(dy, state, DOT)
        bn_off = (rows[:, None] * H + head) * N + offs_n[None, :]
        tl.store(dC_ptr + bn_off, dC, mask=row_mask[:, None] & n_mask[None, :])
        tl.store(cdc_ptr + rows * H + head, tl.sum(Ct * dC, axis=1), mask=row_mask)
        weighted = xd * tl.exp(lam_end - lam)[:, None]
        state = tl.exp(lam_end) * state + mm(tl.trans(weighted), Bt, DOT)

    if HAS_DFINAL:
        dfinal = tl.load(dfinal_ptr + state_off, mask=state_mask, other=0.0).to(tl.float32)
        tl.store(dff_ptr + k * H + head, tl.sum(tl.sum(dfinal * state, axis=1), axis=0))
    else:
        tl.store(dff_ptr + k * H + head, 0.0)


@triton.autotune(configs=_configs(), key=_KEY)
@triton.jit
def _ssd_bwd_reverse_sweep(
    dy_ptr, dfinal_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, cu_ptr, cos_ptr, sin_ptr,
    cdc_ptr, dff_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dA_ptr, dD_ptr, dh0_ptr,
    T, H, G, P, N, HALF,
    HAS_DFINAL: tl.constexpr, HAS_D: tl.constexpr, HAS_CU: tl.constexpr, ROPE: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr,
):
    k = tl.program_id(0)
    head = tl.program_id(1)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    steps = tl.arange(0, Q)
    start, end = sequence_range(cu_ptr, k, T, HAS_CU)
    group = head // (H // G)
    A = tl.load(A_ptr + head).to(tl.float32)
    p_mask = offs_p < P
    n_mask = offs_n < N
    state_off = ((k * H + head) * P + offs_p[:, None]) * N + offs_n[None, :]
    state_mask = p_mask[:, None] & n_mask[None, :]
    if HAS_DFINAL:
        dstate = tl.load(dfinal_ptr + state_off, mask=state_mask, other=0.0).to(tl.float32)
    else:
        dstate = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    if HAS_D:
        skip = tl.load(D_ptr + head).to(tl.float32)
    # d a_s = sum over t >= s of dL/dG_t; the final state's term sits at the last token.
    da_carry = tl.load(dff_ptr + k * H + head)
    dA_acc = 0.0
    dD_acc = 0.0
    causal = steps[:, None] >= steps[None, :]
    nchunks = tl.cdiv(end - start, Q)

    for i in range(0, nchunks):
        rows = start + (nchunks - 1 - i) * Q + steps
        row_mask = rows < end
        dt = tl.load(dt_ptr + rows * H + head, mask=row_mask, other=0.0).to(tl.float32)
        a = dt * A
        lam = tl.cumsum(a, axis=0)
        lam_end = tl.sum(a, axis=0)
        xy_off = (rows[:, None] * H + head) * P + offs_p[None, :]
        xy_mask = row_mask[:, None] & p_mask[None, :]
        x = tl.load(x_ptr + xy_off, mask=xy_mask, other=0.0).to(tl.float32)
        xd = x * dt[:, None]
        dy = tl.load(dy_ptr + xy_off, mask=xy_mask, other=0.0).to(tl.float32)
        Bt = load_rotated(B_ptr + group * N, G * N, rows, row_mask, cos_ptr, sin_ptr, N, HALF, BLOCK_N, ROPE)
        Ct = load_rotated(C_ptr + group * N, G * N, rows, row_mask, cos_ptr, sin_ptr, N, HALF, BLOCK_N, ROPE)
        decay = tl.exp(tl.where(causal, lam[:, None] - lam[None, :], float("-inf")))  # [t, s]
        to_end = tl.exp(lam_end - lam)[:, None]
        scores = mm(Ct, tl.trans(Bt), DOT) * decay
        dyxd = mm(dy, tl.trans(xd), DOT) * decay
        dxd = mm(tl.trans(scores), dy, DOT) + to_end * mm(Bt, tl.trans(dstate), DOT)
        dB = mm(tl.trans(dyxd), Ct, DOT) + to_end * mm(xd, dstate, DOT)
        bn_off = (rows[:, None] * H + head) * N + offs_n[None, :]
        tl.store(dB_ptr + bn_off, dB, mask=row_mask[:, None] & n_mask[None, :])

        dG = tl.load(cdc_ptr + rows * H + head, mask=row_mask, other=0.0) - tl.sum(Bt * dB, axis=1)
        da = da_carry + tl.cumsum(dG, axis=0, reverse=True)
        da_carry += tl.sum(dG, axis=0)
        dx = dxd * dt[:, None]
        if HAS_D:
            dx += skip * dy
            dD_acc += tl.sum(tl.sum(dy * x, axis=1), axis=0)
        tl.store(dx_ptr + xy_off, dx.to(dx_ptr.dtype.element_ty), mask=xy_mask)
        ddt = tl.sum(x * dxd, axis=1) + A * da
        tl.store(ddt_ptr + rows * H + head, ddt.to(ddt_ptr.dtype.element_ty), mask=row_mask)
        dA_acc += tl.sum(dt * da, axis=0)
        dstate = tl.exp(lam_end) * dstate + mm(tl.trans(dy * tl.exp(lam)[:, None]), Ct, DOT)

    tl.store(dh0_ptr + state_off, dstate, mask=state_mask)
    # Per-(sequence, head) partial sums; the backend adds them up (deterministic, no atomics).
    tl.store(dA_ptr + k * H + head, dA_acc)
    tl.store(dD_ptr + k * H + head, dD_acc)
