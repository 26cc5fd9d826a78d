"""Plain causal linear attention: the MQAR grid's linear-attention baseline.

y_t = sum_{s<=t} (phi(q_t) . phi(k_s)) v_s / (sum_{s<=t} phi(q_t) . phi(k_s) + eps), with the
feature map phi(x) = elu(x) + 1 (positive, so the normaliser never vanishes). No RoPE and no
decay: the fixed-size state (H x D x D) is what MQAR measures against attention's growing one.
A block spec like the library's own, so it drops into a Stack: ``LinearAttention(head_dim=64)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks.heads import QKVProjection, head_geometry
from ..context import as_context
from ..kernels.checks import check_power_of_two
from ..specs import BlockSpec, block_spec


@block_spec
class LinearAttention(BlockSpec):
    heads: int | None = None  # default d_model // head_dim
    head_dim: int = 64
    chunk_size: int = 64
    eps: float = 1e-6

    is_mixer = True

    def build(self, d_model: int) -> nn.Module:
        return LinearAttentionModule(self, d_model)


def feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1


def causal_linear_attention(q, k, v, chunk_size: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """q, k, v (B, T, H, D) -> (B, T, H, D); phi already applied to q and k. fp32 (or fp64) inside.

    Chunked so memory is O(T * chunk) rather than O(T^2): a masked quadratic term inside each
    chunk plus the running (H, D, D) state and (H, D) normaliser of all earlier chunks.
    """
    b, t, h, _ = q.shape
    out_dtype = v.dtype
    acc = torch.promote_types(v.dtype, torch.float32)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    c = chunk_size
    pad = -t % c
    if pad:  # padded keys sit after every real query, so causality keeps them out
        q, k, v = (F.pad(z, (0, 0, 0, 0, 0, pad)) for z in (q, k, v))
    n = (t + pad) // c
    q, k, v = (z.reshape(b, n, c, h, z.shape[-1]) for z in (q, k, v))
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    scores = torch.einsum("bnihd,bnjhd->bnhij", q, k).masked_fill(~causal, 0.0)
    num = torch.einsum("bnhij,bnjhe->bnihe", scores, v)
    den = scores.sum(-1).transpose(2, 3)  # (b, n, c, h)
    state = torch.einsum("bnjhd,bnjhe->bnhde", k, v)
    norm = k.sum(2)  # (b, n, h, d)
    state_before = state.cumsum(1) - state  # exclusive prefix: chunks strictly earlier
    norm_before = norm.cumsum(1) - norm
    num = num + torch.einsum("bnihd,bnhde->bnihe", q, state_before)
    den = den + torch.einsum("bnihd,bnhd->bnih", q, norm_before)
    y = num / (den[..., None] + eps)
    return y.reshape(b, n * c, h, -1)[:, :t].to(out_dtype)


class LinearAttentionModule(nn.Module):
    def __init__(self, spec: LinearAttention, d_model: int):
        super().__init__()
        check_power_of_two("chunk_size", spec.chunk_size)
        self.spec = spec
        h, _ = head_geometry(d_model, spec.heads, None, spec.head_dim)
        self.qkv = QKVProjection(d_model, h, h, spec.head_dim, qk_norm=False, use_rope=False)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        ctx = as_context(ctx)
        if ctx.state is not None or ctx.cu_seqlens is not None:
            raise ValueError(
                "ctx: LinearAttention (an experiment baseline) supports neither a decode state nor "
                "cu_seqlens; got "
                f"state={type(ctx.state).__name__}, cu_seqlens={'set' if ctx.cu_seqlens is not None else None}"
            )
        b, t, _ = x.shape
        q, k, v = self.qkv(x, ctx)
        q, k = feature_map(q), feature_map(k)
        keep = ctx.padding(x)
        if keep is not None:  # padded tokens contribute no key and no value
            k = k * keep[:, :, None, None].to(k.dtype)
            v = v * keep[:, :, None, None].to(v.dtype)
        y = causal_linear_attention(q, k, v, self.spec.chunk_size, self.spec.eps)
        return self.qkv.o(y.reshape(b, t, -1))
