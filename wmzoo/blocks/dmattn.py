"""Dynamic Mask Attention (wonderful-matrices.md, section 3).

The dynamic mask is one scalar per key and kv head, computed from the value states:
delta = softplus(W_dt v_flat), bias = A * delta (log form, default) or exp(A * delta) (the
paper-time form). A starts at 0, so the layer starts as plain causal attention. With
keep_window = w each query attends to the w causal keys of largest bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..context import as_context
from ..kernels.checks import check_positive
from ..kernels.dmattn import DMAttnCache, dmattn
from ..specs import BlockSpec, block_spec
from .heads import PAD_BIAS, QKVProjection, head_geometry
from .norm import init_normal_

BIAS_FORMS = ("log", "exp")


@block_spec
class DMAttn(BlockSpec):
    heads: int | None = None  # default d_model // head_dim
    kv_heads: int | None = None  # default heads
    head_dim: int = 64
    keep_window: int | None = None
    qk_norm: bool = False
    bias_form: str = "log"
    rope: bool = True

    is_mixer = True

    def build(self, d_model: int) -> nn.Module:
        return DMAttnModule(self, d_model)


class DMAttnModule(nn.Module):
    def __init__(self, spec: DMAttn, d_model: int):
        super().__init__()
        if spec.bias_form not in BIAS_FORMS:
            raise ValueError(f"bias_form: expected one of {BIAS_FORMS}, got {spec.bias_form!r}")
        check_positive("keep_window", spec.keep_window)
        self.spec = spec
        h, hkv = head_geometry(d_model, spec.heads, spec.kv_heads, spec.head_dim)
        self.qkv = QKVProjection(d_model, h, hkv, spec.head_dim, spec.qk_norm, spec.rope)
        self.dt_proj = nn.Linear(hkv * spec.head_dim, hkv, bias=True)
        init_normal_(self.dt_proj)
        self.A = nn.Parameter(torch.zeros(hkv))

    def key_bias(self, v: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, T) bias from the value states (B, T, Hkv, D)."""
        b, t = v.shape[:2]
        delta = F.softplus(self.dt_proj(v.reshape(b, t, -1)).float())
        bias = self.A.float() * delta
        if self.spec.bias_form == "exp":
            bias = torch.exp(bias)
        return bias.transpose(1, 2).to(v.dtype)

    def init_state(self, batch: int, device=None, dtype=None) -> DMAttnCache:
        q = self.qkv
        return DMAttnCache.empty(batch, q.hkv, q.d, keep_window=self.spec.keep_window,
                                 dtype=dtype or q.k.weight.dtype, device=device)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        ctx = as_context(ctx)
        b, t, _ = x.shape
        q, k, v = self.qkv(x, ctx)
        bias = self.key_bias(v)
        keep = ctx.padding(x)
        if keep is not None:
            bias = torch.where(keep[:, None, :], bias, torch.full_like(bias, PAD_BIAS))
        cache: DMAttnCache | None = ctx.state
        w = self.spec.keep_window
        if cache is None:
            o = dmattn(q, k, v, bias, keep_window=w, cu_seqlens=ctx.cu_seqlens)
        elif cache.length == 0 and t > 1:  # prefill: one kernel call, then keep what can return
            o = dmattn(q, k, v, bias, keep_window=w)
            cache.update(k, v, bias)
        else:  # decode, token by token (the cache is exact at every step)
            outs = []
            for i in range(t):
                cache.update(k[:, i : i + 1], v[:, i : i + 1], bias[:, :, i : i + 1])
                outs.append(cache.attend(q[:, i : i + 1]))
            o = torch.cat(outs, dim=1)
        return self.qkv.o(o.reshape(b, t, -1))
