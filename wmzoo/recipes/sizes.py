"""The sizes every recipe comes in: Doge's published shapes (wonderful-matrices.md, section 5)
and a `tiny` one that trains on two CPU cores in minutes."""

from __future__ import annotations

from .base import ModelSize

SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(d_model=128, layers=8, heads=2, kv_heads=1, head_dim=64),
    "20m": ModelSize(d_model=256, layers=8, heads=2, kv_heads=1, head_dim=128),
    "60m": ModelSize(d_model=512, layers=16, heads=4, kv_heads=2, head_dim=128),
    "160m": ModelSize(d_model=768, layers=24, heads=6, kv_heads=3, head_dim=128),
    "320m": ModelSize(d_model=1024, layers=32, heads=8, kv_heads=4, head_dim=128),
}

# tiny trains on bytes; the others are sized for a 32768-token BPE vocabulary.
VOCAB = {"tiny": 257}
DEFAULT_VOCAB = 32768


def get_size(recipe: str, size: str) -> ModelSize:
    key = size.lower()
    if key not in SIZES:
        raise ValueError(f"size: expected one of {list(SIZES)} for recipe {recipe!r}, got {size!r}")
    return SIZES[key]


def vocab_for(size: str) -> int:
    return VOCAB.get(size.lower(), DEFAULT_VOCAB)
