"""Shared pieces of the attention-style mixers: head geometry, q/k/v projections, QK-norm and
RoPE, and the large negative bias that removes padded keys."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.checks import check_divides
from ..kernels.rope import rope
from .norm import RMSNorm, init_normal_

# Bias of padded keys: finite, so a query with only padded keys stays NaN-free, and far enough
# below any real logit that exp() underflows to exactly 0 in the kernels' fp32 softmax.
PAD_BIAS = -1e9


def head_geometry(d_model: int, heads: int | None, kv_heads: int | None, head_dim: int):
    if heads is None:
        check_divides("head_dim", head_dim, "d_model", d_model)
        heads = d_model // head_dim
    kv_heads = kv_heads or heads
    check_divides("kv_heads", kv_heads, "heads", heads)
    return heads, kv_heads


class QKVProjection(nn.Module):
    """q (B,T,H,D), k and v (B,T,Hkv,D), optional per-head RMSNorm on q and k, RoPE on q and k."""

    def __init__(self, d_model: int, heads: int, kv_heads: int, head_dim: int, qk_norm: bool, use_rope: bool):
        super().__init__()
        self.h, self.hkv, self.d = heads, kv_heads, head_dim
        self.use_rope = use_rope
        self.q = nn.Linear(d_model, heads * head_dim, bias=False)
        self.k = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.v = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.o = nn.Linear(heads * head_dim, d_model, bias=False)
        self.q_norm = RMSNorm(head_dim) if qk_norm else None
        self.k_norm = RMSNorm(head_dim) if qk_norm else None
        init_normal_(self)

    def forward(self, x: torch.Tensor, ctx):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.d)
        k = self.k(x).view(b, t, self.hkv, self.d)
        v = self.v(x).view(b, t, self.hkv, self.d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            cos, sin = ctx.rope(x, self.d)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        return q, k, v
