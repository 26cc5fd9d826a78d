"""RoPE, rotate-half convention, in plain PyTorch: the spec (wonderful-matrices.md, section 1)."""

from __future__ import annotations

import torch


def rope_inv_freq(rope_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """inv_freq_i = theta^(-2i/rope_dim), i < rope_dim/2, fp32."""
    return theta ** (-torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim).float()


def rope_tables(positions: torch.Tensor, rope_dim: int, theta: float = 10000.0):
    """cos, sin of shape positions.shape + (rope_dim // 2,), fp32, from integer positions."""
    inv_freq = rope_inv_freq(rope_dim, theta).to(positions.device)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    return angles.cos(), angles.sin()


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` channels of x (b, t, h, d) by the tables.

    cos, sin: (b, t, r/2) or (t, r/2), fp32. Pairs are (i, i + r/2) within the rotated prefix;
    channels past r pass through. Computed in fp32 (fp64 for fp64 x), returned in x's dtype.
    """
    half = cos.shape[-1]
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    x1, x2, rest = xf[..., :half], xf[..., half : 2 * half], xf[..., 2 * half :]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)
    return out.to(x.dtype)
