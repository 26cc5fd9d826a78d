"""Llama-like baseline: softmax attention (GQA, RoPE) and a gated MLP in every layer."""

from __future__ import annotations

from ..blocks import MLP, Attention
from .base import Recipe
from .sizes import get_size, vocab_for


def llama(size: str = "tiny") -> Recipe:
    s = get_size("llama", size)
    layer = [Attention(heads=s.heads, kv_heads=s.kv_heads, head_dim=s.head_dim), MLP()]
    return Recipe("llama", size.lower(), s.d_model, tuple(layer * s.layers), vocab_size=vocab_for(size))
