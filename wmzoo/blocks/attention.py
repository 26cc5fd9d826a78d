"""Plain causal softmax attention through SDPA: the paper's QCAttn baseline, with GQA, QK-norm,
RoPE, padding, packed sequences and a KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..context import as_context
from ..kernels.varlen import seq_idx_from_cu_seqlens
from ..specs import BlockSpec, block_spec
from .heads import QKVProjection, head_geometry


@block_spec
class Attention(BlockSpec):
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int = 64
    qk_norm: bool = False
    rope: bool = True

    is_mixer = True

    def build(self, d_model: int) -> nn.Module:
        return AttentionModule(self, d_model)


@dataclass
class KVCache:
    k: torch.Tensor  # (B, L, Hkv, D)
    v: torch.Tensor
    valid: torch.Tensor  # (B, L) bool: False for padded keys

    @property
    def length(self) -> int:
        return self.k.shape[1]


class AttentionModule(nn.Module):
    def __init__(self, spec: Attention, d_model: int):
        super().__init__()
        self.spec = spec
        h, hkv = head_geometry(d_model, spec.heads, spec.kv_heads, spec.head_dim)
        self.qkv = QKVProjection(d_model, h, hkv, spec.head_dim, spec.qk_norm, spec.rope)

    def init_state(self, batch: int, device=None, dtype=None) -> KVCache:
        q = self.qkv
        dtype = dtype or q.k.weight.dtype
        empty = torch.zeros(batch, 0, q.hkv, q.d, device=device, dtype=dtype)
        return KVCache(empty, empty.clone(), torch.zeros(batch, 0, dtype=torch.bool, device=device))

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        ctx = as_context(ctx)
        b, t, _ = x.shape
        q, k, v = self.qkv(x, ctx)
        keep = ctx.padding(x)
        cache: KVCache | None = ctx.state
        past = 0
        if cache is not None:
            past = cache.length
            new_valid = keep if keep is not None else torch.ones(b, t, dtype=torch.bool, device=x.device)
            cache.k, cache.v = torch.cat([cache.k, k], 1), torch.cat([cache.v, v], 1)
            cache.valid = torch.cat([cache.valid, new_valid], 1)
            k, v, keep = cache.k, cache.v, cache.valid
        L = k.shape[1]
        mask = None
        if keep is not None or ctx.cu_seqlens is not None or past:
            qi = torch.arange(t, device=x.device)[:, None] + past
            kj = torch.arange(L, device=x.device)[None, :]
            mask = (kj <= qi)[None]  # (1, T, L) causal
            if ctx.cu_seqlens is not None:
                seq = seq_idx_from_cu_seqlens(ctx.cu_seqlens, t)
                mask = mask & (seq[:, None] == seq[None, :])[None]
            if keep is not None:
                mask = mask & keep[:, None, :]
            # Every query sees itself, so a padded query's row is never empty (no NaN that
            # later layers would mix in through zero attention weights).
            mask = mask | (kj == qi)[None]
            mask = mask[:, None]  # (B or 1, 1, T, L)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=mask, is_causal=mask is None, enable_gqa=self.qkv.h != self.qkv.hkv,
        )
        return self.qkv.o(o.transpose(1, 2).reshape(b, t, -1))
