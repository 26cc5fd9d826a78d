"""The SSD forward with RoPE on part of n: the rotated and the plain channels as two tiles.

The same recurrence as triton_fwd (read its docstring), for RoPE dims r < n. There every B / C
tile covers all n channels and the rotation runs over the whole tile (masked past r); here the
channels are cut at r: the rotated part (Q, RB) goes through ``load_rotated`` and the plain
part (Q, PB) goes from its load straight into the products, as without RoPE. The state is cut
the same way (S = [S_rot | S_plain]) and every product over n is a sum of the two parts':
    C~ . B~ = C~_rot . B~_rot + C_plain . B_plain,   S C~ = S_rot C~_rot + S_plain C_plain.
Why: on the GPU any elementwise step between a tile's load and its products costs the forward
about as much as the products (ssd.md run 14, 15: the rotation's arithmetic with constants on
B and C takes the forward from 0.42 to 0.74 ms before a byte is added), and here it runs on the
r rotated channels only. The backend takes this kernel when both parts' padded widths fit in
the single tile's (r <= n / 2 at n 128), so no product grows.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..autotune import autotuned
from .triton_common import (
    chunk_decays,
    configs,
    load_cols,
    load_rotated,
    load_state_cols,
    mm,
    program_chunks,
    store_state_cols,
)

# The autotune key: tile shapes and modes, never lengths (triton_common.TILE_KEY's rule).
SPLIT_TILE_KEY = ["P", "N", "Q", "BLOCK_P", "RB", "PB", "DOT"]


# The configs of triton_fwd's kernel, first the one deterministic mode pins (one stage).
@autotuned(configs(((8, 1), (4, 2), (8, 2), (4, 3))), key=SPLIT_TILE_KEY + ["WRITE_FINAL"])
@triton.jit
def _ssd_fwd_split_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, cu_ptr, cos_ptr, sin_ptr,
    y_ptr, final_ptr,
    T, H, G, P, N, HALF, SEGS,
    HAS_D: tl.constexpr, HAS_H0: tl.constexpr, HAS_CU: tl.constexpr, WRITE_FINAL: tl.constexpr,
    Q: tl.constexpr, BLOCK_P: tl.constexpr, RB: tl.constexpr, PB: tl.constexpr, DOT: tl.constexpr,
):
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
    R = 2 * HALF  # rotated channels [0, R), plain ones [R, N)
    s_rot = load_state_cols(h0_ptr, k, head, H, P, N, offs_p, 0, R, HAS_H0, BLOCK_P, RB)
    s_plain = load_state_cols(h0_ptr, k, head, H, P, N, offs_p, R, N - R, HAS_H0, BLOCK_P, PB)
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
        # load_rotated over "n = R" is the rotated part: channel i < HALF pairs with i + HALF.
        b_rot = load_rotated(Bg, G * N, rows, row_mask, cos_ptr, sin_ptr, R, HALF, RB, True)
        c_rot = load_rotated(Cg, G * N, rows, row_mask, cos_ptr, sin_ptr, R, HALF, RB, True)
        b_plain = load_cols(Bg, G * N, rows, row_mask, R, N - R, PB)
        c_plain = load_cols(Cg, G * N, rows, row_mask, R, N - R, PB)
        scores = mm(c_rot, tl.trans(b_rot), DOT) + mm(c_plain, tl.trans(b_plain), DOT)
        inter = mm(c_rot, tl.trans(s_rot), DOT) + mm(c_plain, tl.trans(s_plain), DOT)
        # The mask goes in before exp: above the diagonal Lam_t - Lam_s > 0 could overflow.
        decay = tl.exp(tl.where(causal, lam[:, None] - lam[None, :], float("-inf")))
        y = mm(scores * decay, xd, DOT) + tl.exp(lam)[:, None] * inter
        if HAS_D:
            y += skip * x
        xy_off = (rows[:, None] * H + head) * P + offs_p[None, :]
        tl.store(y_ptr + xy_off, y.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & p_mask[None, :])
        weighted = tl.trans(xd * tl.exp(lam_end - lam)[:, None])
        s_rot = tl.exp(lam_end) * s_rot + mm(weighted, b_rot, DOT)
        s_plain = tl.exp(lam_end) * s_plain + mm(weighted, b_plain, DOT)

    if WRITE_FINAL:
        store_state_cols(final_ptr, k, head, H, P, N, offs_p, 0, R, s_rot, True, RB)
        store_state_cols(final_ptr, k, head, H, P, N, offs_p, R, N - R, s_plain, True, PB)
