"""The SSD backward: two kernels, each one program per (sequence or segment, head) walking its chunks.

Notation of triton_fwd (a_s = dt_s A, Lam = in-chunk cumsum of a, xd_s = dt_s x_s, B~ / C~ the
rotated B / C, S the state entering a chunk, dS the gradient of the state leaving it).

``_ssd_bwd_forward_sweep`` (chunks in order, recomputing S):
    dC~_t = sum_{s<=t} exp(Lam_t - Lam_s) (dy_t . xd_s) B~_s + exp(Lam_t) dy_t^T S
  and writes C~_t . dC~_t, plus <dfinal, final> per (sequence, head).
``_ssd_bwd_chunk_local`` (every chunk independently, many programs per SM) and
``_ssd_bwd_reverse_sweep`` (chunks in reverse, carrying dS) together:
    dxd_s = sum_{t>=s} exp(Lam_t - Lam_s) (C~_t . B~_s) dy_t + exp(Lam_Q - Lam_s) dS B~_s
    dB~_s = sum_{t>=s} exp(Lam_t - Lam_s) (dy_t . xd_s) C~_t + exp(Lam_Q - Lam_s) dS^T xd_s
    dS   <- exp(Lam_Q) dS + sum_t exp(Lam_t) dy_t C~_t^T      (dS at the start = d initial_state)
The sums over t in the chunk (and W's row and column sums, below) need no state: the local
kernel computes them and writes them in fp32, and the sweep adds the terms with dS. The sweep is
a chain of dependent steps with one program per SM (latency-bound, docs/benchmarks/NOTES.md);
taking the local work off it leaves each step 5 of its 9 products (-0.49 ms of 4.57 on an H100,
ssd.md run 12). With RoPE the sweep computes them itself (LOCAL off): a third kernel rotating B
and C cost more than the products saved (+0.78 ms, same run; in run 16, with the split / paired
tiles in it too, +0.36 ms at r 64 and +0.90 ms at r = n), so the local kernel takes no RoPE.
The decays: with G_t the cumulative log decay over the whole sequence, the loss depends on G
only through exp(G_t - G_s) and exp(G_t) factors, which gives
    dL/dG_t = C~_t . dC~_t - B~_t . dB~_t  (+ <dfinal, final> at the last token),
so d a_s = sum_{t>=s} dL/dG_t, a reverse cumsum the reverse sweep carries across chunks; then
ddt_s = x_s . dxd_s + A d a_s and dA = sum_s dt_s d a_s. The kernels write dB~ and dC~ (per
head); the backend sums the heads of a group when g < h and then applies RoPE's transpose
(triton_common._unrotate_kernel). B~, C~ and the states are n-wide tiles, or with PLAIN cut
into rotated channels [0, NR) and plain ones [NR, n) as in triton_fwd: every product over n is
then the sum of the two parts' products, and the plain parts go from their loads into them.
PAIRED (r = n) cuts at r / 2 as triton_fwd does: the two tiles are the rotated halves, loaded
plain and turned against each other (paired_operands), no partner gathered.

Precision of dA: the per-token dL/dG_t are large and cancel over the sequence (every pair of
tokens enters once with + and once with -), and dA sums them all, so each pair must be the same
number on both sides. Pairs in one chunk: dL/dG_t's in-chunk part is taken from one fp32 matrix
W[t, s] = (dy_t . xd_s)(C~_t . B~_s) exp(Lam_t - Lam_s) as its row sum minus its column sum (the
reverse sweep; C~ . dC~ and B~ . dB~ above then carry the state terms only). Pairs across
chunks: the products with S and dS are done to ~fp32 accuracy (one operand split into bf16 hi +
lo: mm_split_*), and rotated B~ / C~ are rounded once and used rounded everywhere (operand).
"""


from __future__ import annotations

import triton
import triton.language as tl

from ..autotune import autotuned
from .triton_common import (
    TILE_KEY,
    chunk_decays,
    configs,
    load_cols,
    load_paired_halves,
    load_rotated,
    load_state_cols,
    mm,
    mm_split_a,
    mm_split_b,
    operand,
    program_chunks,
    store_cols,
    store_state_cols,
)


@triton.jit
def rotated_operands(Bg, Cg, row_stride, rows, row_mask, cos_ptr, sin_ptr, N, HALF,
                     NB: tl.constexpr, ROPE: tl.constexpr, DOT: tl.constexpr):
    """B~ and C~ of a chunk as the backward uses them: rotated, then rounded once to what tl.dot
    sees (operand), so that products and elementwise uses see the same values."""
    b = load_rotated(Bg, row_stride, rows, row_mask, cos_ptr, sin_ptr, N, HALF, NB, ROPE)
    c = load_rotated(Cg, row_stride, rows, row_mask, cos_ptr, sin_ptr, N, HALF, NB, ROPE)
    if ROPE:  # without RoPE the loads are exact in the half type already
        b = operand(b, DOT)
        c = operand(c, DOT)
    return b, c


@triton.jit
def paired_operands(Bg, Cg, row_stride, rows, row_mask, cos_ptr, sin_ptr, HALF,
                    HB: tl.constexpr, DOT: tl.constexpr):
    """load_paired_halves' b_lo, c_lo, b_hi, c_hi (PAIRED, r = n), rounded once like
    rotated_operands'."""
    b_lo, c_lo, b_hi, c_hi = load_paired_halves(Bg, Cg, row_stride, rows, row_mask, cos_ptr, sin_ptr, HALF, HB)
    return operand(b_lo, DOT), operand(c_lo, DOT), operand(b_hi, DOT), operand(c_hi, DOT)


@triton.jit
def in_chunk_terms(x, dy, dt, lam, b, c_t, b_plain, c_plain, causal_t, DOT: tl.constexpr, PLAIN: tl.constexpr):
    """The reverse sweep's in-chunk terms of one chunk (no state needed), fp32: dB~ and dxd
    through the chunk's own tokens, and W's column sums minus row sums (dL/dG's in-chunk part),
    with W[t, s] = (dy_t . xd_s)(C~_t . B~_s) decay_ts, all fp32: row sums minus column sums of
    the same matrix, so its pairs cancel exactly in dA. Every [s, t] matrix is built in that
    orientation, operands swapped rather than results transposed (ssd.md run 11). With PLAIN
    the plain channels' part of dB~ comes fourth (the third, unused, otherwise)."""
    decay_t = tl.exp(tl.where(causal_t, lam[None, :] - lam[:, None], float("-inf")))  # [s, t]
    dyxd_t = mm(x, tl.trans(dy), DOT) * (dt[:, None] * decay_t)  # [s, t] = (dy_t . xd_s) decay
    scores_t = mm(b, tl.trans(c_t), DOT)  # [s, t] = B~_s . C~_t
    db_plain = 0.0
    if PLAIN:
        scores_t += mm(b_plain, tl.trans(c_plain), DOT)
        db_plain = mm(dyxd_t, c_plain, DOT)
    w_t = dyxd_t * scores_t  # W^T [s, t]
    return (mm(dyxd_t, c_t, DOT), mm(scores_t * decay_t, dy, DOT), tl.sum(w_t, axis=0) - tl.sum(w_t, axis=1),
            db_plain)


@autotuned(configs(((4, 1), (8, 1), (8, 2))), key=TILE_KEY + ["PB", "PLAIN", "PAIRED"])
@triton.jit
def _ssd_bwd_forward_sweep(
    dy_ptr, dfinal_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, cu_ptr, cos_ptr, sin_ptr,
    dC_ptr, cdc_ptr, dff_ptr,
    T, H, G, P, N, HALF, SEGS, NR,
    HAS_DFINAL: tl.constexpr, HAS_H0: tl.constexpr, HAS_CU: tl.constexpr,
    ROPE: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, NB: tl.constexpr, DOT: tl.constexpr,
    PLAIN: tl.constexpr, PB: tl.constexpr, PAIRED: tl.constexpr,
):
    tl.static_assert(not PAIRED or (PLAIN and ROPE and PB == NB))
    k = tl.program_id(0)  # state index: sequence x SEGS + segment (the sequence when SEGS = 1)
    head = tl.program_id(1)
    offs_p = tl.arange(0, BLOCK_P)
    steps = tl.arange(0, Q)
    start, end, c0, c1 = program_chunks(cu_ptr, k, T, Q, SEGS, HAS_CU)
    group = head // (H // G)
    A = tl.load(A_ptr + head).to(tl.float32)
    Bg = B_ptr + group * N
    Cg = C_ptr + group * N
    dCh = dC_ptr + head * N  # dC~ per head: (tokens, h, n)
    s = load_state_cols(h0_ptr, k, head, H, P, N, offs_p, 0, NR, HAS_H0, BLOCK_P, NB)
    if PLAIN:
        s_plain = load_state_cols(h0_ptr, k, head, H, P, N, offs_p, NR, N - NR, HAS_H0, BLOCK_P, PB)
    causal = steps[:, None] >= steps[None, :]

    for c in range(c0, c1):
        rows = start + c * Q + steps
        row_mask = rows < end
        dt, lam, lam_end = chunk_decays(dt_ptr, rows, row_mask, H, head, A)
        x = load_cols(x_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        xd = x * dt[:, None]
        dy = load_cols(dy_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        decay = tl.exp(tl.where(causal, lam[:, None] - lam[None, :], float("-inf")))
        dyxd = mm(dy, tl.trans(x), DOT) * (dt[None, :] * decay)  # [t, s]; x, dy exact operands
        if PAIRED:  # the second tiles ("plain" below) are the rotated upper halves
            b, c_t, b_plain, c_plain = paired_operands(Bg, Cg, G * N, rows, row_mask, cos_ptr, sin_ptr, HALF, NB, DOT)
        else:
            b, c_t = rotated_operands(Bg, Cg, G * N, rows, row_mask, cos_ptr, sin_ptr, NR, HALF, NB, ROPE, DOT)
        st = tl.exp(lam)[:, None] * mm_split_b(dy, s, DOT)
        dc = mm(dyxd, b, DOT) + st
        # C~ . dC~ through the state only (see module doc)
        cdc = tl.sum(c_t * st, axis=1)
        store_cols(dCh, H * N, rows, row_mask, 0, NR, dc, NB)
        weighted = tl.trans(xd * tl.exp(lam_end - lam)[:, None])
        s = tl.exp(lam_end) * s + mm_split_a(weighted, b, DOT)
        if PLAIN:
            if not PAIRED:  # the plain channels: loads exact in the half type
                b_plain = load_cols(Bg, G * N, rows, row_mask, NR, N - NR, PB)
                c_plain = load_cols(Cg, G * N, rows, row_mask, NR, N - NR, PB)
            st_plain = tl.exp(lam)[:, None] * mm_split_b(dy, s_plain, DOT)
            cdc += tl.sum(c_plain * st_plain, axis=1)
            store_cols(dCh, H * N, rows, row_mask, NR, N - NR, mm(dyxd, b_plain, DOT) + st_plain, PB)
            s_plain = tl.exp(lam_end) * s_plain + mm_split_a(weighted, b_plain, DOT)
        tl.store(cdc_ptr + rows * H + head, cdc, mask=row_mask)

    # <dfinal, final>: the final state's term of dL/dG, at the last token.
    f = load_state_cols(dfinal_ptr, k, head, H, P, N, offs_p, 0, NR, HAS_DFINAL, BLOCK_P, NB)
    dff = tl.sum(tl.sum(f * s, axis=1), axis=0)
    if PLAIN:
        f = load_state_cols(dfinal_ptr, k, head, H, P, N, offs_p, NR, N - NR, HAS_DFINAL, BLOCK_P, PB)
        dff += tl.sum(tl.sum(f * s_plain, axis=1), axis=0)
    tl.store(dff_ptr + k * H + head, dff)


@autotuned(configs(((4, 1), (4, 2), (8, 1))), key=[k for k in TILE_KEY if k != "ROPE"])
@triton.jit
def _ssd_bwd_chunk_local(
    dy_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, cu_ptr,
    dBl_ptr, dxdl_ptr, dgl_ptr,
    T, H, G, P, N, SEGS,
    HAS_CU: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, NB: tl.constexpr, DOT: tl.constexpr,
):
    """The reverse sweep's in-chunk terms without RoPE, fp32 per (token, head): dB and dxd
    through the chunk's own tokens, and W's column sums minus row sums (dL/dG's in-chunk part).
    Programs (sequence x SEGS + piece, head) each take a run of chunks; no chunk depends on
    another."""
    k = tl.program_id(0)
    head = tl.program_id(1)
    steps = tl.arange(0, Q)
    start, end, c0, c1 = program_chunks(cu_ptr, k, T, Q, SEGS, HAS_CU)
    group = head // (H // G)
    A = tl.load(A_ptr + head).to(tl.float32)
    Bg = B_ptr + group * N
    Cg = C_ptr + group * N
    causal_t = steps[:, None] <= steps[None, :]  # [s, t]: t >= s
    for c in range(c0, c1):
        rows = start + c * Q + steps
        row_mask = rows < end
        dt, lam, lam_end = chunk_decays(dt_ptr, rows, row_mask, H, head, A)
        x = load_cols(x_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        dy = load_cols(dy_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        b = load_cols(Bg, G * N, rows, row_mask, 0, N, NB)
        c_t = load_cols(Cg, G * N, rows, row_mask, 0, N, NB)
        db_in, dxd_in, dg_in, _ = in_chunk_terms(x, dy, dt, lam, b, c_t, b, c_t, causal_t, DOT, False)
        store_cols(dBl_ptr + head * N, H * N, rows, row_mask, 0, N, db_in, NB)
        store_cols(dxdl_ptr + head * P, H * P, rows, row_mask, 0, P, dxd_in, BLOCK_P)
        tl.store(dgl_ptr + rows * H + head, dg_in, mask=row_mask)


@autotuned(configs(((4, 1), (8, 1), (8, 2))), key=TILE_KEY + ["PB", "PLAIN", "PAIRED"])
@triton.jit
def _ssd_bwd_reverse_sweep(
    dy_ptr, dfinal_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, cu_ptr, cos_ptr, sin_ptr,
    cdc_ptr, dff_ptr, dBl_ptr, dxdl_ptr, dgl_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dA_ptr, dD_ptr, dh0_ptr,
    T, H, G, P, N, HALF, SEGS, NR,
    HAS_DFINAL: tl.constexpr, HAS_D: tl.constexpr, HAS_CU: tl.constexpr,
    ROPE: tl.constexpr, LOCAL: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, NB: tl.constexpr, DOT: tl.constexpr,
    PLAIN: tl.constexpr, PB: tl.constexpr, PAIRED: tl.constexpr,
):
    """LOCAL (without RoPE): the in-chunk terms come from _ssd_bwd_chunk_local's buffers;
    otherwise (with RoPE) this kernel computes them: one kernel fewer rotating B and C."""
    tl.static_assert(not (LOCAL and ROPE))
    tl.static_assert(not PAIRED or (PLAIN and ROPE and PB == NB))
    k = tl.program_id(0)  # state index: sequence x SEGS + segment (the sequence when SEGS = 1)
    head = tl.program_id(1)
    offs_p = tl.arange(0, BLOCK_P)
    steps = tl.arange(0, Q)
    start, end, c0, c1 = program_chunks(cu_ptr, k, T, Q, SEGS, HAS_CU)
    group = head // (H // G)
    A = tl.load(A_ptr + head).to(tl.float32)
    Bg = B_ptr + group * N
    Cg = C_ptr + group * N
    dBh = dB_ptr + head * N  # dB~ per head: (tokens, h, n)
    causal_t = steps[:, None] <= steps[None, :]  # [s, t]: t >= s (when not LOCAL)
    ds = load_state_cols(dfinal_ptr, k, head, H, P, N, offs_p, 0, NR, HAS_DFINAL, BLOCK_P, NB)
    if PLAIN:
        ds_plain = load_state_cols(dfinal_ptr, k, head, H, P, N, offs_p, NR, N - NR, HAS_DFINAL, BLOCK_P, PB)
    if HAS_D:
        skip = tl.load(D_ptr + head).to(tl.float32)
    # d a_s = sum over t >= s of dL/dG_t; the final state's term sits at the last token. What
    # the tokens after this program's chunks add comes in as dff (triton_segments: carry).
    da_carry = tl.load(dff_ptr + k * H + head)
    dA_acc = 0.0
    dD_acc = 0.0

    for i in range(0, c1 - c0):
        rows = start + (c1 - 1 - i) * Q + steps
        row_mask = rows < end
        dt, lam, lam_end = chunk_decays(dt_ptr, rows, row_mask, H, head, A)
        x = load_cols(x_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        dy = load_cols(dy_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        to_end = tl.exp(lam_end - lam)[:, None]
        dt_to_end = dt[:, None] * to_end  # xd dS = dt (x dS): x is exact in the half type
        if PAIRED:  # the second tiles ("plain" below) are the rotated upper halves
            b, c_t, b_plain, c_plain = paired_operands(Bg, Cg, G * N, rows, row_mask, cos_ptr, sin_ptr, HALF, NB, DOT)
        else:
            b, c_t = rotated_operands(Bg, Cg, G * N, rows, row_mask, cos_ptr, sin_ptr, NR, HALF, NB, ROPE, DOT)
            b_plain = b  # (unused without PLAIN)
            c_plain = c_t
        from_state = mm(b, tl.trans(ds), DOT)  # dS B~_s, for dxd
        sb = dt_to_end * mm_split_b(x, ds, DOT)
        b_db = tl.sum(b * sb, axis=1)
        if PLAIN:
            if not PAIRED:  # the plain channels: loads exact in the half type
                b_plain = load_cols(Bg, G * N, rows, row_mask, NR, N - NR, PB)
                c_plain = load_cols(Cg, G * N, rows, row_mask, NR, N - NR, PB)
            from_state += mm(b_plain, tl.trans(ds_plain), DOT)
            sb_plain = dt_to_end * mm_split_b(x, ds_plain, DOT)
            b_db += tl.sum(b_plain * sb_plain, axis=1)
        dG = tl.load(cdc_ptr + rows * H + head, mask=row_mask, other=0.0) - b_db
        # plus the in-chunk terms: loaded (LOCAL: _ssd_bwd_chunk_local wrote them) or computed here
        if LOCAL:
            db_in = load_cols(dBl_ptr + head * N, H * N, rows, row_mask, 0, N, NB)
            dxd = load_cols(dxdl_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
            dG += tl.load(dgl_ptr + rows * H + head, mask=row_mask, other=0.0)
        else:
            db_in, dxd, dg_in, db_in_plain = in_chunk_terms(x, dy, dt, lam, b, c_t, b_plain, c_plain, causal_t,
                                                            DOT, PLAIN)
            dG += dg_in
        store_cols(dBh, H * N, rows, row_mask, 0, NR, db_in + sb, NB)
        if PLAIN:
            store_cols(dBh, H * N, rows, row_mask, NR, N - NR, db_in_plain + sb_plain, PB)
        dxd += to_end * from_state
        da = da_carry + tl.cumsum(dG, axis=0, reverse=True)
        da_carry += tl.sum(dG, axis=0)
        dx = dxd * dt[:, None]
        if HAS_D:
            dx += skip * dy
            dD_acc += tl.sum(tl.sum(dy * x, axis=1), axis=0)
        store_cols(dx_ptr + head * P, H * P, rows, row_mask, 0, P, dx, BLOCK_P)
        ddt = tl.sum(x * dxd, axis=1) + A * da
        tl.store(ddt_ptr + rows * H + head, ddt.to(ddt_ptr.dtype.element_ty), mask=row_mask)
        dA_acc += tl.sum(dt * da, axis=0)
        # dS entering this chunk: decayed through it, plus what its outputs read from it.
        weighted = tl.trans(dy * tl.exp(lam)[:, None])
        ds = tl.exp(lam_end) * ds + mm_split_a(weighted, c_t, DOT)
        if PLAIN:
            ds_plain = tl.exp(lam_end) * ds_plain + mm_split_a(weighted, c_plain, DOT)

    # dS at the sequence start = d initial_state, from the first segment's program
    store_state_cols(dh0_ptr, k // SEGS, head, H, P, N, offs_p, 0, NR, ds, k % SEGS == 0, NB)
    if PLAIN:
        store_state_cols(dh0_ptr, k // SEGS, head, H, P, N, offs_p, NR, N - NR, ds_plain, k % SEGS == 0, PB)
    # Per-(sequence, head) partial sums; the backend adds them up (deterministic, no atomics).
    tl.store(dA_ptr + k * H + head, dA_acc)
    tl.store(dD_ptr + k * H + head, dD_acc)
