"""Exact keep_window selection for the DMAttn Triton kernels, without any T x T work.

Rank order (spec section 3): key j ranks above key j' iff bias_j > bias_j', or the biases are
equal and j > j' (the more recent key wins a tie). Query i keeps the w highest-ranked keys of its
causal prefix. For every query block of BLOCK_M the selection writes

* ``kept[blk]`` = K, the top-w keys of the prefix before the block, sorted by rank (w key
  positions, -1 for empty slots, packed at the front) and ``kept_bias[blk]`` their biases: a
  query of the block keeps only keys of K or of the block itself, so attention gathers
  w + BLOCK_M keys;
* ``theta[i]`` = the position of the w-th ranked key kept by query i (-1 while i+1 < w, when
  every causal key is kept): query i keeps key j iff j <= i and j ranks at or above theta[i];
* ``count[i]`` = how many entries of its block's K query i keeps. K is sorted by rank and i
  keeps the keys ranking at or above theta[i], so those are K's first count[i] slots: the
  attention kernels mask K's slots by ``slot < count[i]``, and run the slots below the block's
  smallest count (at least w - M, each new key of the block pushes one out) with no mask.

K is an exclusive prefix "sum" over the blocks of a sequence, under the associative operation
top-w(A + B) of sorted lists, so it is computed as a parallel scan (Hillis-Steele) in
1 + ceil(log2(blocks per sequence)) + 1 launches, each over every block at once:

1. ``_block_sort_kernel``: list[blk] = the previous block's keys sorted by rank (the top w of
   them), empty for a sequence's first block: the rank of a key is the number of the block's
   keys above it (an M x M comparison);
2. ``_scan_kernel``, for d = 1, 2, 4, ...: list[blk] = top-w(list[blk] + list[blk - d]) where
   blk - d is in the same sequence, else unchanged; two sorted lists merge by moving each entry
   to its slot + the entries of the other list above it (a binary search), and entries landing
   at slot >= w drop out. The lists ping-pong between two buffers; both start empty (a
   negative index), and a block's count of entries never falls from one step to the next, so
   every step overwrites all of a block's earlier entries. A list entering step d covers at
   most d blocks, so only its first min(w, d x M) slots are visited (a third to a half of the
   work at w 1024).
3. ``_theta_kernel``: the thresholds of a block's queries from K and the block's own keys. The
   threshold of query i is the candidate with exactly w-1 present keys above it; only the M+1
   lowest K slots and the block's keys can be that candidate, since each new key moves it by
   one slot. The count of kept K slots comes with the candidate: its own slot + 1 for a K
   slot, the K entries above it for a block key.

(Until the eighth session the lists came from a sequential chain of block steps over segments
of 8 blocks, twice, plus a merge of the segments' lists: 2.2 ms at B1 H16 T16384, w 1024, on
the H200, dmattn.md run 6.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..registry import launch
from .triton_layout import block_bounds


@triton.jit
def ranks_above(b1, i1, b2, i2):
    """Key (b1, i1) ranks above key (b2, i2): larger bias, or equal bias and more recent."""
    return (b1 > b2) | ((b1 == b2) & (i1 > i2))


@triton.jit
def load_thresholds(theta_ptr, b_ptr, rows, row_ok):
    """theta of the query ``rows`` and the threshold keys' biases (-inf where theta is -1, so
    that every key ranks above it: every causal key kept)."""
    th_idx = tl.load(theta_ptr + rows, mask=row_ok, other=-1)
    th_b = tl.load(b_ptr + th_idx, mask=th_idx >= 0, other=float("-inf")).to(tl.float32)
    return th_idx, th_b


@triton.jit
def load_counts(count_ptr, rows, row_ok):
    """count of the query ``rows`` (0 for rows past the end), the block's smallest count over
    its rows (its K slots below it are kept by every row) and its largest (the slots used)."""
    count = tl.load(count_ptr + rows, mask=row_ok, other=0)
    hi = tl.max(count, axis=0)
    lo = tl.min(tl.where(row_ok, count, hi), axis=0)
    return count, lo, hi


@triton.jit
def kept_by(key_b, key_i, th_b, th_i):
    """The query whose threshold key is (th_b, th_i) keeps key (key_b, key_i): it is the
    threshold key or ranks above it (broadcast by the caller; causality is the caller's)."""
    return (key_i == th_i) | ranks_above(key_b, key_i, th_b, th_i)


@triton.jit
def _count_above(x_b, x_i, lst, lst_b, n, steps):
    """Entries of the sorted list (rank descending, -1 padded at the end, at most n entries)
    ranking above each x: a binary search over [0, n) in ``steps`` >= bit_length(n) steps."""
    lo = tl.zeros(x_i.shape, dtype=tl.int32)
    hi = tl.zeros(x_i.shape, dtype=tl.int32) + n
    # a loop, not tl.static_range: unrolled, torch's analysis of what a traced kernel writes
    # (torch 2.13, pytorch#193703) is exponential in the steps, and torch.compile stalls
    for _ in range(steps):
        live = lo < hi
        mid = (lo + hi) // 2
        m_i = tl.load(lst + mid, mask=live, other=-1)
        m_b = tl.load(lst_b + mid, mask=live & (m_i >= 0), other=0.0)
        above = (m_i >= 0) & ranks_above(m_b, m_i, x_b, x_i)
        lo = tl.where(live & above, mid + 1, lo)
        hi = tl.where(live & (above == 0), mid, hi)
    return lo


@triton.jit
def _block_info(pid, blk_info_ptr, T, N_BLK, VARLEN: tl.constexpr, BLOCK_M: tl.constexpr):
    """block_bounds and the block's index within its sequence (0 for surplus varlen blocks,
    whose first query is their sequence's end)."""
    start, end, i0 = block_bounds(pid, blk_info_ptr, T, N_BLK, VARLEN, BLOCK_M)
    return start, end, i0, (i0 - start) // BLOCK_M


@triton.jit
def _block_sort_kernel(
    bias_ptr, blk_info_ptr, out_ptr, outb_ptr, T, W, N_BLK, s_bb, s_bh, s_kb, s_kh,
    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """out[blk] = the keys of the block before blk (same sequence), best first, the top w."""
    pid = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_h = tl.program_id(2)
    start, end, i0, lb = _block_info(pid, blk_info_ptr, T, N_BLK, VARLEN, BLOCK_M)
    bias_ptr += pid_b.to(tl.int64) * s_bb + pid_h * s_bh
    out = pid_b.to(tl.int64) * s_kb + pid_h * s_kh + pid.to(tl.int64) * W
    offs_m = tl.arange(0, BLOCK_M)
    yi = i0 - BLOCK_M + offs_m
    yv = (lb > 0) & (i0 < end)  # the previous block is whole: blocks start at multiples of M
    yb = tl.load(bias_ptr + yi, mask=yv, other=0.0).to(tl.float32)
    # slot of key y = the block's keys above it
    A = ranks_above(yb[None, :], yi[None, :], yb[:, None], yi[:, None])
    slot = tl.sum(A.to(tl.int32), axis=1)
    keep = yv & (slot < W)
    tl.store(out_ptr + out + slot, yi, mask=keep)
    tl.store(outb_ptr + out + slot, yb, mask=keep)


@triton.jit
def _scan_kernel(
    blk_info_ptr, in_ptr, inb_ptr, out_ptr, outb_ptr, T, W, N_BLK, D, LEN, SEARCH, N_CH, s_kb, s_kh,
    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, CH: tl.constexpr,
):
    """out[blk] = top-w(in[blk] + in[blk - D]) where blk - D is in blk's sequence, else in[blk].
    Each input list covers at most D blocks, so it holds at most LEN = min(W, D x BLOCK_M)
    entries: only those slots are visited, and searched in SEARCH = bit_length(LEN) steps (the
    early steps' lists are short). A program moves the slots [c0, c0 + CH) of both lists, one of
    the N_CH = ceil(LEN / CH) chunks (grid axis 2 is kv head x chunk): an entry's new slot
    depends on the other list only, so the chunks are independent, and one program per merge
    walked them in a chain of dependent searches (run 9: ~17 us per merge, 3x the prediction)."""
    pid = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_h = tl.program_id(2) // N_CH
    c0 = (tl.program_id(2) % N_CH) * CH  # this program's chunk of both lists' slots
    start, end, i0, lb = _block_info(pid, blk_info_ptr, T, N_BLK, VARLEN, BLOCK_M)
    row = pid_b.to(tl.int64) * s_kb + pid_h * s_kh
    a_idx = in_ptr + row + pid.to(tl.int64) * W
    a_b = inb_ptr + row + pid.to(tl.int64) * W
    merge = lb >= D  # (surplus blocks have lb 0: they only copy their empty list)
    other = tl.where(merge, pid - D, pid)
    c_idx = in_ptr + row + other.to(tl.int64) * W
    c_b = inb_ptr + row + other.to(tl.int64) * W
    o_idx = out_ptr + row + pid.to(tl.int64) * W
    o_b = outb_ptr + row + pid.to(tl.int64) * W
    slot = c0 + tl.arange(0, CH)
    x_i = tl.load(a_idx + slot, mask=slot < LEN, other=-1)
    x_b = tl.load(a_b + slot, mask=x_i >= 0, other=0.0)
    new = slot + tl.where(merge, _count_above(x_b, x_i, c_idx, c_b, LEN, SEARCH), 0)
    tl.store(o_idx + new, x_i, mask=(x_i >= 0) & (new < W))
    tl.store(o_b + new, x_b, mask=(x_i >= 0) & (new < W))
    y_i = tl.load(c_idx + slot, mask=(slot < LEN) & merge, other=-1)
    y_b = tl.load(c_b + slot, mask=y_i >= 0, other=0.0)
    new = slot + _count_above(y_b, y_i, a_idx, a_b, LEN, SEARCH)
    tl.store(o_idx + new, y_i, mask=(y_i >= 0) & (new < W))
    tl.store(o_b + new, y_b, mask=(y_i >= 0) & (new < W))


@triton.jit
def _theta_kernel(
    bias_ptr, blk_info_ptr, kept_ptr, keptb_ptr, theta_ptr, count_ptr,
    T, W, N_BLK, s_bb, s_bh, s_kb, s_kh, s_tb, s_th,
    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, LOG: tl.constexpr,
):
    """theta and count of block pid's queries from its list K (kept[pid]) and its own keys."""
    pid = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_h = tl.program_id(2)
    start, end, i0, lb = _block_info(pid, blk_info_ptr, T, N_BLK, VARLEN, BLOCK_M)
    bias_ptr += pid_b.to(tl.int64) * s_bb + pid_h * s_bh
    cur = kept_ptr + pid_b.to(tl.int64) * s_kb + pid_h * s_kh + pid.to(tl.int64) * W
    cur_b = keptb_ptr + pid_b.to(tl.int64) * s_kb + pid_h * s_kh + pid.to(tl.int64) * W
    theta_ptr += pid_b.to(tl.int64) * s_tb + pid_h * s_th
    count_ptr += pid_b.to(tl.int64) * s_tb + pid_h * s_th
    offs_m = tl.arange(0, BLOCK_M)
    yi = i0 + offs_m
    yv = yi < end
    yb = tl.load(bias_ptr + yi, mask=yv, other=0.0).to(tl.float32)
    A = ranks_above(yb[None, :], yi[None, :], yb[:, None], yi[:, None]) & yv[None, :]
    n_k_above = _count_above(yb, yi, cur, cur_b, W, LOG)
    # candidates among the block's keys: count_i(y) = present keys above y at query i
    upto = offs_m[:, None] <= offs_m[None, :]  # [y, i]: block key y is present at query i
    cnt_b = n_k_above[:, None] + tl.cumsum(A.to(tl.int32), axis=1)
    hit_b = (cnt_b == W - 1) & upto & yv[:, None]
    theta = tl.max(tl.where(hit_b, yi[:, None], -1), axis=0)
    count = tl.max(tl.where(hit_b, n_k_above[:, None], -1), axis=0)  # (one candidate hits)
    # candidates among the M lowest K slots
    cslot = W - BLOCK_M + offs_m
    cidx = tl.load(cur + cslot, mask=cslot >= 0, other=-1)
    cv = cidx >= 0
    cb = tl.load(cur_b + cslot, mask=cv, other=0.0)
    y_over_c = ranks_above(yb[None, :], yi[None, :], cb[:, None], cidx[:, None]) & yv[None, :]
    cnt_k = cslot[:, None] + tl.cumsum(y_over_c.to(tl.int32), axis=1)
    hit_k = (cnt_k == W - 1) & cv[:, None]
    theta = tl.maximum(theta, tl.max(tl.where(hit_k, cidx[:, None], -1), axis=0))
    count = tl.maximum(count, tl.max(tl.where(hit_k, cslot[:, None] + 1, -1), axis=0))
    # the one candidate left: slot W-M-1, the threshold once all M block keys ranked above it
    # (no other candidate hit although w keys are present)
    n_valid = tl.minimum(i0 - start, W)
    last = tl.load(cur + W - BLOCK_M - 1, mask=W - BLOCK_M - 1 >= 0, other=-1)
    full = n_valid + offs_m + 1 >= W
    fallback = (theta < 0) & full & (W - BLOCK_M - 1 >= 0)
    theta = tl.where(fallback, last, theta)
    count = tl.where(fallback, W - BLOCK_M, count)
    # no threshold: every causal key kept, so all of K's entries
    count = tl.where(theta < 0, n_valid, count)
    tl.store(theta_ptr + yi, theta, mask=yv)
    tl.store(count_ptr + yi, count, mask=yv)


def scan_steps(t: int, block_m: int) -> int:
    """Scan steps for blocks of block_m over at most t queries per sequence: ceil(log2(blocks)).
    A Python loop (under torch.compile a guard per power of two of the block count)."""
    blocks, steps = triton.cdiv(t, block_m), 0
    while (1 << steps) < blocks:
        steps += 1
    return steps


SCAN_CHUNK = 128  # list slots per scan program (a test sets fewer: several chunks per merge)


def select_window(bias: torch.Tensor, keep_window: int, block_m: int, layout):
    """kept (b, hkv, n_blocks, w) int32, their biases (fp32, same shape), theta and count
    (b, hkv, t) int32 for ``bias`` (b, hkv, t), blocks as in ``layout``."""
    b, hkv, t = bias.shape
    w = keep_window
    dev = bias.device
    lists = (b, hkv, layout.n_blocks, w)
    # every buffer is flat, its strides passed by hand: the scan writes each buffer several
    # times, which functionalization turns into as_strided views, and torch 2.11's Inductor fails
    # on a view with a size-1 leading dim and a symbolic stride (pytorch#181735, fixed in 2.12)
    s0, s1 = hkv * layout.n_blocks * w, layout.n_blocks * w
    # two buffers for the scan's steps, the last step writing the first; the biases of the listed
    # keys sit beside them (no dependent gather) and are read only where an index is listed.
    # Empty slots hold a negative index, -1 in the first buffer (the returned lists) and -2 in
    # the second: AOT autograd's CSE makes two identical torch.full calls one node, Inductor then
    # clones it for the first write, and torch 2.11 crashed on that clone (dmattn.md run 12)
    bufs = [(torch.full((b * s0,), -1 - i, dtype=torch.int32, device=dev),
             torch.full((b * s0,), float(i), dtype=torch.float32, device=dev)) for i in range(2)]
    theta, count = (torch.empty(b * hkv * t, dtype=torch.int32, device=dev) for _ in range(2))
    ch = min(SCAN_CHUNK, triton.next_power_of_2(w))
    log = w.bit_length() + 1
    warps = 8 if block_m >= 128 else 4
    grid = (layout.n_blocks, b, hkv)
    steps = scan_steps(t, block_m)
    cur = steps % 2  # so that the last step writes bufs[0]
    kept, kept_bias = bufs[cur]
    launch(_block_sort_kernel)[grid](
        bias, layout.blk_info, kept, kept_bias, t, w, layout.n_blocks,
        bias.stride(0), bias.stride(1), s0, s1,
        VARLEN=layout.varlen, BLOCK_M=block_m, num_warps=warps,
    )
    for step in range(steps):
        (src, src_b), (dst, dst_b) = bufs[cur], bufs[1 - cur]
        length = min(w, block_m << step)  # entries of a list covering 2^step blocks, at most
        n_ch = triton.cdiv(length, ch)
        launch(_scan_kernel)[(layout.n_blocks, b, hkv * n_ch)](
            layout.blk_info, src, src_b, dst, dst_b, t, w, layout.n_blocks, 1 << step,
            length, length.bit_length(), n_ch, s0, s1,
            VARLEN=layout.varlen, BLOCK_M=block_m, CH=ch, num_warps=4,
        )
        cur = 1 - cur
    kept, kept_bias = bufs[0]
    launch(_theta_kernel)[grid](
        bias, layout.blk_info, kept, kept_bias, theta, count,
        t, w, layout.n_blocks, bias.stride(0), bias.stride(1), s0, s1, hkv * t, t,
        VARLEN=layout.varlen, BLOCK_M=block_m, LOG=log, num_warps=warps,
    )
    return kept.view(lists), kept_bias.view(lists), theta.view(b, hkv, t), count.view(b, hkv, t)
