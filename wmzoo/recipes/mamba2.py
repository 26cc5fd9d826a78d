"""Mamba2: SSD mixers only, with Mamba2's conv1d, z gate, D skip and gated norm, one B/C group,
expand 2, no RoPE. One such block has about 6 d^2 parameters, so 1.5x the size's layer count
keeps the totals near the size's name (Mamba2's own 370M model: d 1024, 48 layers)."""

from __future__ import annotations

from ..blocks import SSD
from .base import Recipe
from .sizes import get_size, vocab_for


def mamba2(size: str = "tiny") -> Recipe:
    s = get_size("mamba2", size)
    mixer = SSD(head_dim=64, state_dim=128, groups=1, expand=2, rope=False,
                conv1d=True, gate=True, skip=True, gated_norm=True, chunk_size=64 if size == "tiny" else 256)
    return Recipe("mamba2", size.lower(), s.d_model, (mixer,) * (3 * s.layers // 2), vocab_size=vocab_for(size))
