"""The SSD backward: sweeps over each sequence's chunks (one program per sequence or segment,
head and block of the state's columns) and chunk-parallel kernels.

Notation of triton_fwd (a_s = dt_s A, Lam = in-chunk cumsum of a, xd_s = dt_s x_s, B~ / C~ the
rotated B / C, S the state entering a chunk, dS the gradient of the state leaving it).

``_ssd_bwd_forward_sweep`` (chunks in order, recomputing S):
    dC~_t = sum_{s<=t} exp(Lam_t - Lam_s) (dy_t . xd_s) B~_s + exp(Lam_t) dy_t^T S
  and writes C~_t . dC~_t, plus <dfinal, final> per (sequence, head).
Then, chunks in reverse carrying dS:
    dxd_s = sum_{t>=s} exp(Lam_t - Lam_s) (C~_t . B~_s) dy_t + exp(Lam_Q - Lam_s) dS B~_s
    dB~_s = sum_{t>=s} exp(Lam_t - Lam_s) (dy_t . xd_s) C~_t + exp(Lam_Q - Lam_s) dS^T xd_s
    dS   <- exp(Lam_Q) dS + sum_t exp(Lam_t) dy_t C~_t^T      (dS at the start = d initial_state)
The sums over t in the chunk (and W's row and column sums, below) need no state. Without RoPE
three kernels share this work:
- ``_ssd_bwd_state_sweep`` carries dS alone, in column blocks (S's and dS's columns evolve
  independently), and writes the state terms: dB~'s, complete per block, and its parts of the
  two sums over n (dS B~_s for dxd, B~ . dB~ for dL/dG);
- ``_ssd_bwd_chunk_local`` (every chunk independently, many programs per SM) computes the
  in-chunk terms, adds the state terms and writes dB~, dx, x . dxd and dL/dG;
- ``_ssd_bwd_decay_scan`` turns dL/dG into d a (below), ddt and dA: scalars per token.
Why: the sweeps are chains of dependent chunk steps at 255 registers per thread with one or two
programs per SM, waiting on loads and barriers (ssd.md run 10); each product taken off them, and
each register, counts (the chunk-local split took 0.49 ms off 4.57 on an H100, run 12; the
column blocks cut the state sweep's spills to 0.4 KB, from 4.5 KB for the sweep it replaced).
With RoPE, ``_ssd_bwd_reverse_sweep`` does all of it in one sweep: every kernel that rotates B
and C pays the rotation, and a third one cost more than the products it saved (+0.78 ms, run 12).
The decays: with G_t the cumulative log decay over the whole sequence, the loss depends on G
only through exp(G_t - G_s) and exp(G_t) factors, which gives
    dL/dG_t = C~_t . dC~_t - B~_t . dB~_t  (+ <dfinal, final> at the last token),
so d a_s = sum_{t>=s} dL/dG_t, a reverse cumsum carried across chunks; then
ddt_s = x_s . dxd_s + A d a_s and dA = sum_s dt_s d a_s. The kernels write dB~ and dC~ (per
head); the backend sums the heads of a group when g < h and then applies RoPE's transpose
(triton_common._unrotate_kernel). B~, C~ and the states are single n-wide tiles as in triton_fwd.

Precision of dA: the per-token dL/dG_t are large and cancel over the sequence (every pair of
tokens enters once with + and once with -), and dA sums them all, so each pair must be the same
number on both sides. Pairs in one chunk: dL/dG_t's in-chunk part is taken from one fp32 matrix
W[t, s] = (dy_t . xd_s)(C~_t . B~_s) exp(Lam_t - Lam_s) as its row sum minus its column sum
(in_chunk_terms; C~ . dC~ and B~ . dB~ above then carry the state terms only). Pairs across
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
    load_rotated,
    load_state,
    mm,
    mm_split_a,
    mm_split_b,
    operand,
    program_chunks,
    store_cols,
    store_state,
)


@triton.jit
def rotated_operands(Bg, Cg, row_stride, row0, steps, row_mask, cos_ptr, sin_ptr, col0, N, HALF,
                     NB: tl.constexpr, ROPE: tl.constexpr, DOT: tl.constexpr, BLOCKED: tl.constexpr = False):
    """B~ and C~ of a chunk (channels col0 + [0, NB)) as the backward uses them: rotated, then
    rounded once to what tl.dot sees (operand), so that products and elementwise uses see the
    same values. BLOCKED (the sweeps' column blocks): a block without rotated channels skips
    the rotation. A branch on a run-time value, so only there: the loads inside it are not
    pipelined (on triton 3.6 the forward sweep's RoPE spills fell 3.1 -> 0.3 KB at 8 warps, 2
    stages, and its shared memory 57 -> 33 KB)."""
    if ROPE and BLOCKED:
        if col0 < 2 * HALF:
            b = load_rotated(Bg, row_stride, row0, steps, row_mask, cos_ptr, sin_ptr, col0, N, HALF, NB, True)
            c = load_rotated(Cg, row_stride, row0, steps, row_mask, cos_ptr, sin_ptr, col0, N, HALF, NB, True)
        else:
            b = load_rotated(Bg, row_stride, row0, steps, row_mask, cos_ptr, sin_ptr, col0, N, HALF, NB, False)
            c = load_rotated(Cg, row_stride, row0, steps, row_mask, cos_ptr, sin_ptr, col0, N, HALF, NB, False)
    else:
        b = load_rotated(Bg, row_stride, row0, steps, row_mask, cos_ptr, sin_ptr, col0, N, HALF, NB, ROPE)
        c = load_rotated(Cg, row_stride, row0, steps, row_mask, cos_ptr, sin_ptr, col0, N, HALF, NB, ROPE)
    if ROPE:  # without RoPE the loads are exact in the half type already
        b = operand(b, DOT)
        c = operand(c, DOT)
    return b, c


@triton.jit
def in_chunk_terms(x, dy, dt, lam, b, c_t, causal_t, DOT: tl.constexpr):
    """The reverse sweep's in-chunk terms of one chunk (no state needed), fp32: dB~ and dxd
    through the chunk's own tokens, and W's column sums minus row sums (dL/dG's in-chunk part),
    with W[t, s] = (dy_t . xd_s)(C~_t . B~_s) decay_ts, all fp32: row sums minus column sums of
    the same matrix, so its pairs cancel exactly in dA. Every [s, t] matrix is built in that
    orientation, operands swapped rather than results transposed (ssd.md run 11)."""
    decay_t = tl.exp(tl.where(causal_t, lam[None, :] - lam[:, None], float("-inf")))  # [s, t]
    dyxd_t = mm(x, tl.trans(dy), DOT) * (dt[:, None] * decay_t)  # [s, t] = (dy_t . xd_s) decay
    scores_t = mm(b, tl.trans(c_t), DOT)  # [s, t] = B~_s . C~_t
    w_t = dyxd_t * scores_t  # W^T [s, t]
    return mm(dyxd_t, c_t, DOT), mm(scores_t * decay_t, dy, DOT), tl.sum(w_t, axis=0) - tl.sum(w_t, axis=1)


@autotuned(configs(((4, 1), (8, 1), (8, 2))), key=TILE_KEY)
@triton.jit
def _ssd_bwd_forward_sweep(
    dy_ptr, dfinal_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, cu_ptr, cos_ptr, sin_ptr,
    dC_ptr, cdc_ptr, dff_ptr,
    T, H, G, P, N, HALF, SEGS,
    HAS_DFINAL: tl.constexpr, HAS_H0: tl.constexpr, HAS_CU: tl.constexpr,
    ROPE: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, NB: tl.constexpr, DOT: tl.constexpr,
):
    """Program (k, head, j) carries columns [j NB, (j + 1) NB) of the state: S's columns
    evolve independently, and so do dC~'s (dy_t^T S and the in-chunk sum over B~_s). Only the
    row sums over n (C~ . dC~ and <dfinal, final>) need every block: each block writes its
    part (last axis of cdc / dff, as many as programs on axis 2) and the backend adds them."""
    k = tl.program_id(0)  # state index: sequence x SEGS + segment (the sequence when SEGS = 1)
    head = tl.program_id(1)
    col0 = tl.program_id(2) * NB
    parts = tl.num_programs(2)
    offs_p = tl.arange(0, BLOCK_P)
    steps = tl.arange(0, Q)
    start, end, c0, c1 = program_chunks(cu_ptr, k, T, Q, SEGS, HAS_CU)
    group = head // (H // G)
    A = tl.load(A_ptr + head).to(tl.float32)
    Bg = B_ptr + group * N
    Cg = C_ptr + group * N
    dCh = dC_ptr + head * N  # dC~ per head: (tokens, h, n)
    s = load_state(h0_ptr, k, head, H, P, N, offs_p, col0, HAS_H0, BLOCK_P, NB)
    causal = steps[:, None] >= steps[None, :]

    for c in range(c0, c1):
        row0 = start + c * Q
        rows = row0 + steps
        row_mask = rows < end
        dt, lam, lam_end = chunk_decays(dt_ptr, rows, row_mask, H, head, A)
        x = load_cols(x_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        xd = x * dt[:, None]
        dy = load_cols(dy_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        decay = tl.exp(tl.where(causal, lam[:, None] - lam[None, :], float("-inf")))
        dyxd = mm(dy, tl.trans(x), DOT) * (dt[None, :] * decay)  # [t, s]; x, dy exact operands
        b, c_t = rotated_operands(Bg, Cg, G * N, row0, steps, row_mask, cos_ptr, sin_ptr, col0, N, HALF, NB, ROPE, DOT, True)
        st = tl.exp(lam)[:, None] * mm_split_b(dy, s, DOT)
        dc = mm(dyxd, b, DOT) + st
        # C~ . dC~ through the state only (see module doc), this block's columns
        tl.store(cdc_ptr + (rows * H + head) * parts + tl.program_id(2), tl.sum(c_t * st, axis=1), mask=row_mask)
        store_cols(dCh, H * N, rows, row_mask, col0, N - col0, dc, NB)
        weighted = tl.trans(xd * tl.exp(lam_end - lam)[:, None])
        s = tl.exp(lam_end) * s + mm_split_a(weighted, b, DOT)

    # <dfinal, final>: the final state's term of dL/dG, at the last token (this block's part).
    f = load_state(dfinal_ptr, k, head, H, P, N, offs_p, col0, HAS_DFINAL, BLOCK_P, NB)
    tl.store(dff_ptr + (k * H + head) * parts + tl.program_id(2), tl.sum(tl.sum(f * s, axis=1), axis=0))


@autotuned(configs(((4, 1), (8, 1), (8, 2))), key=TILE_KEY)
@triton.jit
def _ssd_bwd_state_sweep(
    dy_ptr, dfinal_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, cu_ptr, cos_ptr, sin_ptr,
    dBs_ptr, dxds_ptr, bdb_ptr, dh0_ptr,
    T, H, G, P, N, HALF, SEGS,
    HAS_DFINAL: tl.constexpr, HAS_CU: tl.constexpr, ROPE: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, NB: tl.constexpr, DOT: tl.constexpr,
):
    """The reverse sweep's state terms only (chunks in reverse, carrying dS), program (k, head,
    j) on columns [j NB, (j + 1) NB) of dS, which evolve independently: writes dB~'s state term
    for those columns (fp32, complete), and its parts of the sums over n, dxd's state term
    exp(Lam_Q - Lam_s) dS B~_s and B~_s . dB~_s, one per block (last axis), for
    _ssd_bwd_chunk_local to add up."""
    k = tl.program_id(0)  # state index: sequence x SEGS + segment (the sequence when SEGS = 1)
    head = tl.program_id(1)
    col0 = tl.program_id(2) * NB
    parts = tl.num_programs(2)
    offs_p = tl.arange(0, BLOCK_P)
    steps = tl.arange(0, Q)
    start, end, c0, c1 = program_chunks(cu_ptr, k, T, Q, SEGS, HAS_CU)
    group = head // (H // G)
    A = tl.load(A_ptr + head).to(tl.float32)
    Bg = B_ptr + group * N
    Cg = C_ptr + group * N
    ds = load_state(dfinal_ptr, k, head, H, P, N, offs_p, col0, HAS_DFINAL, BLOCK_P, NB)
    for i in range(0, c1 - c0):
        row0 = start + (c1 - 1 - i) * Q
        rows = row0 + steps
        row_mask = rows < end
        dt, lam, lam_end = chunk_decays(dt_ptr, rows, row_mask, H, head, A)
        x = load_cols(x_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        dy = load_cols(dy_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        to_end = tl.exp(lam_end - lam)[:, None]
        b, c_t = rotated_operands(Bg, Cg, G * N, row0, steps, row_mask, cos_ptr, sin_ptr, col0, N, HALF, NB, ROPE, DOT, True)
        sb = (dt[:, None] * to_end) * mm_split_b(x, ds, DOT)  # xd dS = dt (x dS): x exact
        store_cols(dBs_ptr + head * N, H * N, rows, row_mask, col0, N - col0, sb, NB)
        store_cols(dxds_ptr + (head * parts + tl.program_id(2)) * P, H * parts * P, rows, row_mask, 0, P,
                   to_end * mm(b, tl.trans(ds), DOT), BLOCK_P)
        tl.store(bdb_ptr + (rows * H + head) * parts + tl.program_id(2), tl.sum(b * sb, axis=1), mask=row_mask)
        # dS entering this chunk: decayed through it, plus what its outputs read from it.
        weighted = tl.trans(dy * tl.exp(lam)[:, None])
        ds = tl.exp(lam_end) * ds + mm_split_a(weighted, c_t, DOT)
    # dS at the sequence start = d initial_state, from the first segment's program
    store_state(dh0_ptr, k // SEGS, head, H, P, N, offs_p, col0, ds, k % SEGS == 0, NB)


@autotuned(configs(((4, 1), (4, 2), (8, 1))), key=TILE_KEY + ["PARTS"])
@triton.jit
def _ssd_bwd_chunk_local(
    dy_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, cu_ptr, cos_ptr, sin_ptr,
    cdc_ptr, dBs_ptr, dxds_ptr, bdb_ptr,
    dB_ptr, dx_ptr, ddtp_ptr, dG_ptr, dD_ptr,
    T, H, G, P, N, HALF, SEGS,
    HAS_D: tl.constexpr, HAS_CU: tl.constexpr, ROPE: tl.constexpr, PARTS: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, NB: tl.constexpr, DOT: tl.constexpr,
):
    """Every chunk independently (programs: sequence x SEGS + piece, head; each a run of chunks):
    the in-chunk terms (in_chunk_terms) plus the state terms _ssd_bwd_state_sweep wrote, giving
    dB~ and dx, x . dxd (ddt without its decay term) and dL/dG per (token, head); the reverse
    cumsum of dL/dG that the decay term needs crosses chunks (_ssd_bwd_decay_scan)."""
    k = tl.program_id(0)
    head = tl.program_id(1)
    steps = tl.arange(0, Q)
    start, end, c0, c1 = program_chunks(cu_ptr, k, T, Q, SEGS, HAS_CU)
    group = head // (H // G)
    A = tl.load(A_ptr + head).to(tl.float32)
    Bg = B_ptr + group * N
    Cg = C_ptr + group * N
    if HAS_D:
        skip = tl.load(D_ptr + head).to(tl.float32)
    dD_acc = 0.0
    causal_t = steps[:, None] <= steps[None, :]  # [s, t]: t >= s
    for c in range(c0, c1):
        row0 = start + c * Q
        rows = row0 + steps
        row_mask = rows < end
        dt, lam, lam_end = chunk_decays(dt_ptr, rows, row_mask, H, head, A)
        x = load_cols(x_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        dy = load_cols(dy_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        b, c_t = rotated_operands(Bg, Cg, G * N, row0, steps, row_mask, cos_ptr, sin_ptr, 0, N, HALF, NB, ROPE, DOT)
        db, dxd, dG = in_chunk_terms(x, dy, dt, lam, b, c_t, causal_t, DOT)
        db += load_cols(dBs_ptr + head * N, H * N, rows, row_mask, 0, N, NB)
        store_cols(dB_ptr + head * N, H * N, rows, row_mask, 0, N, db, NB)
        dG += tl.load(cdc_ptr + rows * H + head, mask=row_mask, other=0.0)
        for j in tl.static_range(PARTS):
            dxd += load_cols(dxds_ptr + (head * PARTS + j) * P, H * PARTS * P, rows, row_mask, 0, P, BLOCK_P)
            dG -= tl.load(bdb_ptr + (rows * H + head) * PARTS + j, mask=row_mask, other=0.0)
        tl.store(dG_ptr + rows * H + head, dG, mask=row_mask)
        tl.store(ddtp_ptr + rows * H + head, tl.sum(x * dxd, axis=1), mask=row_mask)
        dx = dxd * dt[:, None]
        if HAS_D:
            dx += skip * dy
            dD_acc += tl.sum(tl.sum(dy * x, axis=1), axis=0)
        store_cols(dx_ptr + head * P, H * P, rows, row_mask, 0, P, dx, BLOCK_P)
    tl.store(dD_ptr + k * H + head, dD_acc)


@triton.jit
def _ssd_bwd_decay_scan(
    dG_ptr, ddtp_ptr, dt_ptr, A_ptr, cu_ptr, dff_ptr, ddt_ptr, dA_ptr,
    T, H, SEGS, HAS_CU: tl.constexpr, Q: tl.constexpr,
):
    """d a_s = sum over t >= s of dL/dG_t (a reverse cumsum within each sequence, starting from
    what the tokens after this program's chunks add, dff); then ddt = x . dxd + A d a and this
    program's part of dA = sum dt d a. Scalars per token: one program per (sequence x SEGS +
    segment, head)."""
    k = tl.program_id(0)
    head = tl.program_id(1)
    steps = tl.arange(0, Q)
    start, end, c0, c1 = program_chunks(cu_ptr, k, T, Q, SEGS, HAS_CU)
    A = tl.load(A_ptr + head).to(tl.float32)
    carry = tl.load(dff_ptr + k * H + head)
    dA_acc = 0.0
    for i in range(0, c1 - c0):
        rows = start + (c1 - 1 - i) * Q + steps
        row_mask = rows < end
        dG = tl.load(dG_ptr + rows * H + head, mask=row_mask, other=0.0)
        da = carry + tl.cumsum(dG, axis=0, reverse=True)
        carry += tl.sum(dG, axis=0)
        dt = tl.load(dt_ptr + rows * H + head, mask=row_mask, other=0.0).to(tl.float32)
        ddt = tl.load(ddtp_ptr + rows * H + head, mask=row_mask, other=0.0) + A * da
        tl.store(ddt_ptr + rows * H + head, ddt.to(ddt_ptr.dtype.element_ty), mask=row_mask)
        dA_acc += tl.sum(dt * da, axis=0)
    tl.store(dA_ptr + k * H + head, dA_acc)


@autotuned(configs(((4, 1), (8, 1), (8, 2))), key=TILE_KEY)
@triton.jit
def _ssd_bwd_reverse_sweep(
    dy_ptr, dfinal_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, cu_ptr, cos_ptr, sin_ptr,
    cdc_ptr, dff_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dA_ptr, dD_ptr, dh0_ptr,
    T, H, G, P, N, HALF, SEGS,
    HAS_DFINAL: tl.constexpr, HAS_D: tl.constexpr, HAS_CU: tl.constexpr,
    ROPE: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, NB: tl.constexpr, DOT: tl.constexpr,
):
    """Fused: the in-chunk terms and the state terms of each chunk in one sweep (the RoPE path:
    B and C rotated in one kernel fewer than _ssd_bwd_state_sweep + _ssd_bwd_chunk_local)."""
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
    causal_t = steps[:, None] <= steps[None, :]  # [s, t]: t >= s
    ds = load_state(dfinal_ptr, k, head, H, P, N, offs_p, 0, HAS_DFINAL, BLOCK_P, NB)
    if HAS_D:
        skip = tl.load(D_ptr + head).to(tl.float32)
    # d a_s = sum over t >= s of dL/dG_t; the final state's term sits at the last token. What
    # the tokens after this program's chunks add comes in as dff (triton_segments: carry).
    da_carry = tl.load(dff_ptr + k * H + head)
    dA_acc = 0.0
    dD_acc = 0.0

    for i in range(0, c1 - c0):
        row0 = start + (c1 - 1 - i) * Q
        rows = row0 + steps
        row_mask = rows < end
        dt, lam, lam_end = chunk_decays(dt_ptr, rows, row_mask, H, head, A)
        x = load_cols(x_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        dy = load_cols(dy_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        to_end = tl.exp(lam_end - lam)[:, None]
        dt_to_end = dt[:, None] * to_end  # xd dS = dt (x dS): x is exact in the half type
        b, c_t = rotated_operands(Bg, Cg, G * N, row0, steps, row_mask, cos_ptr, sin_ptr, 0, N, HALF, NB, ROPE, DOT)
        from_state = mm(b, tl.trans(ds), DOT)  # dS B~_s, for dxd
        sb = dt_to_end * mm_split_b(x, ds, DOT)
        b_db = tl.sum(b * sb, axis=1)
        dG = tl.load(cdc_ptr + rows * H + head, mask=row_mask, other=0.0) - b_db
        db_in, dxd, dg_in = in_chunk_terms(x, dy, dt, lam, b, c_t, causal_t, DOT)
        dG += dg_in
        store_cols(dBh, H * N, rows, row_mask, 0, N, db_in + sb, NB)
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

    # dS at the sequence start = d initial_state, from the first segment's program
    store_state(dh0_ptr, k // SEGS, head, H, P, N, offs_p, 0, ds, k % SEGS == 0, NB)
    # Per-(sequence, head) partial sums; the backend adds them up (deterministic, no atomics).
    tl.store(dA_ptr + k * H + head, dA_acc)
    tl.store(dD_ptr + k * H + head, dD_acc)
