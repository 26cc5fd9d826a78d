"""DMAttn forward: flash-attention style (online softmax, fp32 statistics, exp2 domain).

One program per (query block, batch x query head). Logits are q.k * scale + bias_j; the
per-key bias is loaded once per key tile. Keys come in two phases:

1. keys before the block: every causal key [seq start, i0) in tiles, or with a keep_window the
   block's gathered list ``kept[blk]`` (the w top-ranked keys before i0, see triton_select), of
   which query i keeps the first ``count[i]``: unmasked up to the block's smallest count, masked
   by slot < count[i] after it;
2. the block's own keys (the diagonal), masked by causality (and the threshold).

So with a window each query block touches w + M keys instead of up to t.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..autotune import Autotuned
from ..registry import INTERPRET
from .triton_layout import block_bounds
from .triton_select import kept_by, load_counts, load_thresholds


@triton.jit
def load_rows(ptr, rows, row_ok, stride_t, offs_d, D, UPCAST: tl.constexpr):
    """Load a (len(rows), BLOCK_D) tile of a (t, d) slice; fp32 under the interpreter."""
    x = tl.load(ptr + rows[:, None].to(tl.int64) * stride_t + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def load_full_rows(ptr, rows, stride_t, offs_d, UPCAST: tl.constexpr):
    """``load_rows`` for a tile known to be inside the sequence and D == BLOCK_D: no masks."""
    x = tl.load(ptr + rows[:, None].to(tl.int64) * stride_t + offs_d[None, :])
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _fwd_tile(acc, m_i, l_i, q, k_ptr, v_ptr, bj, kj, col_ok, mask, s_kt, s_vt, offs_d, D, qk_scale,
              UPCAST: tl.constexpr, IEEE: tl.constexpr, MASK_LOADS: tl.constexpr = True,
              MASKED: tl.constexpr = True):
    """One key tile of the online softmax. MASK_LOADS = False: every row kj is inside the
    sequence and D == BLOCK_D, so K and V load unmasked; MASKED = False: every key is visible to
    every query too, so the logits go unmasked. Masks cost registers (the forward spilled with
    them on every tile; benchmarks/kernel_resources.py)."""
    if MASK_LOADS:
        k = load_rows(k_ptr, kj, col_ok, s_kt, offs_d, D, UPCAST)
    else:
        k = load_full_rows(k_ptr, kj, s_kt, offs_d, UPCAST)
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * qk_scale + bj[None, :] * 1.4426950408889634
    if MASKED:
        s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a -inf bias can leave a row empty
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if MASK_LOADS:
        v = load_rows(v_ptr, kj, col_ok, s_vt, offs_d, D, UPCAST)
    else:
        v = load_full_rows(v_ptr, kj, s_vt, offs_d, UPCAST)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, b_ptr, o_ptr, lse_ptr, info_ptr, kept_ptr, keptb_ptr, theta_ptr, count_ptr,
    sm_scale, T, D, H, G, W, N_BLK,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_ob, s_ot, s_oh,
    s_bb, s_bh, s_lb, s_lh, s_keb, s_keh, s_thb, s_thh,
    VARLEN: tl.constexpr, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, EVEN: tl.constexpr,
):
    # EVEN (triton_backend._flags): every key tile before the diagonal block is whole and visible
    # to every query of the block, so those tiles run unmasked.
    tl.static_assert(BLOCK_M % BLOCK_N == 0)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = pid_bh // H
    hq = pid_bh % H
    hk = hq // G
    start, end, i0 = block_bounds(pid_m, info_ptr, T, N_BLK, VARLEN, BLOCK_M)
    bi64 = bi.to(tl.int64)
    q_ptr += bi64 * s_qb + hq * s_qh
    k_ptr += bi64 * s_kb + hk * s_kh
    v_ptr += bi64 * s_vb + hk * s_vh
    o_ptr += bi64 * s_ob + hq * s_oh
    b_ptr += bi64 * s_bb + hk * s_bh
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < end
    q = load_rows(q_ptr, offs_m, row_ok, s_qt, offs_d, D, UPCAST)
    # Inductor may hand a float argument over as fp64 (dynamic shapes); keep the math fp32.
    sm_scale = tl.cast(sm_scale, tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if WINDOW:
        th_idx, th_b = load_thresholds(theta_ptr + bi64 * s_thb + hk * s_thh, b_ptr, offs_m, row_ok)
        kept_ptr += bi64 * s_keb + hk * s_keh + pid_m.to(tl.int64) * W
        keptb_ptr += bi64 * s_keb + hk * s_keh + pid_m.to(tl.int64) * W
        count, count_lo, count_hi = load_counts(count_ptr + bi64 * s_thb + hk * s_thh, offs_m, row_ok)
        # query i keeps K's first count[i] slots (K is sorted by rank): the slots below the
        # block's smallest count (at least w - M) are kept by every row and run unmasked
        n_full = count_lo // BLOCK_N * BLOCK_N
        for n0 in range(0, n_full, BLOCK_N):
            kj = tl.load(kept_ptr + n0 + offs_n)
            bj = tl.load(keptb_ptr + n0 + offs_n)
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, k_ptr, v_ptr, bj, kj, kj >= 0, None, s_kt, s_vt,
                                      offs_d, D, qk_scale, UPCAST, IEEE, MASK_LOADS=not EVEN, MASKED=False)
        # the rest up to the largest count, masked per row; unpipelined like the diagonal (a
        # few tiles: at most M / BLOCK_N + 1)
        for n0 in tl.range(n_full, count_hi, BLOCK_N, num_stages=1):
            slot = n0 + offs_n
            col_ok = slot < count_hi
            kj = tl.load(kept_ptr + slot, mask=col_ok, other=0)
            bj = tl.load(keptb_ptr + slot, mask=col_ok, other=0.0)
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, k_ptr, v_ptr, bj, kj, col_ok,
                                      slot[None, :] < count[:, None], s_kt, s_vt, offs_d, D, qk_scale, UPCAST, IEEE)
    elif EVEN:
        for n0 in range(0, i0, BLOCK_N):
            kj = n0 + offs_n
            bj = tl.load(b_ptr + kj).to(tl.float32)
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, k_ptr, v_ptr, bj, kj, kj >= 0, None, s_kt, s_vt,
                                      offs_d, D, qk_scale, UPCAST, IEEE, MASK_LOADS=False, MASKED=False)
    else:
        for n0 in range(start, i0, BLOCK_N):
            kj = n0 + offs_n
            col_ok = kj < i0
            bj = tl.load(b_ptr + kj, mask=col_ok, other=0.0).to(tl.float32)
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, k_ptr, v_ptr, bj, kj, col_ok,
                                      col_ok[None, :], s_kt, s_vt, offs_d, D, qk_scale, UPCAST, IEEE)
    hi = tl.minimum(i0 + BLOCK_M, end)
    # the diagonal block unpipelined: a second pipelined loop's buffers made the kernel spill
    for n0 in tl.range(i0, hi, BLOCK_N, num_stages=1):
        kj = n0 + offs_n
        col_ok = kj < hi
        mask = col_ok[None, :] & (kj[None, :] <= offs_m[:, None])
        bj = tl.load(b_ptr + kj, mask=col_ok, other=0.0).to(tl.float32)
        if WINDOW:
            keep = kept_by(bj[None, :], kj[None, :], th_b[:, None], th_idx[:, None])
            mask = mask & keep
        if EVEN:  # rows past the end (last block only) are read clamped and masked in the logits
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, k_ptr, v_ptr, bj, tl.minimum(kj, end - 1), col_ok,
                                      mask, s_kt, s_vt, offs_d, D, qk_scale, UPCAST, IEEE, MASK_LOADS=False)
        else:
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, k_ptr, v_ptr, bj, kj, col_ok,
                                      mask, s_kt, s_vt, offs_d, D, qk_scale, UPCAST, IEEE)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    tl.store(o_ptr + offs_m[:, None].to(tl.int64) * s_ot + offs_d[None, :], o.to(o_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))
    lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453
    tl.store(lse_ptr + bi64 * s_lb + hq * s_lh + offs_m, lse, mask=row_ok)


def _tuned(kernel, configs: list[tuple[int, ...]], key: list[str]) -> Autotuned:
    """Autotuned over (BLOCK_N, num_warps, num_stages); the interpreter takes the first only,
    and so does deterministic mode (kernels/autotune): list first a config that fits every head
    dim the backend takes (tests/test_kernel_resources.py)."""
    if INTERPRET:
        configs = configs[:1]
    return Autotuned(kernel, [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s) for n, w, s in configs], key)


# BLOCK_M is fixed by the caller (the query-block layout and the window lists depend on it).
# First: the H200's choice at B4 H16 T4096 D128 (dmattn.md run 6); 97 KB of shared memory at
# head dim 256.
fwd_kernel = _tuned(_fwd_kernel, [(32, 4, 1)] if INTERPRET else [(64, 8, 3), (128, 8, 3), (64, 4, 3), (128, 8, 2)],
                    key=["D", "G", "WINDOW", "VARLEN", "BLOCK_M"])
