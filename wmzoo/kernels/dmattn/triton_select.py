"""Exact keep_window selection for the DMAttn Triton kernels, without any T x T work.

Rank order (spec section 3): key j ranks above key j' iff bias_j > bias_j', or the biases are
equal and j > j' (the more recent key wins a tie). Query i keeps the w highest-ranked keys of its
causal prefix. Per (sequence, kv head) one program walks the query blocks of BLOCK_M in order and
keeps K = the top-w keys of the prefix before the block, sorted by rank (slot 0 = highest).
For every block it writes

* ``kept[blk]`` = K at the block's start (w key positions, -1 for empty slots, packed at the
  front) and ``kept_bias[blk]`` their biases: a query of the block keeps only keys of K or of
  the block itself, so attention gathers w + BLOCK_M keys;
* ``theta[i]`` = the position of the w-th ranked key kept by query i (-1 while i+1 <= w, when
  every causal key is kept): query i keeps key j iff j <= i and j ranks at or above theta[i].

Merging the block into K is a (w + M) x M comparison: a K entry at slot p moves to slot
p + (block keys above it), a block key to (K entries above it) + (block keys above it); entries
landing at slot >= w drop out for good (the threshold never falls). The threshold of query i
is the candidate whose count of higher-ranked present keys is exactly w-1; only the M+1 lowest
K slots and the block's keys can be that candidate, since each new key moves it by one slot.
All comparison tiles are at most M x M (or CH x M), so nothing spills out of registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..registry import launch


@triton.jit
def ranks_above(b1, i1, b2, i2):
    """Key (b1, i1) ranks above key (b2, i2): larger bias, or equal bias and more recent."""
    return (b1 > b2) | ((b1 == b2) & (i1 > i2))


@triton.jit
def _select_kernel(
    bias_ptr, cu_ptr, blk_start_ptr, kept_ptr, keptb_ptr, theta_ptr,
    T, W,
    s_bb, s_bh, s_kb, s_kh, s_tb, s_th,
    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, CH: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_h = tl.program_id(2)
    if VARLEN:
        start = tl.load(cu_ptr + pid_s).to(tl.int32)
        end = tl.load(cu_ptr + pid_s + 1).to(tl.int32)
        blk0 = tl.load(blk_start_ptr + pid_s).to(tl.int32)
    else:
        start = 0
        end = T
        blk0 = 0
    nb = (end - start + BLOCK_M - 1) // BLOCK_M
    bias_ptr += pid_b.to(tl.int64) * s_bb + pid_h * s_bh
    kept_ptr += pid_b.to(tl.int64) * s_kb + pid_h * s_kh
    keptb_ptr += pid_b.to(tl.int64) * s_kb + pid_h * s_kh
    theta_ptr += pid_b.to(tl.int64) * s_tb + pid_h * s_th
    offs_m = tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, CH)
    for lb in range(0, nb):
        i0 = start + lb * BLOCK_M
        cur = kept_ptr + (blk0 + lb).to(tl.int64) * W
        nxt = cur + W
        cur_b = keptb_ptr + (blk0 + lb).to(tl.int64) * W
        nxt_b = cur_b + W
        write_next = lb + 1 < nb
        yi = i0 + offs_m
        yv = yi < end
        yb = tl.load(bias_ptr + yi, mask=yv, other=0.0).to(tl.float32)
        # A[y, y'] = block key y' ranks above block key y
        A = ranks_above(yb[None, :], yi[None, :], yb[:, None], yi[:, None]) & yv[None, :]
        n_block_above = tl.sum(A.to(tl.int32), axis=1)
        n_k_above = tl.zeros([BLOCK_M], dtype=tl.int32)
        for c0 in range(0, W, CH):
            slot = c0 + offs_c
            kidx = tl.load(cur + slot, mask=slot < W, other=-1)
            kv = kidx >= 0
            kb = tl.load(cur_b + slot, mask=slot < W, other=0.0)
            y_over_k = ranks_above(yb[None, :], yi[None, :], kb[:, None], kidx[:, None])
            moved = slot + tl.sum((y_over_k & yv[None, :]).to(tl.int32), axis=1)
            tl.store(nxt + moved, kidx, mask=kv & (moved < W) & write_next)
            tl.store(nxt_b + moved, kb, mask=kv & (moved < W) & write_next)
            # indices are distinct, so "K entry above y" is the negation
            n_k_above += tl.sum((kv[:, None] & (y_over_k == 0)).to(tl.int32), axis=0)
        new_slot = n_k_above + n_block_above
        tl.store(nxt + new_slot, yi, mask=yv & (new_slot < W) & write_next)
        tl.store(nxt_b + new_slot, yb, mask=yv & (new_slot < W) & write_next)

        # thresholds: count_i(c) = present keys above candidate c at query i
        upto = offs_m[:, None] <= offs_m[None, :]  # [y, i]: block key y is present at query i
        cnt_b = n_k_above[:, None] + tl.cumsum(A.to(tl.int32), axis=1)
        hit_b = (cnt_b == W - 1) & upto & yv[:, None]
        theta = tl.max(tl.where(hit_b, yi[:, None], -1), axis=0)
        cslot = W - BLOCK_M + offs_m  # the M lowest K slots
        cidx = tl.load(cur + cslot, mask=cslot >= 0, other=-1)
        cv = cidx >= 0
        cb = tl.load(cur_b + cslot, mask=cslot >= 0, other=0.0)
        y_over_c = ranks_above(yb[None, :], yi[None, :], cb[:, None], cidx[:, None]) & yv[None, :]
        cnt_k = cslot[:, None] + tl.cumsum(y_over_c.to(tl.int32), axis=1)
        hit_k = (cnt_k == W - 1) & cv[:, None]
        theta = tl.maximum(theta, tl.max(tl.where(hit_k, cidx[:, None], -1), axis=0))
        # the one candidate left: slot W-M-1, the threshold once all M block keys ranked above it
        # (no other candidate hit although w keys are present)
        n_valid = tl.minimum(i0 - start, W)
        last = tl.load(cur + W - BLOCK_M - 1, mask=W - BLOCK_M - 1 >= 0, other=-1)
        full = n_valid + offs_m + 1 >= W
        theta = tl.where((theta < 0) & full & (W - BLOCK_M - 1 >= 0), last, theta)
        tl.store(theta_ptr + yi, theta, mask=yv)
        # the next block reads the slots written above by other threads of this program
        tl.debug_barrier()


def select_window(bias: torch.Tensor, keep_window: int, block_m: int, layout):
    """kept (b, hkv, n_blocks, w) int32, their biases (fp32, same shape) and theta (b, hkv, t)
    int32 for ``bias`` (b, hkv, t)."""
    b, hkv, t = bias.shape
    kept = torch.full((b, hkv, layout.n_blocks, keep_window), -1, dtype=torch.int32, device=bias.device)
    # the biases of the listed keys, beside them: no dependent gather on the sequential chain
    kept_bias = torch.zeros((b, hkv, layout.n_blocks, keep_window), dtype=torch.float32, device=bias.device)
    theta = torch.empty((b, hkv, t), dtype=torch.int32, device=bias.device)
    n_prog = layout.num_seqs if layout.varlen else 1
    launch(_select_kernel)[(n_prog, b, hkv)](
        bias, layout.cu_seqlens, layout.blk_start, kept, kept_bias, theta,
        t, keep_window,
        bias.stride(0), bias.stride(1), kept.stride(0), kept.stride(1), theta.stride(0), theta.stride(1),
        VARLEN=layout.varlen, BLOCK_M=block_m, CH=min(128, triton.next_power_of_2(keep_window)),
        num_warps=8 if block_m >= 128 else 4,
    )
    return kept, kept_bias, theta
