"""Fused single-neuron expert mixture, forward and backward, without an (n, k, d) tensor.

Forward, token-major: a program owns a few tokens with their whole d row in registers and
walks their k expert ids a few at a time: gather the down rows, h = x . down, SiLU, weight,
gather the up rows, accumulate.

Backward, expert-major then token-major, deterministic: the (token, slot) pairs are sorted
by expert id; one program per expert reads its down/up rows once and, over its pairs in that
fixed order, computes d(weights) and dh per pair and sums d(down)[e], d(up)[e] with no
atomics; then dx[t] = sum_j dh[t, j] down[e_j] token by token. At the issue's shape this ran
2.4x faster than atomically adding the table gradients from a token-major pass
(docs/benchmarks/NOTES.md), so there is no separate non-deterministic mode.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..registry import Unsupported, launch

# Elements of one gathered (rows, d) tile per program, forward and backward, and warps per
# program: the best of a sweep at the shape (docs/benchmarks/NOTES.md).
TILE = 4096
BWD_TILE = 2048
NUM_WARPS = 4
MAX_D = 16384


@triton.jit
def _experts_fwd_kernel(
    x_ptr, idx_ptr, w_ptr, down_ptr, up_ptr, out_ptr, n, d, K,
    BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < n
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < d
    row_mask = t_ok[:, None] & d_ok[None, :]
    x = tl.load(x_ptr + t[:, None] * d + dd[None, :], mask=row_mask, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for j0 in range(0, K, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        pair_ok = t_ok[:, None] & (j < K)[None, :]
        e = tl.load(idx_ptr + t[:, None] * K + j[None, :], mask=pair_ok, other=0)
        g = tl.load(w_ptr + t[:, None] * K + j[None, :], mask=pair_ok, other=0.0).to(tl.float32)
        rows = e[:, :, None] * d + dd[None, None, :]
        gather_ok = pair_ok[:, :, None] & d_ok[None, None, :]
        down = tl.load(down_ptr + rows, mask=gather_ok, other=0.0).to(tl.float32)
        up = tl.load(up_ptr + rows, mask=gather_ok, other=0.0).to(tl.float32)
        h = tl.sum(down * x[:, None, :], axis=2)
        act = h * tl.sigmoid(h) * g
        acc += tl.sum(act[:, :, None] * up, axis=1)
    tl.store(out_ptr + t[:, None] * d + dd[None, :], acc.to(out_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _experts_bwd_by_expert_kernel(
    grad_ptr, x_ptr, w_ptr, down_ptr, up_ptr, order_ptr, offsets_ptr,
    dw_ptr, dh_ptr, d_down_ptr, d_up_ptr, d, K,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per expert e: its down/up rows are read once, then its (token, slot) pairs
    in sorted order give d(weights) and dh per pair and d(down)[e], d(up)[e] as plain sums
    (no atomics, a fixed order: deterministic)."""
    e = tl.program_id(0)
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < d
    start = tl.load(offsets_ptr + e)
    end = tl.load(offsets_ptr + e + 1)
    used = d_ok & (end > start)  # an unpicked expert reads nothing and writes zeros
    down = tl.load(down_ptr + e * d + dd, mask=used, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + e * d + dd, mask=used, other=0.0).to(tl.float32)
    acc_down = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < end
        pair = tl.load(order_ptr + p, mask=p_ok, other=0)
        t = pair // K
        row_ok = p_ok[:, None] & d_ok[None, :]
        xr = tl.load(x_ptr + t[:, None] * d + dd[None, :], mask=row_ok, other=0.0).to(tl.float32)
        gr = tl.load(grad_ptr + t[:, None] * d + dd[None, :], mask=row_ok, other=0.0).to(tl.float32)
        g = tl.load(w_ptr + pair, mask=p_ok, other=0.0).to(tl.float32)
        h = tl.sum(xr * down[None, :], axis=1)
        sig = tl.sigmoid(h)
        act = h * sig
        g_up = tl.sum(gr * up[None, :], axis=1)
        tl.store(dw_ptr + pair, (act * g_up).to(dw_ptr.dtype.element_ty), mask=p_ok)
        dh = g * g_up * sig * (1.0 + h * (1.0 - sig))
        tl.store(dh_ptr + pair, dh, mask=p_ok)
        acc_down += tl.sum(dh[:, None] * xr, axis=0)
        acc_up += tl.sum((act * g)[:, None] * gr, axis=0)
    tl.store(d_down_ptr + e * d + dd, acc_down.to(d_down_ptr.dtype.element_ty), mask=d_ok)
    tl.store(d_up_ptr + e * d + dd, acc_up.to(d_up_ptr.dtype.element_ty), mask=d_ok)


@triton.jit
def _experts_dx_kernel(
    dh_ptr, idx_ptr, down_ptr, dx_ptr, n, d, K,
    BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dx[t] = sum_j dh[t, j] down[e_j], token-major: each token writes only its own row."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < n
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < d
    dx = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for j0 in range(0, K, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        pair_ok = t_ok[:, None] & (j < K)[None, :]
        pair = t[:, None] * K + j[None, :]
        e = tl.load(idx_ptr + pair, mask=pair_ok, other=0)
        dh = tl.load(dh_ptr + pair, mask=pair_ok, other=0.0)
        gather_ok = pair_ok[:, :, None] & d_ok[None, None, :]
        down = tl.load(down_ptr + e[:, :, None] * d + dd[None, None, :], mask=gather_ok, other=0.0).to(tl.float32)
        dx += tl.sum(dh[:, :, None] * down, axis=1)
    tl.store(dx_ptr + t[:, None] * d + dd[None, :], dx.to(dx_ptr.dtype.element_ty), mask=t_ok[:, None] & d_ok[None, :])


def _blocks(d: int, k: int, tile: int) -> tuple[int, int, int]:
    """(tokens, experts, d) tile: the whole padded d row, as many experts and then tokens
    as fit in ``tile`` elements, so that several gathered rows are in flight per program."""
    if d > MAX_D:
        raise Unsupported(f"d={d} exceeds {MAX_D} (one row per program in registers)")
    block_d = triton.next_power_of_2(d)
    block_j = min(triton.next_power_of_2(k), max(1, tile // block_d))
    block_t = min(16, max(1, tile // (block_d * block_j)))
    return block_t, block_j, block_d


def _check(x: Tensor) -> None:
    if x.dtype == torch.float64:
        raise Unsupported("float64 runs on the reference")


def cdmoe_experts_triton(x: Tensor, indices: Tensor, weights: Tensor, down: Tensor, up: Tensor) -> Tensor:
    _check(x)
    n, d = x.shape
    k = indices.shape[1]
    bt, bj, bd = _blocks(d, k, TILE)
    out = torch.empty_like(x)
    launch(_experts_fwd_kernel)[(triton.cdiv(n, bt),)](
        x, indices, weights, down, up, out, n, d, k, BLOCK_T=bt, BLOCK_J=bj, BLOCK_D=bd, num_warps=NUM_WARPS
    )
    return out


def cdmoe_experts_backward_triton(
    grad: Tensor, x: Tensor, indices: Tensor, weights: Tensor, down: Tensor, up: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check(x)
    n, d = x.shape
    k = indices.shape[1]
    N = down.shape[0]
    bt, bj, bd = _blocks(d, k, BWD_TILE)
    # pairs (token, slot) grouped by expert, each group in pair order: a fixed summation order
    sorted_ids, order = torch.sort(indices.reshape(-1), stable=True)
    offsets = torch.searchsorted(sorted_ids, torch.arange(N + 1, device=x.device))
    dx, dw = torch.empty_like(x), torch.empty_like(weights)
    dh = torch.empty(n, k, dtype=torch.float32, device=x.device)
    d_down, d_up = torch.empty_like(down), torch.empty_like(up)
    launch(_experts_bwd_by_expert_kernel)[(N,)](
        grad, x, weights, down, up, order, offsets, dw, dh, d_down, d_up, d, k,
        BLOCK_P=min(64, max(1, BWD_TILE // bd)), BLOCK_D=bd, num_warps=NUM_WARPS,
    )
    launch(_experts_dx_kernel)[(triton.cdiv(n, bt),)](
        dh, indices, down, dx, n, d, k, BLOCK_T=bt, BLOCK_J=bj, BLOCK_D=bd, num_warps=NUM_WARPS
    )
    return dx, dw, d_down, d_up
