"""Key-major order of the windowed DMAttn backward: which queries keep each key, and tiles of
keys whose query ranges are alike.

Query i keeps the top w of its causal prefix (triton_select). A key j that query j keeps stays
kept until w keys ranking above it have arrived after it, and once dropped it never returns
(a prefix only grows). So the queries keeping j are one interval, [j, last_j] (empty, last_j =
-1, when j is not in the top w of its own prefix), and the window mask of every pair is
``j <= i <= last_j``: no thresholds, and no sequence bounds (the interval lies in j's sequence).

A key-major backward tile then visits the queries from its earliest key to its latest last_j.
Tiles of consecutive positions would visit nearly everything (a tile of 64 random biases holds
one key that outlives the sequence), so the keys are sorted by last_j, then by position inside
each run of about w / 4 keys of that order (alike ends, and starts brought together). Simulated
on i.i.d. normal biases (T 16384, w 1024, tiles of 64 keys, 64-query steps) the tiles visit
1.29x the kept pairs (1.20x with 32-key tiles), where consecutive positions visit 8x; one sort
by (last_j // w, position) gave 1.45x (1.29x), exact last_j alone or last_j + j 1.6-1.8x. The
best run length followed w (w / 4 at w 128, 512, 1024). Three keys in four are never kept
there, and their tiles only write zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..registry import launch
from .triton_layout import block_bounds
from .triton_select import kept_by, load_thresholds


@triton.jit
def _last_query_kernel(
    bias_ptr, theta_ptr, blk_info_ptr, last_ptr, T, N_BLK,
    s_bb, s_bh, s_tb, s_th, s_lb, s_lh,
    VARLEN: tl.constexpr, BLOCK: tl.constexpr,
):
    """last[j] for the keys of block pid: a binary search over the queries [j, end) of the
    predicate "query i keeps j", true up to last_j and false after it."""
    pid = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_h = tl.program_id(2)
    start, end, j0 = block_bounds(pid, blk_info_ptr, T, N_BLK, VARLEN, BLOCK)
    bias_ptr += pid_b.to(tl.int64) * s_bb + pid_h * s_bh
    theta_ptr += pid_b.to(tl.int64) * s_tb + pid_h * s_th
    offs = j0 + tl.arange(0, BLOCK)
    ok = offs < end
    kb = tl.load(bias_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    th_i, th_b = load_thresholds(theta_ptr, bias_ptr, offs, ok)
    kept = ok & kept_by(kb, offs, th_b, th_i)  # by its own query: else by none
    lo = offs  # kept by lo
    hi = tl.where(ok, end, offs)  # first query known not to keep it (or the end)
    # 31 steps cover any int32 range (steps past convergence are masked); a loop, not
    # tl.static_range (see triton_select._count_above)
    for _ in range(31):
        live = kept & (hi - lo > 1)
        mid = (lo + hi) // 2
        m_i, m_b = load_thresholds(theta_ptr, bias_ptr, mid, live)
        keeps = kept_by(kb, offs, m_b, m_i)
        lo = tl.where(live & keeps, mid, lo)
        hi = tl.where(live & (keeps == 0), mid, hi)
    tl.store(last_ptr + pid_b.to(tl.int64) * s_lb + pid_h * s_lh + offs, tl.where(kept, lo, -1), mask=ok)


def key_order(bias: torch.Tensor, theta: torch.Tensor, keep_window: int, layout):
    """(order, last), both int32 (b, hkv, t): last[j] = the last query keeping key j (-1: none),
    order = every key position of the row, sorted for key-major tiles (module docstring).
    ``layout``: a block layout of the queries (its blocks are the search's programs)."""
    b, hkv, t = bias.shape
    last = torch.empty((b, hkv, t), dtype=torch.int32, device=bias.device)
    launch(_last_query_kernel)[(layout.n_blocks, b, hkv)](
        bias, theta, layout.blk_info, last, t, layout.n_blocks,
        bias.stride(0), bias.stride(1), theta.stride(0), theta.stride(1), last.stride(0), last.stride(1),
        VARLEN=layout.varlen, BLOCK=layout.block_m, num_warps=4,
    )
    # int32 sort keys where both sorts' keys fit (below t * t): a radix sort of 32-bit keys
    # makes half the passes of 64-bit ones
    key = torch.int32 if t * t < 2**31 else torch.int64
    pos = torch.arange(t, device=bias.device, dtype=key)
    # by last query, latest first: the tiles visiting the longest query ranges get the first
    # programs, so they do not start last and set the kernel's tail; never-kept keys (-1) come
    # last (their tiles only write zeros)
    by_last = torch.sort(last.to(key) * t + pos, descending=True).indices
    # then by position within runs of ~w / 4 keys (a multiple of every key tile, 64)
    run = max(64, keep_window // 256 * 64)
    runs = torch.div(pos, run, rounding_mode="floor") * t + by_last.to(key)
    order = torch.gather(by_last, -1, torch.sort(runs).indices).to(torch.int32)
    return order, last
