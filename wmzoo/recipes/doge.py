"""Doge: Cheems' attention-only sibling, DMAttn in every layer with a CDMoE feed-forward."""

from __future__ import annotations

from ..blocks import DMAttn
from .base import Recipe
from .cheems import CDMOE
from .sizes import get_size, vocab_for


def doge(size: str = "tiny") -> Recipe:
    s = get_size("doge", size)
    layer = [DMAttn(heads=s.heads, kv_heads=s.kv_heads, head_dim=s.head_dim), CDMOE[size.lower()]]
    return Recipe("doge", size.lower(), s.d_model, tuple(layer * s.layers), vocab_size=vocab_for(size))
