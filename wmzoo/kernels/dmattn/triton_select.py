"""Exact keep_window selection for the DMAttn Triton kernels, without any T x T work.

Rank order (spec section 3): key j ranks above key j' iff bias_j > bias_j', or the biases are
equal and j > j' (the more recent key wins a tie). Query i keeps the w highest-ranked keys of its
causal prefix. For every query block of BLOCK_M the selection writes

* ``kept[blk]`` = K, the top-w keys of the prefix before the block, sorted by rank (w key
  positions, -1 for empty slots, packed at the front) and ``kept_bias[blk]`` their biases: a
  query of the block keeps only keys of K or of the block itself, so attention gathers
  w + BLOCK_M keys;
* ``theta[i]`` = the position of the w-th ranked key kept by query i (-1 while i+1 < w, when
  every causal key is kept): query i keeps key j iff j <= i and j ranks at or above theta[i].

Block step (``_chain_kernel``): merging a block into K is a (w + M) x M comparison: a K entry
at slot p moves to slot p + (block keys above it), a block key to (K entries above it) +
(block keys above it); entries landing at slot >= w drop out for good (the threshold never
falls). The threshold of query i is the candidate whose count of higher-ranked present keys is
exactly w-1; only the M+1 lowest K slots and the block's keys can be that candidate, since each
new key moves it by one slot. All tiles are at most M x M (or CH x M): nothing spills.

The chain is sequential in the blocks, so a sequence is cut into segments of SEG blocks, and
the selection runs in three launches: (1) every segment, in parallel, chains its own blocks from
an empty list (``_chain_kernel``), leaving each block's list of the segment's earlier keys in
``local`` and the top-w of all its keys in ``seg_top``; (2) per sequence, the prefix lists at
the segment starts follow by merging sorted lists, one short step per segment
(``_prefix_kernel``: each entry's new slot = its slot + the entries of the other list above
it, found by binary search); (3) every block, in parallel (``_block_kernel``), merges its
segment's prefix list with its own local list the same way, since top-w(A + B) =
top-w(top-w(A) + top-w(B)), and derives its queries' thresholds. Sequential steps per
sequence: SEG + T / (SEG M) + 1 instead of T / M. (Until the eighth session step (3) chained
every segment a second time from its prefix list: SEG more sequential steps.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..registry import INTERPRET, launch
from .triton_layout import block_layout

# Blocks per segment: short chains, few prefix steps. The interpreter uses 2 so that the test
# sizes cross several segments.
SEG_BLOCKS = 2 if INTERPRET else 8


@triton.jit
def ranks_above(b1, i1, b2, i2):
    """Key (b1, i1) ranks above key (b2, i2): larger bias, or equal bias and more recent."""
    return (b1 > b2) | ((b1 == b2) & (i1 > i2))


@triton.jit
def _segment_bounds(pid, seg_info_ptr, blk_start_ptr, T, N_SEG, VARLEN: tl.constexpr,
                    BLOCK_M: tl.constexpr, SEG: tl.constexpr):
    """Sequence start and end, the sequence's first global block, and this segment's local
    block range [lb0, lb1)."""
    if VARLEN:
        start = tl.load(seg_info_ptr + pid)
        end = tl.load(seg_info_ptr + N_SEG + pid)
        first = tl.load(seg_info_ptr + 2 * N_SEG + pid)
        blk0 = tl.load(blk_start_ptr + tl.load(seg_info_ptr + 3 * N_SEG + pid))
    else:
        start = 0
        end = T
        first = pid * SEG * BLOCK_M
        blk0 = 0
    nb = (end - start + BLOCK_M - 1) // BLOCK_M
    lb0 = (first - start) // BLOCK_M
    lb1 = tl.minimum(lb0 + SEG, nb)
    return start, end, blk0, lb0, lb1


@triton.jit
def _chain_kernel(
    bias_ptr, seg_info_ptr, blk_start_ptr, loc_ptr, locb_ptr, segtop_ptr, segtopb_ptr,
    T, W, N_SEG,
    s_bb, s_bh, s_kb, s_kh, s_sb, s_sh,
    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, SEG: tl.constexpr, CH: tl.constexpr,
):
    """One segment's chain of block steps from an empty list: block lb's list of the segment's
    keys before it goes to local[lb], the segment's own top-w to seg_top."""
    pid = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_h = tl.program_id(2)
    start, end, blk0, lb0, lb1 = _segment_bounds(pid, seg_info_ptr, blk_start_ptr, T, N_SEG, VARLEN, BLOCK_M, SEG)
    bias_ptr += pid_b.to(tl.int64) * s_bb + pid_h * s_bh
    loc_ptr += pid_b.to(tl.int64) * s_kb + pid_h * s_kh
    locb_ptr += pid_b.to(tl.int64) * s_kb + pid_h * s_kh
    seg_out = pid_b.to(tl.int64) * s_sb + pid_h * s_sh + pid.to(tl.int64) * W
    offs_m = tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, CH)
    for lb in range(lb0, lb1):
        i0 = start + lb * BLOCK_M
        cur = loc_ptr + (blk0 + lb).to(tl.int64) * W
        cur_b = locb_ptr + (blk0 + lb).to(tl.int64) * W
        nxt = cur + W
        nxt_b = cur_b + W
        to_next = lb + 1 < lb1
        to_top = lb + 1 == lb1
        yi = i0 + offs_m
        yv = yi < end
        yb = tl.load(bias_ptr + yi, mask=yv, other=0.0).to(tl.float32)
        # A[y, y'] = block key y' ranks above block key y
        A = ranks_above(yb[None, :], yi[None, :], yb[:, None], yi[:, None]) & yv[None, :]
        n_block_above = tl.sum(A.to(tl.int32), axis=1)
        n_k_above = tl.zeros([BLOCK_M], dtype=tl.int32)
        for c0 in range(0, W, CH):
            slot = c0 + offs_c
            kidx = tl.load(cur + slot, mask=(slot < W) & (lb > lb0), other=-1)  # the first list is empty
            kv = kidx >= 0
            kb = tl.load(cur_b + slot, mask=kv, other=0.0)
            y_over_k = ranks_above(yb[None, :], yi[None, :], kb[:, None], kidx[:, None])
            moved = slot + tl.sum((y_over_k & yv[None, :]).to(tl.int32), axis=1)
            keep = kv & (moved < W)
            tl.store(nxt + moved, kidx, mask=keep & to_next)
            tl.store(nxt_b + moved, kb, mask=keep & to_next)
            tl.store(segtop_ptr + seg_out + moved, kidx, mask=keep & to_top)
            tl.store(segtopb_ptr + seg_out + moved, kb, mask=keep & to_top)
            # indices are distinct, so "K entry above y" is the negation
            n_k_above += tl.sum((kv[:, None] & (y_over_k == 0)).to(tl.int32), axis=0)
        new_slot = n_k_above + n_block_above
        keep = yv & (new_slot < W)
        tl.store(nxt + new_slot, yi, mask=keep & to_next)
        tl.store(nxt_b + new_slot, yb, mask=keep & to_next)
        tl.store(segtop_ptr + seg_out + new_slot, yi, mask=keep & to_top)
        tl.store(segtopb_ptr + seg_out + new_slot, yb, mask=keep & to_top)
        # the next block reads the slots written above by other threads of this program
        tl.debug_barrier()


@triton.jit
def _count_above(x_b, x_i, lst, lst_b, W, LOG: tl.constexpr):
    """Entries of the sorted list (rank descending, -1 padded at the end) ranking above each x."""
    lo = tl.zeros(x_i.shape, dtype=tl.int32)
    hi = tl.zeros(x_i.shape, dtype=tl.int32) + W
    # a loop, not tl.static_range: unrolled, torch's analysis of what a traced kernel writes
    # (torch 2.13, pytorch#193703) is exponential in the steps, and torch.compile stalls
    for _ in range(LOG):
        live = lo < hi
        mid = (lo + hi) // 2
        m_i = tl.load(lst + mid, mask=live, other=-1)
        m_b = tl.load(lst_b + mid, mask=live & (m_i >= 0), other=0.0)
        above = (m_i >= 0) & ranks_above(m_b, m_i, x_b, x_i)
        lo = tl.where(live & above, mid + 1, lo)
        hi = tl.where(live & (above == 0), mid, hi)
    return lo


@triton.jit
def _prefix_kernel(
    cu_ptr, blk_start_ptr, seg_start_ptr, kept_ptr, keptb_ptr, segtop_ptr, segtopb_ptr,
    T, W, s_kb, s_kh, s_sb, s_sh,
    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, SEG: tl.constexpr, CH: tl.constexpr, LOG: tl.constexpr,
):
    """kept[first block of segment s+1] = top-w of (kept[first block of s] + seg_top[s])."""
    pid_s = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_h = tl.program_id(2)
    if VARLEN:
        start = tl.load(cu_ptr + pid_s).to(tl.int32)
        end = tl.load(cu_ptr + pid_s + 1).to(tl.int32)
        blk0 = tl.load(blk_start_ptr + pid_s)
        g0 = tl.load(seg_start_ptr + pid_s)
    else:
        start = 0
        end = T
        blk0 = 0
        g0 = 0
    nb = (end - start + BLOCK_M - 1) // BLOCK_M
    n_seg = (nb + SEG - 1) // SEG
    kept_ptr += pid_b.to(tl.int64) * s_kb + pid_h * s_kh
    keptb_ptr += pid_b.to(tl.int64) * s_kb + pid_h * s_kh
    segtop_ptr += pid_b.to(tl.int64) * s_sb + pid_h * s_sh
    segtopb_ptr += pid_b.to(tl.int64) * s_sb + pid_h * s_sh
    offs_c = tl.arange(0, CH)
    for s in range(0, n_seg - 1):
        a = kept_ptr + (blk0 + s * SEG).to(tl.int64) * W
        a_b = keptb_ptr + (blk0 + s * SEG).to(tl.int64) * W
        o = kept_ptr + (blk0 + (s + 1) * SEG).to(tl.int64) * W
        o_b = keptb_ptr + (blk0 + (s + 1) * SEG).to(tl.int64) * W
        c = segtop_ptr + (g0 + s).to(tl.int64) * W
        c_b = segtopb_ptr + (g0 + s).to(tl.int64) * W
        for c0 in range(0, W, CH):
            slot = c0 + offs_c
            x_i = tl.load(a + slot, mask=slot < W, other=-1)
            x_b = tl.load(a_b + slot, mask=x_i >= 0, other=0.0)
            new = slot + _count_above(x_b, x_i, c, c_b, W, LOG)
            tl.store(o + new, x_i, mask=(x_i >= 0) & (new < W))
            tl.store(o_b + new, x_b, mask=(x_i >= 0) & (new < W))
            y_i = tl.load(c + slot, mask=slot < W, other=-1)
            y_b = tl.load(c_b + slot, mask=y_i >= 0, other=0.0)
            new = slot + _count_above(y_b, y_i, a, a_b, W, LOG)
            tl.store(o + new, y_i, mask=(y_i >= 0) & (new < W))
            tl.store(o_b + new, y_b, mask=(y_i >= 0) & (new < W))
        tl.debug_barrier()


@triton.jit
def _block_kernel(
    bias_ptr, blk_info_ptr, kept_ptr, keptb_ptr, loc_ptr, locb_ptr, theta_ptr,
    T, W, N_BLK, s_bb, s_bh, s_kb, s_kh, s_tb, s_th,
    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, SEG: tl.constexpr, CH: tl.constexpr, LOG: tl.constexpr,
):
    """Block pid's list K = top-w of (its segment's prefix list, kept[first block of the
    segment], and its local list) into kept[pid], then its queries' thresholds from K and the
    block's own keys: query i's threshold is the candidate with exactly w-1 present keys above
    it; only the M+1 lowest K slots and the block's keys can be that candidate, since each new
    key moves it by one slot."""
    pid = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_h = tl.program_id(2)
    if VARLEN:
        start = tl.load(blk_info_ptr + pid)
        end = tl.load(blk_info_ptr + N_BLK + pid)
        i0 = tl.load(blk_info_ptr + 2 * N_BLK + pid)
    else:
        start = 0
        end = T
        i0 = pid * BLOCK_M
    real = i0 < end  # surplus varlen blocks write nothing
    first = pid - ((i0 - start) // BLOCK_M) % SEG  # the segment's first block
    bias_ptr += pid_b.to(tl.int64) * s_bb + pid_h * s_bh
    row = pid_b.to(tl.int64) * s_kb + pid_h * s_kh
    p_idx = kept_ptr + row + first.to(tl.int64) * W
    p_b = keptb_ptr + row + first.to(tl.int64) * W
    l_idx = loc_ptr + row + pid.to(tl.int64) * W
    l_b = locb_ptr + row + pid.to(tl.int64) * W
    cur = kept_ptr + row + pid.to(tl.int64) * W
    cur_b = keptb_ptr + row + pid.to(tl.int64) * W
    theta_ptr += pid_b.to(tl.int64) * s_tb + pid_h * s_th
    # the first block's list is the prefix list itself (its local list is empty)
    merge = real & (pid != first)
    offs_c = tl.arange(0, CH)
    for c0 in range(0, W, CH):
        slot = c0 + offs_c
        x_i = tl.load(p_idx + slot, mask=(slot < W) & merge, other=-1)
        x_b = tl.load(p_b + slot, mask=x_i >= 0, other=0.0)
        new = slot + _count_above(x_b, x_i, l_idx, l_b, W, LOG)
        tl.store(cur + new, x_i, mask=(x_i >= 0) & (new < W))
        tl.store(cur_b + new, x_b, mask=(x_i >= 0) & (new < W))
        y_i = tl.load(l_idx + slot, mask=(slot < W) & merge, other=-1)
        y_b = tl.load(l_b + slot, mask=y_i >= 0, other=0.0)
        new = slot + _count_above(y_b, y_i, p_idx, p_b, W, LOG)
        tl.store(cur + new, y_i, mask=(y_i >= 0) & (new < W))
        tl.store(cur_b + new, y_b, mask=(y_i >= 0) & (new < W))
    # the thresholds read K's low slots, written above by other threads of this program
    tl.debug_barrier()

    offs_m = tl.arange(0, BLOCK_M)
    yi = i0 + offs_m
    yv = yi < end
    yb = tl.load(bias_ptr + yi, mask=yv, other=0.0).to(tl.float32)
    A = ranks_above(yb[None, :], yi[None, :], yb[:, None], yi[:, None]) & yv[None, :]
    # K entries above each block key: of the union's entries above it, K holds all up to w
    n_k_above = tl.minimum(_count_above(yb, yi, p_idx, p_b, W, LOG) + _count_above(yb, yi, l_idx, l_b, W, LOG), W)
    upto = offs_m[:, None] <= offs_m[None, :]  # [y, i]: block key y is present at query i
    cnt_b = n_k_above[:, None] + tl.cumsum(A.to(tl.int32), axis=1)
    hit_b = (cnt_b == W - 1) & upto & yv[:, None]
    theta = tl.max(tl.where(hit_b, yi[:, None], -1), axis=0)
    cslot = W - BLOCK_M + offs_m  # the M lowest K slots
    cidx = tl.load(cur + cslot, mask=(cslot >= 0) & real, other=-1)
    cv = cidx >= 0
    cb = tl.load(cur_b + cslot, mask=cv, other=0.0)
    y_over_c = ranks_above(yb[None, :], yi[None, :], cb[:, None], cidx[:, None]) & yv[None, :]
    cnt_k = cslot[:, None] + tl.cumsum(y_over_c.to(tl.int32), axis=1)
    hit_k = (cnt_k == W - 1) & cv[:, None]
    theta = tl.maximum(theta, tl.max(tl.where(hit_k, cidx[:, None], -1), axis=0))
    # the one candidate left: slot W-M-1, the threshold once all M block keys ranked above it
    # (no other candidate hit although w keys are present)
    n_valid = tl.minimum(i0 - start, W)
    last = tl.load(cur + W - BLOCK_M - 1, mask=(W - BLOCK_M - 1 >= 0) & real, other=-1)
    full = n_valid + offs_m + 1 >= W
    theta = tl.where((theta < 0) & full & (W - BLOCK_M - 1 >= 0), last, theta)
    tl.store(theta_ptr + yi, theta, mask=yv)


def select_window(bias: torch.Tensor, keep_window: int, block_m: int, layout):
    """kept (b, hkv, n_blocks, w) int32, their biases (fp32, same shape) and theta (b, hkv, t)
    int32 for ``bias`` (b, hkv, t), blocks as in ``layout``."""
    b, hkv, t = bias.shape
    w = keep_window
    dev = bias.device
    lists = (b, hkv, layout.n_blocks, w)
    kept = torch.full(lists, -1, dtype=torch.int32, device=dev)
    # the biases of the listed keys, beside them: no dependent gather on the sequential chain.
    # The scratch lists' biases are read only where an index is listed: never initialized.
    kept_bias = torch.zeros(lists, dtype=torch.float32, device=dev)
    local = torch.full(lists, -1, dtype=torch.int32, device=dev)
    local_bias = torch.empty(lists, dtype=torch.float32, device=dev)
    theta = torch.empty((b, hkv, t), dtype=torch.int32, device=dev)
    segs = block_layout(t, layout.cu_seqlens if layout.varlen else None, SEG_BLOCKS * block_m, dev)
    seg_top = torch.full((b, hkv, segs.n_blocks, w), -1, dtype=torch.int32, device=dev)
    seg_top_bias = torch.empty((b, hkv, segs.n_blocks, w), dtype=torch.float32, device=dev)
    ch = min(128, triton.next_power_of_2(w))
    log = w.bit_length() + 1
    warps = 8 if block_m >= 128 else 4
    launch(_chain_kernel)[(segs.n_blocks, b, hkv)](
        bias, segs.blk_info, layout.blk_start, local, local_bias, seg_top, seg_top_bias,
        t, w, segs.n_blocks,
        bias.stride(0), bias.stride(1), local.stride(0), local.stride(1), seg_top.stride(0), seg_top.stride(1),
        VARLEN=layout.varlen, BLOCK_M=block_m, SEG=SEG_BLOCKS, CH=ch, num_warps=warps,
    )
    launch(_prefix_kernel)[(layout.num_seqs if layout.varlen else 1, b, hkv)](
        layout.cu_seqlens, layout.blk_start, segs.blk_start, kept, kept_bias, seg_top, seg_top_bias,
        t, w, kept.stride(0), kept.stride(1), seg_top.stride(0), seg_top.stride(1),
        VARLEN=layout.varlen, BLOCK_M=block_m, SEG=SEG_BLOCKS, CH=ch, LOG=log, num_warps=4,
    )
    launch(_block_kernel)[(layout.n_blocks, b, hkv)](
        bias, layout.blk_info, kept, kept_bias, local, local_bias, theta,
        t, w, layout.n_blocks, bias.stride(0), bias.stride(1), kept.stride(0), kept.stride(1),
        theta.stride(0), theta.stride(1),
        VARLEN=layout.varlen, BLOCK_M=block_m, SEG=SEG_BLOCKS, CH=ch, LOG=log, num_warps=warps,
    )
    return kept, kept_bias, theta
