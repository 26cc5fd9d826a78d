"""RoPE as a torch.library op. Its backward is the inverse rotation, so it is its own kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import FLOAT_DTYPES, check_tensor
from ..registry import register_op
from .reference import rope_reference


def _rope_body(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return rope_reference(x, cos, sin)


def _rope_fake(x, cos, sin):
    return torch.empty_like(x)


_rope_op = register_op("rope", _rope_body, fake=_rope_fake)


def _setup_context(ctx, inputs, output):
    _, cos, sin = inputs
    ctx.save_for_backward(cos, sin)


def _backward(ctx, grad):
    cos, sin = ctx.saved_tensors
    # R(theta)^T = R(-theta): the gradient is the gradient rotated back.
    return _rope_op(grad.contiguous(), cos, -sin), None, None


_rope_op.register_autograd(_backward, setup_context=_setup_context)


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply RoPE to x (b, t, h, d) with fp32 tables cos, sin of shape (b, t, r/2) or (t, r/2).

    The first r = 2 * cos.shape[-1] channels are rotated (rotate-half pairs (i, i + r/2)),
    the rest pass through; r <= d.
    """
    check_tensor("x", x, ndim=4, dtypes=FLOAT_DTYPES)
    b, t, _, d = x.shape
    lead = (b, t) if cos.ndim == 3 else (t,)
    check_tensor("cos", cos, shape=(*lead, None), dtypes=(torch.float32,), device=x.device)
    check_tensor("sin", sin, shape=tuple(cos.shape), dtypes=(torch.float32,), device=x.device)
    if 2 * cos.shape[-1] > d:
        raise ValueError(f"cos: rotated dim 2*{cos.shape[-1]} exceeds the head dim d={d} of x")
    return _rope_op(x, cos, sin)
