"""Parallelism inside a sequence: the start states of its segments, for the chunked kernels.

The chunked kernels walk a sequence's chunks one after another, so with few (sequence, head)
programs (B1 T32768 H32: 32 programs on 132 SMs) the GPU idles. Cutting every sequence into
SEGS segments of whole chunks (``program_chunks``) lets the kernels run the segments in
parallel, given the state each segment starts from:

1. ``_ssd_segment_states``: per (sequence x segment, head, block of p) the state the segment
   leaves when entered with zero, and its total log decay sum(dt A): reads x, dt, B only.
2. ``_ssd_chain_states``: per sequence, in segment order, S_in[s+1] = exp(dec_s) S_in[s] +
   local_s from S_in[0] = initial state; the local states are replaced in place by S_in, and
   the state leaving the last segment is the final state.

The backward needs the same in reverse for dS, the gradient w.r.t. the state:
3. ``_ssd_segment_dstates``: per segment, the dS its outputs put on its start state when
   nothing flows in from its end: sum_t exp(Lam_t) dy_t C~_t^T with the decays of the segment.
4. ``_ssd_chain_dstates``: per sequence, from the last segment back, the dS arriving at each
   segment's end (dfinal at the last), replacing the local ones in place; and each segment's
   ``carry`` = <dS_end, S_end>, which is exactly the sum of dL/dG over every later token (a
   common shift of G after a boundary scales the state crossing it), the reverse cumsum the
   reverse sweep starts from. Partial sums per block of p; the backend adds them up.

States are fp32 (sequences x SEGS, h, p, n); products with them split hi + lo as in the
backward (triton_common.mm_split_a), so the recomputed states match the unsegmented ones.
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
    mm_split_a,
    operand,
    program_chunks,
    state_tile,
    store_state,
)


@autotuned(configs(((4, 1), (4, 2), (8, 2))), key=TILE_KEY)  # 1 stage: see triton_fwd
@triton.jit
def _ssd_segment_states(
    x_ptr, dt_ptr, A_ptr, B_ptr, cu_ptr, cos_ptr, sin_ptr,
    states_ptr, dec_ptr,
    T, H, G, P, N, HALF, SEGS,
    HAS_CU: tl.constexpr, ROPE: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, NB: tl.constexpr, DOT: tl.constexpr,
):
    idx = tl.program_id(0)  # sequence x SEGS + segment
    head = tl.program_id(1)
    p0 = tl.program_id(2) * BLOCK_P
    offs_p = p0 + tl.arange(0, BLOCK_P)
    steps = tl.arange(0, Q)
    start, end, c0, c1 = program_chunks(cu_ptr, idx, T, Q, SEGS, HAS_CU)
    A = tl.load(A_ptr + head).to(tl.float32)
    Bg = B_ptr + (head // (H // G)) * N
    s = tl.zeros([BLOCK_P, NB], dtype=tl.float32)
    dec = 0.0
    for c in range(c0, c1):
        rows = start + c * Q + steps
        row_mask = rows < end
        dt, lam, lam_end = chunk_decays(dt_ptr, rows, row_mask, H, head, A)
        dec += lam_end
        x = load_cols(x_ptr + head * P, H * P, rows, row_mask, p0, P - p0, BLOCK_P)
        weighted = tl.trans(x * (dt * tl.exp(lam_end - lam))[:, None])
        b = operand(load_rotated(Bg, G * N, rows, row_mask, cos_ptr, sin_ptr, N, HALF, NB, ROPE), DOT)
        s = tl.exp(lam_end) * s + mm_split_a(weighted, b, DOT)
    store_state(states_ptr, idx, head, H, P, N, offs_p, s, True, NB)
    tl.store(dec_ptr + idx * H + head, dec)  # the same value from every block of p


@autotuned(configs(((4, 1), (4, 2), (8, 2))), key=TILE_KEY)  # 1 stage: see triton_fwd
@triton.jit
def _ssd_segment_dstates(
    dy_ptr, dt_ptr, A_ptr, C_ptr, cu_ptr, cos_ptr, sin_ptr,
    dstates_ptr,
    T, H, G, P, N, HALF, SEGS,
    HAS_CU: tl.constexpr, ROPE: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, NB: tl.constexpr, DOT: tl.constexpr,
):
    idx = tl.program_id(0)
    head = tl.program_id(1)
    offs_p = tl.arange(0, BLOCK_P)
    steps = tl.arange(0, Q)
    start, end, c0, c1 = program_chunks(cu_ptr, idx, T, Q, SEGS, HAS_CU)
    A = tl.load(A_ptr + head).to(tl.float32)
    Cg = C_ptr + (head // (H // G)) * N
    ds = tl.zeros([BLOCK_P, NB], dtype=tl.float32)
    for i in range(0, c1 - c0):
        rows = start + (c1 - 1 - i) * Q + steps
        row_mask = rows < end
        dt, lam, lam_end = chunk_decays(dt_ptr, rows, row_mask, H, head, A)
        dy = load_cols(dy_ptr + head * P, H * P, rows, row_mask, 0, P, BLOCK_P)
        weighted = tl.trans(dy * tl.exp(lam)[:, None])
        c_t = operand(load_rotated(Cg, G * N, rows, row_mask, cos_ptr, sin_ptr, N, HALF, NB, ROPE), DOT)
        ds = tl.exp(lam_end) * ds + mm_split_a(weighted, c_t, DOT)
    store_state(dstates_ptr, idx, head, H, P, N, offs_p, ds, True, NB)


@triton.jit
def _ssd_chain_states(
    states_ptr, dec_ptr, h0_ptr, final_ptr, H, P, N, SEGS,
    HAS_H0: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    k = tl.program_id(0)
    head = tl.program_id(1)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs, mask = state_tile(k, head, H, P, N, offs_p, BLOCK_N)
    s = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    if HAS_H0:
        s = tl.load(h0_ptr + offs, mask=mask, other=0.0)
    for seg in range(0, SEGS):
        idx = k * SEGS + seg
        off_i, _ = state_tile(idx, head, H, P, N, offs_p, BLOCK_N)
        local = tl.load(states_ptr + off_i, mask=mask, other=0.0)
        tl.store(states_ptr + off_i, s, mask=mask)
        s = tl.exp(tl.load(dec_ptr + idx * H + head)) * s + local
    tl.store(final_ptr + offs, s, mask=mask)


@triton.jit
def _ssd_chain_dstates(
    dstates_ptr, dec_ptr, states_ptr, final_ptr, dfinal_ptr, carry_ptr, H, P, N, SEGS, NPB,
    HAS_DFINAL: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    k = tl.program_id(0)
    head = tl.program_id(1)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs, mask = state_tile(k, head, H, P, N, offs_p, BLOCK_N)
    ds = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    if HAS_DFINAL:
        ds = tl.load(dfinal_ptr + offs, mask=mask, other=0.0)
    for i in range(0, SEGS):
        seg = SEGS - 1 - i
        idx = k * SEGS + seg
        off_i, _ = state_tile(idx, head, H, P, N, offs_p, BLOCK_N)
        off_next, _ = state_tile(idx + 1, head, H, P, N, offs_p, BLOCK_N)
        local = tl.load(dstates_ptr + off_i, mask=mask, other=0.0)
        tl.store(dstates_ptr + off_i, ds, mask=mask)
        # the state at this segment's end: the next segment's start state, or the final state
        last = seg == SEGS - 1
        s_end = tl.load(final_ptr + offs, mask=mask & last, other=0.0) + \
            tl.load(states_ptr + off_next, mask=mask & (seg < SEGS - 1), other=0.0)
        tl.store(carry_ptr + (idx * H + head) * NPB + tl.program_id(2), tl.sum(tl.sum(ds * s_end, axis=1), axis=0))
        ds = tl.exp(tl.load(dec_ptr + idx * H + head)) * ds + local
