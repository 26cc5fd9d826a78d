"""The registration helper and the RoPE op, against independent float64 math."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from conftest import REL_TOL, assert_close
from wmzoo.kernels import rope, rope_tables
from wmzoo.kernels.registry import reference_vjp, register_op


def _cube(x):
    return x.pow(3) * 2


def _cube_body(x: Tensor) -> Tensor:
    return _cube(x)


def _cube_bwd_body(grad: Tensor, x: Tensor) -> Tensor:
    return reference_vjp(_cube, [x], [grad])[0]


_cube_op = register_op("test_cube", _cube_body, fake=lambda x: torch.empty_like(x))
_cube_bwd = register_op("test_cube_bwd", _cube_bwd_body, fake=lambda g, x: torch.empty_like(x))
_cube_op.register_autograd(
    lambda ctx, g: _cube_bwd(g.contiguous(), ctx.saved_tensors[0]),
    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]),
)


def test_reference_vjp_records_inside_an_op_body():
    """Op bodies run below autograd; the reference backward must still see a graph."""
    x = torch.randn(7, dtype=torch.float64, requires_grad=True)
    _cube_op(x).sum().backward()
    assert_close(x.grad, 6 * x.detach() ** 2, torch.float64)
    torch.library.opcheck(_cube_bwd, (torch.randn(7), torch.randn(7)))


def rotate64(x, positions, r, theta=10000.0):
    """Rotate-half RoPE on the first r channels, pair (i, i + r/2) by angle pos * theta^(-2i/r)."""
    x = x.double().clone()
    out = x.clone()
    for i in range(r // 2):
        ang = positions.double() * theta ** (-2 * i / r)  # (b, t)
        c, s = ang.cos()[..., None], ang.sin()[..., None]
        a, b = x[..., i], x[..., i + r // 2]
        out[..., i] = a * c[..., 0] - b * s[..., 0]
        out[..., i + r // 2] = b * c[..., 0] + a * s[..., 0]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("r", [8, 6])
def test_rope_matches_float64_rotation(dtype, r):
    torch.manual_seed(0)
    pos = torch.randint(0, 5000, (2, 13))
    x = torch.randn(2, 13, 3, 8, dtype=dtype)
    cos, sin = rope_tables(pos, r)
    ref = rotate64(x, pos[..., None].expand(2, 13, 3), r)
    assert_close(rope(x, cos, sin), ref, dtype)


def test_rope_gradient_is_the_inverse_rotation_and_compiles():
    pos = torch.arange(11)[None]
    cos, sin = rope_tables(pos, 8)
    x = torch.randn(1, 11, 2, 8, requires_grad=True)
    g = torch.randn(1, 11, 2, 8)
    (rope(x, cos, sin) * g).sum().backward()
    # <R x, g> = <x, R^T g>, and R^T is the rotation by the negative angle
    assert_close(x.grad, rotate64(g, -pos[..., None].expand(1, 11, 2), 8), torch.float32)
    torch.library.opcheck(torch.ops.wmzoo.rope.default, (x.detach().requires_grad_(), cos, sin))
    f = torch.compile(lambda x: rope(x, cos, sin), fullgraph=True, dynamic=True)
    assert_close(f(x), rope(x, cos, sin), torch.float32)


def test_rope_is_relative():
    """<R(s) q, R(t) k> depends on t - s only."""
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def dot(s, t):
        cq, sq = rope_tables(torch.tensor([[s]]), 16)
        ck, sk = rope_tables(torch.tensor([[t]]), 16)
        return (rope(q, cq, sq) * rope(k, ck, sk)).sum()

    assert math.isclose(dot(3, 10), dot(1003, 1010), rel_tol=REL_TOL[torch.float32] * 10)


def test_rope_errors_name_the_argument():
    x = torch.randn(1, 4, 2, 8)
    cos, sin = rope_tables(torch.arange(4)[None], 10)
    with pytest.raises(ValueError, match="cos: rotated dim 2\\*5 exceeds the head dim d=8"):
        rope(x, cos, sin)
    with pytest.raises(TypeError, match="cos: expected dtype in \\(float32\\), got float16"):
        rope(x, cos.half(), sin)
