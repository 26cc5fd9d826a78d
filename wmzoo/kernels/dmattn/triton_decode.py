"""DMAttn decode: one new query per (batch, head) against the cached keys, split-K.

The cache holds exactly the keys the query keeps (the window is enforced by eviction, see
cache.py), so decode is a softmax over every valid slot with its bias. Long caches are split
into chunks handled by separate programs; each writes its partial (max, sum, weighted values)
and ``_merge_kernel`` combines them exactly (log-sum-exp merge) into the output. Decode is
latency-bound (a 2048-slot cache is ~17 MB, ~5 us of bandwidth), so the merge is one launch
rather than the ten small torch ops it used to be, each with its own host overhead.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, b_ptr, valid_ptr, acc_ptr, m_ptr, l_ptr,
    sm_scale, S, D, H, G, CHUNK,
    s_qb, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_bb, s_bh, s_vab, s_vah, s_mb, s_mh,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    bi = pid_bh // H
    hq = pid_bh % H
    hk = hq // G
    bi64 = bi.to(tl.int64)
    sm_scale = tl.cast(sm_scale, tl.float32)  # fp64 when a compiled caller passes a float
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(q_ptr + bi64 * s_qb + hq * s_qh + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    k_ptr += bi64 * s_kb + hk * s_kh
    v_ptr += bi64 * s_vb + hk * s_vh
    b_ptr += bi64 * s_bb + hk * s_bh
    valid_ptr += bi64 * s_vab + hk * s_vah
    m_i = float("-inf")
    l_i = 0.0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    lo = pid_s * CHUNK
    hi = tl.minimum(lo + CHUNK, S)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        ok = n_ok & (tl.load(valid_ptr + offs_n, mask=n_ok, other=0) != 0)
        tile = ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + offs_n[:, None].to(tl.int64) * s_kt + offs_d[None, :], mask=tile, other=0.0).to(tl.float32)
        bj = tl.load(b_ptr + offs_n, mask=ok, other=0.0).to(tl.float32)
        s = (tl.sum(k * q[None, :], axis=1) * sm_scale + bj) * 1.4426950408889634
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe)
        v = tl.load(v_ptr + offs_n[:, None].to(tl.int64) * s_vt + offs_d[None, :], mask=tile, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        m_i = m_new
    part = bi64 * s_mb + hq * s_mh + pid_s
    tl.store(m_ptr + part, m_i)
    tl.store(l_ptr + part, l_i)
    tl.store(acc_ptr + part * BLOCK_D + offs_d, acc)


@triton.jit
def _merge_kernel(
    acc_ptr, m_ptr, l_ptr, o_ptr, D, SPLITS, s_ob, s_oh, H,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """o[b, 0, h] = sum_j acc_j 2^(m_j - m) / sum_j l_j 2^(m_j - m), m = max_j m_j, over the
    SPLITS partials of (b, h); a split whose slots were all masked has m_j = -inf and weight 0."""
    pid = tl.program_id(0)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < SPLITS
    base = pid.to(tl.int64) * SPLITS
    m = tl.load(m_ptr + base + offs_s, mask=s_ok, other=float("-inf"))
    l = tl.load(l_ptr + base + offs_s, mask=s_ok, other=0.0)
    m_all = tl.max(m, axis=0)
    wgt = tl.exp2(m - tl.where(m_all == float("-inf"), 0.0, m_all))
    acc = tl.load(acc_ptr + (base + offs_s)[:, None] * BLOCK_D + offs_d[None, :], mask=s_ok[:, None], other=0.0)
    o = tl.sum(acc * wgt[:, None], axis=0) / tl.sum(l * wgt, axis=0)
    bi = pid // H
    hq = pid % H
    tl.store(o_ptr + bi.to(tl.int64) * s_ob + hq * s_oh + offs_d, o.to(o_ptr.dtype.element_ty), mask=offs_d < D)
