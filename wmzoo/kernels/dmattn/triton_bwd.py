"""DMAttn backward, flash style: P is recomputed from the saved log-sum-exp.

With dP = dO V^T, D_i = rowsum(dO * O) and dS = P * (dP - D) (the gradient of the logits):
dq = scale * dS K, dk = scale * dS^T Q, dv = P^T dO, dbias_j = column sums of dS, summed over
the query heads of the key's kv head.

* ``_bwd_q_kernel`` (query-major, the same key phases as the forward; with a keep_window,
  over each query block's gathered keys) computes dq, and D for the key-major kernels.
* ``_bwd_kv_kernel`` (key-major) owns a key block of one kv head, loops over the query heads of
  that kv head and the causal queries, and accumulates dk, dv, dbias in registers: no atomics,
  deterministic.
* ``_bwd_kv_window_kernel`` is the same with a window, over tiles of keys gathered in the order
  of triton_key_order: a tile visits only the queries from its earliest key to its latest
  last-keeping query, and the mask of a pair is ``j <= i <= last_j``. Every key sits in one
  tile, so dk, dv, dbias are written once, without atomics: deterministic. (Until the twelfth
  session the dq kernel added them with fp32 atomics over its gathered lists; the key-major form
  was as fast at B1 H16 T16384 w 1024 and 13% faster at B4 H16 T4096, dmattn.md run 10.)
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..autotune import Autotuned
from ..registry import INTERPRET
from .triton_fwd import _tuned, load_full_rows, load_rows
from .triton_layout import block_bounds
from .triton_select import kept_by, load_counts, load_thresholds


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _bwd_q_tile(dq, q, do, lse2, delta, k_ptr, v_ptr, bj, kj, col_ok, mask, s_kt, s_vt, offs_d, D, qk_scale,
                UPCAST: tl.constexpr, IEEE: tl.constexpr,
                MASK_LOADS: tl.constexpr = True, MASKED: tl.constexpr = True):
    """One key tile of dq. MASK_LOADS = False: every row kj is inside the sequence and D ==
    BLOCK_D (EVEN); MASKED = False: every key is also visible to every query (EVEN off-diagonal
    tiles). Query rows past the sequence end then get values too, but their dq is never stored."""
    if MASK_LOADS:
        k = load_rows(k_ptr, kj, col_ok, s_kt, offs_d, D, UPCAST)
        v = load_rows(v_ptr, kj, col_ok, s_vt, offs_d, D, UPCAST)
    else:
        k = load_full_rows(k_ptr, kj, s_kt, offs_d, UPCAST)
        v = load_full_rows(v_ptr, kj, s_vt, offs_d, UPCAST)
    s = _dot(q, tl.trans(k), IEEE) * qk_scale + bj[None, :] * 1.4426950408889634
    if MASKED:
        p = tl.where(mask, tl.exp2(s - lse2[:, None]), 0.0)
    else:
        p = tl.exp2(s - lse2[:, None])
    dp = _dot(do, tl.trans(v), IEEE)
    ds = p * (dp - delta[:, None])
    dq += _dot(ds.to(k.dtype), k, IEEE)
    return dq


@triton.jit
def _bwd_q_kernel(
    q_ptr, k_ptr, v_ptr, b_ptr, do_ptr, o_ptr, lse_ptr, delta_ptr, dq_ptr,
    info_ptr, kept_ptr, keptb_ptr, theta_ptr, count_ptr,
    sm_scale, T, D, H, G, W, N_BLK,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_dob, s_dot, s_doh, s_ob, s_ot, s_oh,
    s_dqb, s_dqt, s_dqh,
    s_bb, s_bh, s_lb, s_lh, s_deb, s_deh, s_keb, s_keh, s_thb, s_thh,
    VARLEN: tl.constexpr, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    EVEN: tl.constexpr,
):
    tl.static_assert(BLOCK_M % BLOCK_N == 0)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = pid_bh // H
    hq = pid_bh % H
    hk = hq // G
    start, end, i0 = block_bounds(pid_m, info_ptr, T, N_BLK, VARLEN, BLOCK_M)
    bi64 = bi.to(tl.int64)
    q_ptr += bi64 * s_qb + hq * s_qh
    do_ptr += bi64 * s_dob + hq * s_doh
    dq_ptr += bi64 * s_dqb + hq * s_dqh
    k_ptr += bi64 * s_kb + hk * s_kh
    v_ptr += bi64 * s_vb + hk * s_vh
    b_ptr += bi64 * s_bb + hk * s_bh
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < end
    q = load_rows(q_ptr, offs_m, row_ok, s_qt, offs_d, D, UPCAST)
    do = load_rows(do_ptr, offs_m, row_ok, s_dot, offs_d, D, UPCAST)
    lse2 = tl.load(lse_ptr + bi64 * s_lb + hq * s_lh + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    # D = rowsum(dO * O) for this block's rows, written here for the key-major kernels (which
    # run after this one): no separate pass over O and dO
    o = load_rows(o_ptr + bi64 * s_ob + hq * s_oh, offs_m, row_ok, s_ot, offs_d, D, UPCAST)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(delta_ptr + bi64 * s_deb + hq * s_deh + offs_m, delta, mask=row_ok)
    # Inductor may hand a float argument over as fp64 (dynamic shapes); keep the math fp32.
    sm_scale = tl.cast(sm_scale, tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if WINDOW:
        th_idx, th_b = load_thresholds(theta_ptr + bi64 * s_thb + hk * s_thh, b_ptr, offs_m, row_ok)
        kept_ptr += bi64 * s_keb + hk * s_keh + pid_m.to(tl.int64) * W
        keptb_ptr += bi64 * s_keb + hk * s_keh + pid_m.to(tl.int64) * W
        count, count_lo, count_hi = load_counts(count_ptr + bi64 * s_thb + hk * s_thh, offs_m, row_ok)
        # as in the forward: K's slots below the block's smallest count unmasked, then masked
        # per row up to the largest
        n_full = count_lo // BLOCK_N * BLOCK_N
        for n0 in range(0, n_full, BLOCK_N):
            kj = tl.load(kept_ptr + n0 + offs_n)
            bj = tl.load(keptb_ptr + n0 + offs_n)
            dq = _bwd_q_tile(dq, q, do, lse2, delta, k_ptr, v_ptr, bj, kj, kj >= 0, None,
                             s_kt, s_vt, offs_d, D, qk_scale, UPCAST, IEEE,
                             MASK_LOADS=not EVEN, MASKED=False)
        for n0 in tl.range(n_full, count_hi, BLOCK_N, num_stages=1):
            slot = n0 + offs_n
            col_ok = slot < count_hi
            kj = tl.load(kept_ptr + slot, mask=col_ok, other=0)
            bj = tl.load(keptb_ptr + slot, mask=col_ok, other=0.0)
            mask = (slot[None, :] < count[:, None]) & row_ok[:, None]
            dq = _bwd_q_tile(dq, q, do, lse2, delta, k_ptr, v_ptr, bj, kj, col_ok, mask,
                             s_kt, s_vt, offs_d, D, qk_scale, UPCAST, IEEE)
    elif EVEN:  # whole tiles before the diagonal block (see _bwd_q_tile)
        for n0 in range(0, i0, BLOCK_N):
            kj = n0 + offs_n
            bj = tl.load(b_ptr + kj).to(tl.float32)
            dq = _bwd_q_tile(dq, q, do, lse2, delta, k_ptr, v_ptr, bj, kj, kj >= 0, None,
                             s_kt, s_vt, offs_d, D, qk_scale, UPCAST, IEEE,
                             MASK_LOADS=False, MASKED=False)
    else:
        for n0 in range(start, i0, BLOCK_N):
            kj = n0 + offs_n
            col_ok = kj < i0
            bj = tl.load(b_ptr + kj, mask=col_ok, other=0.0).to(tl.float32)
            dq = _bwd_q_tile(dq, q, do, lse2, delta, k_ptr, v_ptr, bj, kj, col_ok,
                             col_ok[None, :] & row_ok[:, None], s_kt, s_vt, offs_d, D, qk_scale, UPCAST, IEEE)
    hi = tl.minimum(i0 + BLOCK_M, end)
    for n0 in tl.range(i0, hi, BLOCK_N, num_stages=1):  # unpipelined, as in the forward
        kj = n0 + offs_n
        col_ok = kj < hi
        mask = col_ok[None, :] & (kj[None, :] <= offs_m[:, None]) & row_ok[:, None]
        bj = tl.load(b_ptr + kj, mask=col_ok, other=0.0).to(tl.float32)
        if WINDOW:
            keep = kept_by(bj[None, :], kj[None, :], th_b[:, None], th_idx[:, None])
            mask = mask & keep
        if EVEN and not WINDOW:  # rows past the end (last block only) read clamped, masked in P
            kj = tl.minimum(kj, end - 1)
        dq = _bwd_q_tile(dq, q, do, lse2, delta, k_ptr, v_ptr, bj, kj, col_ok, mask,
                         s_kt, s_vt, offs_d, D, qk_scale, UPCAST, IEEE, MASK_LOADS=WINDOW or not EVEN)
    tl.store(dq_ptr + offs_m[:, None].to(tl.int64) * s_dqt + offs_d[None, :], (dq * sm_scale).to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))


@triton.jit
def _bwd_kv_tile(dk, dv, db, k, v, bj, q_ptr, do_ptr, l_ptr, d_ptr, rows, row_ok, mask, s_qt, s_dot, offs_d, D,
                 qk_scale, UPCAST: tl.constexpr, IEEE: tl.constexpr, MASKED: tl.constexpr):
    """One query tile of dk, dv, dbias for a key block. MASKED = False: ``rows`` are clamped to
    the sequence (whole loads), and rows past its end (row_ok False) get lse = +inf: P = 0."""
    if MASKED:
        q = load_rows(q_ptr, rows, row_ok, s_qt, offs_d, D, UPCAST)
        do = load_rows(do_ptr, rows, row_ok, s_dot, offs_d, D, UPCAST)
        lse2 = tl.load(l_ptr + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    else:
        q = load_full_rows(q_ptr, rows, s_qt, offs_d, UPCAST)
        do = load_full_rows(do_ptr, rows, s_dot, offs_d, UPCAST)
        lse2 = tl.load(l_ptr + rows, mask=row_ok, other=float("inf")) * 1.4426950408889634
    delta = tl.load(d_ptr + rows, mask=row_ok, other=0.0)
    st = _dot(k, tl.trans(q), IEEE) * qk_scale + bj[:, None]
    if MASKED:
        pt = tl.where(mask, tl.exp2(st - lse2[None, :]), 0.0)
    else:
        pt = tl.exp2(st - lse2[None, :])
    dv += _dot(pt.to(do.dtype), do, IEEE)
    dpt = _dot(v, tl.trans(do), IEEE)
    dst = pt * (dpt - delta[None, :])
    dk += _dot(dst.to(q.dtype), q, IEEE)
    db += tl.sum(dst, axis=1)
    return dk, dv, db


@triton.jit
def _query_head(q_ptr, do_ptr, lse_ptr, delta_ptr, bi64, hq, s_qb, s_qh, s_dob, s_doh, s_lb, s_lh, s_deb, s_deh):
    """q, dO, lse and delta pointers of query head hq in batch row bi64 (key-major kernels)."""
    return (q_ptr + bi64 * s_qb + hq * s_qh, do_ptr + bi64 * s_dob + hq * s_doh,
            lse_ptr + bi64 * s_lb + hq * s_lh, delta_ptr + bi64 * s_deb + hq * s_deh)


@triton.jit
def _store_key_grads(dk_ptr, dv_ptr, db_ptr, keys, col_ok, dk, dv, db, s_dkt, s_dvt, offs_d, D):
    """dk, dv (rows ``keys``) and dbias of a key tile, pointers at its (batch row, kv head)."""
    d_ok = col_ok[:, None] & (offs_d[None, :] < D)
    rows = keys[:, None].to(tl.int64)
    tl.store(dk_ptr + rows * s_dkt + offs_d[None, :], dk.to(dk_ptr.dtype.element_ty), mask=d_ok)
    tl.store(dv_ptr + rows * s_dvt + offs_d[None, :], dv.to(dv_ptr.dtype.element_ty), mask=d_ok)
    tl.store(db_ptr + keys, db.to(db_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def _bwd_kv_kernel(
    q_ptr, k_ptr, v_ptr, b_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, db_ptr, info_ptr,
    sm_scale, T, D, HKV, G, N_BLK,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_dob, s_dot, s_doh,
    s_dkb, s_dkt, s_dkh, s_dvb, s_dvt, s_dvh, s_dbb, s_dbh, s_bb, s_bh, s_lb, s_lh, s_deb, s_deh,
    VARLEN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, EVEN: tl.constexpr,
):
    tl.static_assert(BLOCK_N % BLOCK_M == 0)
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = pid_bh // HKV
    hk = pid_bh % HKV
    start, end, j0 = block_bounds(pid_n, info_ptr, T, N_BLK, VARLEN, BLOCK_N)
    bi64 = bi.to(tl.int64)
    k_ptr += bi64 * s_kb + hk * s_kh
    v_ptr += bi64 * s_vb + hk * s_vh
    b_ptr += bi64 * s_bb + hk * s_bh
    offs_n = j0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < end
    k = load_rows(k_ptr, offs_n, col_ok, s_kt, offs_d, D, UPCAST)
    v = load_rows(v_ptr, offs_n, col_ok, s_vt, offs_d, D, UPCAST)
    bj = tl.load(b_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32) * 1.4426950408889634
    # Inductor may hand a float argument over as fp64 (dynamic shapes); keep the math fp32.
    sm_scale = tl.cast(sm_scale, tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for g in range(0, G):
        qh_ptr, doh_ptr, l_ptr, d_ptr = _query_head(q_ptr, do_ptr, lse_ptr, delta_ptr, bi64, hk * G + g,
                                                    s_qb, s_qh, s_dob, s_doh, s_lb, s_lh, s_deb, s_deh)
        # Query tiles overlapping the key block need the causal mask; past it every query sees
        # every key of the block. EVEN: those tiles load unmasked (rows clamped to the sequence)
        # and rows past its end get lse = +inf, so P = 0 there without a 2-D mask.
        diag_end = tl.minimum(j0 + BLOCK_N, end)
        for m0 in range(j0, diag_end, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            row_ok = offs_m < end
            mask = col_ok[:, None] & row_ok[None, :] & (offs_m[None, :] >= offs_n[:, None])
            dk, dv, db = _bwd_kv_tile(dk, dv, db, k, v, bj, qh_ptr, doh_ptr, l_ptr, d_ptr, offs_m, row_ok,
                                      mask, s_qt, s_dot, offs_d, D, qk_scale, UPCAST, IEEE, True)
        for m0 in range(diag_end, end, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            row_ok = offs_m < end
            if EVEN:
                dk, dv, db = _bwd_kv_tile(dk, dv, db, k, v, bj, qh_ptr, doh_ptr, l_ptr, d_ptr,
                                          tl.minimum(offs_m, end - 1), row_ok, None, s_qt, s_dot, offs_d, D,
                                          qk_scale, UPCAST, IEEE, False)
            else:
                dk, dv, db = _bwd_kv_tile(dk, dv, db, k, v, bj, qh_ptr, doh_ptr, l_ptr, d_ptr, offs_m, row_ok,
                                          col_ok[:, None] & row_ok[None, :], s_qt, s_dot, offs_d, D, qk_scale,
                                          UPCAST, IEEE, True)
    _store_key_grads(dk_ptr + bi64 * s_dkb + hk * s_dkh, dv_ptr + bi64 * s_dvb + hk * s_dvh, db_ptr + bi64 * s_dbb + hk * s_dbh,
                     offs_n, col_ok, dk * sm_scale, dv, db, s_dkt, s_dvt, offs_d, D)


@triton.jit
def _bwd_kv_window_kernel(
    q_ptr, k_ptr, v_ptr, b_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, db_ptr, order_ptr, last_ptr,
    sm_scale, T, D, HKV, G,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_dob, s_dot, s_doh,
    s_dkb, s_dkt, s_dkh, s_dvb, s_dvt, s_dvh, s_dbb, s_dbh, s_bb, s_bh, s_lb, s_lh, s_deb, s_deh,
    s_ob, s_oh,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
):
    """dk, dv, dbias of the keys order[pid * BLOCK_N:][:BLOCK_N] of one (batch row, kv head):
    query i reaches key j iff j <= i <= last[j] (triton_key_order), which also keeps every
    pair inside one sequence of a packed batch."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = pid_bh // HKV
    hk = pid_bh % HKV
    bi64 = bi.to(tl.int64)
    slot = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = slot < T
    row = bi64 * s_ob + hk * s_oh
    kj = tl.load(order_ptr + row + slot, mask=col_ok, other=0)
    lj = tl.load(last_ptr + row + kj, mask=col_ok, other=-1)
    live = col_ok & (lj >= 0)
    k_ptr += bi64 * s_kb + hk * s_kh
    v_ptr += bi64 * s_vb + hk * s_vh
    b_ptr += bi64 * s_bb + hk * s_bh
    offs_d = tl.arange(0, BLOCK_D)
    k = load_rows(k_ptr, kj, live, s_kt, offs_d, D, UPCAST)
    v = load_rows(v_ptr, kj, live, s_vt, offs_d, D, UPCAST)
    bj = tl.load(b_ptr + kj, mask=live, other=0.0).to(tl.float32) * 1.4426950408889634
    sm_scale = tl.cast(sm_scale, tl.float32)  # fp64 under Inductor's dynamic shapes
    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    # the tile's queries: from its earliest kept key to its latest last-keeping query (an empty
    # range for a tile of never-kept keys, which stores zeros)
    q_lo = tl.min(tl.where(live, kj, T), axis=0)
    q_hi = tl.max(tl.where(live, lj, -1), axis=0) + 1
    for g in range(0, G):
        qh_ptr, doh_ptr, l_ptr, d_ptr = _query_head(q_ptr, do_ptr, lse_ptr, delta_ptr, bi64, hk * G + g,
                                                    s_qb, s_qh, s_dob, s_doh, s_lb, s_lh, s_deb, s_deh)
        for m0 in range(q_lo, q_hi, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            row_ok = offs_m < q_hi
            mask = live[:, None] & (offs_m[None, :] >= kj[:, None]) & (offs_m[None, :] <= lj[:, None])
            dk, dv, db = _bwd_kv_tile(dk, dv, db, k, v, bj, qh_ptr, doh_ptr, l_ptr, d_ptr, offs_m, row_ok,
                                      mask, s_qt, s_dot, offs_d, D, qk_scale, UPCAST, IEEE, True)
    _store_key_grads(dk_ptr + bi64 * s_dkb + hk * s_dkh, dv_ptr + bi64 * s_dvb + hk * s_dvh, db_ptr + bi64 * s_dbb + hk * s_dbh,
                     kj, col_ok, dk * sm_scale, dv, db, s_dkt, s_dvt, offs_d, D)


# First: the H200's choice at B4 H16 T4096 D128 (dmattn.md run 6), which also fits at head dim
# 256 (96 KB of shared memory); deterministic mode pins it (kernels/autotune).
_KV_CONFIGS = [(32, 32, 4, 1)] if INTERPRET else [
    (64, 32, 4, 3), (64, 64, 8, 2), (128, 64, 8, 2), (128, 32, 8, 3), (128, 32, 4, 3)]
# dense batches: the key block is tuned too (the grid follows it); varlen: its block tables
# are built for 64-key blocks, so only the query tile is tuned
bwd_kv_kernel = Autotuned(
    _bwd_kv_kernel,
    [triton.Config({"BLOCK_N": n, "BLOCK_M": m}, num_warps=w, num_stages=s) for n, m, w, s in _KV_CONFIGS],
    key=["D", "G", "VARLEN"])
bwd_kv_kernel_varlen = Autotuned(
    _bwd_kv_kernel,
    [triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=s) for n, m, w, s in _KV_CONFIGS if n == _KV_CONFIGS[0][0]],
    key=["D", "G", "VARLEN"])
KV_VARLEN_BLOCK_N = _KV_CONFIGS[0][0]
# dq, with or without a window.
# First: the H200's choice (run 6); 192 KB of shared memory at head dim 256.
bwd_q_kernel = _tuned(_bwd_q_kernel, [(32, 4, 1)] if INTERPRET else [(64, 8, 2), (32, 4, 3), (32, 8, 3), (64, 4, 2)],
                      key=["D", "G", "VARLEN", "BLOCK_M", "WINDOW"])

# The window's key-major kernel: its key tile sets how alike the gathered keys' query ranges
# are (triton_key_order: 1.29x the kept pairs at 64 keys, 1.20x at 32), so both are tuned.
# First (deterministic mode's): the least spilling at 64 keys on triton 3.7 for sm_90a (0.2 KB).
# 128-key tiles (which halve the query-side re-reads per pair) were offered and never chosen:
# the H100 kept (64, 64, 4, 2) at w 1024, 3.61 ms fwd+bwd (dmattn.md run 16).
_KV_WINDOW_CONFIGS = [(32, 32, 4, 1)] if INTERPRET else [
    (64, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 3), (32, 32, 4, 3), (64, 64, 4, 2)]
bwd_kv_window_kernel = Autotuned(
    _bwd_kv_window_kernel,
    [triton.Config({"BLOCK_N": n, "BLOCK_M": m}, num_warps=w, num_stages=s) for n, m, w, s in _KV_WINDOW_CONFIGS],
    key=["D", "G"])
