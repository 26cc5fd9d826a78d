"""The SSD forward kernel: one program per (sequence or segment, head, block of p) walks its chunks.

Per chunk of Q tokens, with a_s = dt_s A and Lam_t = a_1 + ... + a_t (inside the chunk):
    y_t    = sum_{s<=t} exp(Lam_t - Lam_s) (C~_t . B~_s) dt_s x_s   (the quadratic, dual form)
           + exp(Lam_t) S C~_t                                      (the incoming state S)
           + D x_t
    S     <- exp(Lam_Q) S + sum_s exp(Lam_Q - Lam_s) dt_s x_s B~_s^T
The state (p x n, fp32) stays in registers from chunk to chunk, so the chunk states are never
written to memory: the forward reads x, dt, B, C once and writes y and the final state. With
segments (triton_segments), program (sequence x SEGS + segment) starts from its segment's state
(passed as the initial states, one per segment) and the chain kernel writes the final state.
B~ and C~ are rotated on load (triton_common.load_rotated); S is one p x n tile, or two (PLAIN):

With RoPE on r < n channels the tiles can be cut at r: the rotated channels [0, NR = r) in
the first tile, the plain ones [NR, n) in a second (PB wide), and the state the same way (S =
[S_rot | S_plain]); every product over n is then the sum of the two parts' products:
    C~ . B~ = C~_rot . B~_rot + C_plain . B_plain,   S C~ = S_rot C~_rot + S_plain C_plain.
Why: on the GPU an elementwise step between a tile's load and its products costs about as much
as the products (ssd.md run 15: the rotation's arithmetic alone on B and C takes the forward
from 0.42 to 0.74 ms), and the rotated tiles' registers spill; cut, the rotation runs over the
r rotated channels only and the plain ones go from their load into the products. Without PLAIN
the first tile holds every channel (NR = n), rotated where channel < r. PAIRED (r = n) cuts
at r / 2 instead: the two tiles are the halves that RoPE turns against each other (NR = r / 2),
each loaded plain and rotated with one pair of (Q, r / 2) tables shared by B and C, so no
partner is gathered (spills at the benchmark's tiles on triton 3.6: 0.6 KB per thread against
4.0 for the gathered form, 0.4 without RoPE).
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
    load_paired_halves,
    load_rotated,
    load_state_cols,
    mm,
    program_chunks,
    store_state_cols,
)


# A one-stage config first: the autotuner drops configs whose pipelined loads do not fit in
# shared memory but needs one that does (an earlier RoPE load form needed 270 KB at two stages at
# n 128, over the H200's 227 KB, and every config failed; n goes up to 256), and the first config
# is the one deterministic mode pins (kernels/autotune). 8 warps, not 4 (until the eighth
# session): compiled for sm_90a at the benchmark's tiles it spills 0.5 / 1.4 KB per thread
# without / with RoPE against 1.7 / 4.8 KB, the fewest of the list (not timed; spills do not
# rank configs by speed, dmattn.md run 6), and 128 KB of shared memory at the largest tiles.
@autotuned(configs(((8, 1), (4, 2), (8, 2), (4, 3))), key=TILE_KEY + ["PB", "PLAIN", "PAIRED", "WRITE_FINAL"])
@triton.jit
def _ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, cu_ptr, cos_ptr, sin_ptr,
    y_ptr, final_ptr,
    T, H, G, P, N, HALF, SEGS, NR,
    HAS_D: tl.constexpr, HAS_H0: tl.constexpr, HAS_CU: tl.constexpr,
    ROPE: tl.constexpr, WRITE_FINAL: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, NB: tl.constexpr, DOT: tl.constexpr,
    PLAIN: tl.constexpr, PB: tl.constexpr, PAIRED: tl.constexpr,
):
    tl.static_assert(not PAIRED or (PLAIN and ROPE and PB == NB))
    k = tl.program_id(0)  # state index: sequence x SEGS + segment (the sequence when SEGS = 1)
    head = tl.program_id(1)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    steps = tl.arange(0, Q)
    start, end, c0, c1 = program_chunks(cu_ptr, k, T, Q, SEGS, HAS_CU)
    group = head // (H // G)
    A = tl.load(A_ptr + head).to(tl.float32)
    p_mask = offs_p < P
    Bg = B_ptr + group * N
    Cg = C_ptr + group * N
    s = load_state_cols(h0_ptr, k, head, H, P, N, offs_p, 0, NR, HAS_H0, BLOCK_P, NB)
    if PLAIN:
        s_plain = load_state_cols(h0_ptr, k, head, H, P, N, offs_p, NR, N - NR, HAS_H0, BLOCK_P, PB)
    if HAS_D:
        skip = tl.load(D_ptr + head).to(tl.float32)
    causal = steps[:, None] >= steps[None, :]

    for c in range(c0, c1):
        rows = start + c * Q + steps
        row_mask = rows < end
        # Past the sequence end dt = x = B = C = 0: those steps neither decay nor feed the state.
        dt, lam, lam_end = chunk_decays(dt_ptr, rows, row_mask, H, head, A)
        x = load_cols(x_ptr + head * P, H * P, rows, row_mask, tl.program_id(2) * BLOCK_P, P - tl.program_id(2) * BLOCK_P, BLOCK_P)
        xd = x * dt[:, None]
        if PAIRED:  # the second tile ("plain" below) is the rotated upper half
            b, c_t, b_plain, c_plain = load_paired_halves(Bg, Cg, G * N, rows, row_mask, cos_ptr, sin_ptr, HALF, NB)
        else:
            b = load_rotated(Bg, G * N, rows, row_mask, cos_ptr, sin_ptr, NR, HALF, NB, ROPE)
            c_t = load_rotated(Cg, G * N, rows, row_mask, cos_ptr, sin_ptr, NR, HALF, NB, ROPE)
            if PLAIN:
                b_plain = load_cols(Bg, G * N, rows, row_mask, NR, N - NR, PB)
                c_plain = load_cols(Cg, G * N, rows, row_mask, NR, N - NR, PB)
        scores = mm(c_t, tl.trans(b), DOT)
        inter = mm(c_t, tl.trans(s), DOT)
        if PLAIN:
            scores += mm(c_plain, tl.trans(b_plain), DOT)
            inter += mm(c_plain, tl.trans(s_plain), DOT)
        # The mask goes in before exp: above the diagonal Lam_t - Lam_s > 0 could overflow.
        decay = tl.exp(tl.where(causal, lam[:, None] - lam[None, :], float("-inf")))
        y = mm(scores * decay, xd, DOT) + tl.exp(lam)[:, None] * inter
        if HAS_D:
            y += skip * x
        xy_off = (rows[:, None] * H + head) * P + offs_p[None, :]
        tl.store(y_ptr + xy_off, y.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & p_mask[None, :])
        weighted = tl.trans(xd * tl.exp(lam_end - lam)[:, None])
        s = tl.exp(lam_end) * s + mm(weighted, b, DOT)
        if PLAIN:
            s_plain = tl.exp(lam_end) * s_plain + mm(weighted, b_plain, DOT)

    if WRITE_FINAL:
        store_state_cols(final_ptr, k, head, H, P, N, offs_p, 0, NR, s, True, NB)
        if PLAIN:
            store_state_cols(final_ptr, k, head, H, P, N, offs_p, NR, N - NR, s_plain, True, PB)
