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


# position: never specialized (it equals 1 for a one-key window, which would make it a constexpr)
@triton.jit(do_not_specialize=["position"])
def _replace_lowest_kernel(
    k_ptr, v_ptr, bias_ptr, pos_ptr, new_k_ptr, new_v_ptr, new_bias_ptr, position,
    S, D, HKV,
    s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_bb, s_bh, s_pb, s_ph,
    s_nkb, s_nkh, s_nvb, s_nvh, s_nbb, s_nbh,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One decode step's cache update for a full window, one program per (batch, kv head): find
    the lowest-ranked cached key (lowest bias, the oldest among equal biases) and overwrite its
    slot with the new key iff the new key ranks above it (bias >= that bias: on a tie the newer
    key wins). The same rule as cache.DMAttnCache._replace_lowest, in one launch instead of a
    dozen small torch ops (decode is bound by host time per call)."""
    pid = tl.program_id(0)
    bi = (pid // HKV).to(tl.int64)
    hk = pid % HKV
    bias_row = bias_ptr + bi * s_bb + hk * s_bh
    pos_row = pos_ptr + bi * s_pb + hk * s_ph
    far = 9223372036854775807  # int64 max: above every position
    # The running lowest key: start from slot 0 and let the scan (which sees slot 0 again) move on.
    low_b = tl.load(bias_row)
    low_p = tl.load(pos_row)
    low_slot = pid * 0
    for start in range(0, S, BLOCK_S):
        offs = start + tl.arange(0, BLOCK_S)
        ok = offs < S
        b = tl.load(bias_row + offs, mask=ok, other=float("inf"))
        p = tl.load(pos_row + offs, mask=ok, other=far)
        tile_b = tl.min(b, axis=0)
        tile_p = tl.min(tl.where(ok & (b == tile_b), p, far), axis=0)
        # positions are unique, so exactly one slot holds (tile_b, tile_p)
        tile_slot = tl.min(tl.where(ok & (b == tile_b) & (p == tile_p), offs, S), axis=0)
        lower = (tile_b < low_b) | ((tile_b == low_b) & (tile_p < low_p))
        low_b = tl.where(lower, tile_b, low_b)
        low_p = tl.where(lower, tile_p, low_p)
        low_slot = tl.where(lower, tile_slot, low_slot)
    new_b = tl.load(new_bias_ptr + bi * s_nbb + hk * s_nbh)
    enters = new_b >= low_b
    tl.store(bias_row + low_slot, new_b, mask=enters)
    tl.store(pos_row + low_slot, position.to(tl.int64), mask=enters)
    offs_d = tl.arange(0, BLOCK_D)
    row = offs_d < tl.where(enters, D, 0)  # (a scalar & a vector fails in triton 3.7's interpreter)
    kv_slot = low_slot.to(tl.int64)
    new_k = tl.load(new_k_ptr + bi * s_nkb + hk * s_nkh + offs_d, mask=row)
    new_v = tl.load(new_v_ptr + bi * s_nvb + hk * s_nvh + offs_d, mask=row)
    tl.store(k_ptr + bi * s_kb + kv_slot * s_kt + hk * s_kh + offs_d, new_k.to(k_ptr.dtype.element_ty), mask=row)
    tl.store(v_ptr + bi * s_vb + kv_slot * s_vt + hk * s_vh + offs_d, new_v.to(v_ptr.dtype.element_ty), mask=row)
