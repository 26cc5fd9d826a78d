"""Brute-force DMAttn for the benchmark's correctness check: materialized T x T, fp32 math.

Independent of the kernels: the keep_window mask is built from explicit rank counts
(count of causal keys ranking above key j at query i < w), the tie rule written out.
"""

from __future__ import annotations

import torch


def rank_above(b1, i1, b2, i2):
    return (b1 > b2) | ((b1 == b2) & (i1 > i2))


def keep_mask(bias: torch.Tensor, w: int | None) -> torch.Tensor:
    """bias (..., t) -> (..., t, t) bool: query i keeps key j."""
    t = bias.shape[-1]
    j = torch.arange(t, device=bias.device)
    causal = j[None, :] <= j[:, None]
    if w is None:
        return causal.expand(*bias.shape[:-1], t, t)
    above = rank_above(bias[..., :, None], j[:, None], bias[..., None, :], j[None, :])  # [j', j]
    count = torch.cumsum(above.to(torch.int32), dim=-2)  # [i, j] = #{j' <= i above j}
    return causal & (count < w)


def bruteforce_dmattn(q, k, v, bias, w):
    """q (b,t,h,d), k, v (b,t,hkv,d), bias (b,hkv,t) -> o (b,t,h,d) in fp32."""
    g = q.shape[2] // k.shape[2]
    keep = keep_mask(bias.detach().float(), w).repeat_interleave(g, 1)
    s = torch.einsum("bihd,bjhd->bhij", q.float(), k.float().repeat_interleave(g, 2)) * q.shape[-1] ** -0.5
    s = s + bias.float().repeat_interleave(g, 1)[:, :, None, :]
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
    return torch.einsum("bhij,bjhd->bihd", p, v.float().repeat_interleave(g, 2))


def last_query_threshold(bias: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bias, position) of the w-th ranked key over the whole length (the newest query's threshold),
    from a total-order sort key: the bias's order-preserving integer image, then the position."""
    t = bias.shape[-1]
    bits = (bias.float() + 0.0).view(torch.int32).to(torch.int64)  # +0.0 folds -0.0 into +0.0
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = (ordered << 32) | torch.arange(t, device=bias.device)
    kth = key.topk(w, dim=-1).values[..., -1:]
    pos = kth & 0xFFFFFFFF
    return bias.gather(-1, pos), pos
