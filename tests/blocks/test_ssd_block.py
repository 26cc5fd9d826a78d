"""The SSD block's wiring against a float64 recurrent Mamba2 written here from the spec."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from wmzoo import SSD, Context


def recurrent_block(m, x):
    """Mamba2 / Cheems SSD mixer, one token at a time, in float64, from the module's weights."""
    s = m.spec
    x = x.double()
    b, t, _ = x.shape
    h, p, g, n = m.heads, m.p, m.g, m.n
    proj = x @ m.in_proj.weight.double().T
    z = None
    if s.gate:
        z, proj = proj[..., : m.d_inner], proj[..., m.d_inner :]
    xbc, dt = proj[..., : m.xbc], proj[..., m.xbc :]
    if s.conv1d:
        w, k = m.conv.weight.double(), s.conv_kernel
        padded = torch.cat([xbc.new_zeros(b, k - 1, m.xbc), xbc], 1)
        xbc = F.silu(sum(padded[:, i : i + t] * w[:, i] for i in range(k)) + m.conv.bias.double())
    xs = xbc[..., : m.d_inner].reshape(b, t, h, p)
    Bm = xbc[..., m.d_inner : m.d_inner + g * n].reshape(b, t, g, n)
    Cm = xbc[..., m.d_inner + g * n :].reshape(b, t, g, n)
    if s.rope:
        r = m.rope_dim
        inv = 10000.0 ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)
        ang = torch.arange(t, dtype=torch.float64)[:, None] * inv  # (t, r/2)
        cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]

        def rot(v):
            a, c, rest = v[..., : r // 2], v[..., r // 2 : r], v[..., r:]
            return torch.cat([a * cos - c * sin, c * cos + a * sin, rest], -1)

        Bm, Cm = rot(Bm), rot(Cm)
    dt = F.softplus(dt + m.dt_bias.double())
    A = -torch.exp(m.A_log.double())
    state = x.new_zeros(b, h, p, n)
    ys = []
    for i in range(t):
        head_group = torch.arange(h) * g // h
        Bt, Ct = Bm[:, i, head_group], Cm[:, i, head_group]  # (b, h, n)
        decay = torch.exp(dt[:, i] * A)[..., None, None]
        state = decay * state + (dt[:, i, :, None] * xs[:, i])[..., None] * Bt[:, :, None, :]
        y = (state * Ct[:, :, None, :]).sum(-1)
        if s.skip:
            y = y + m.D.double()[:, None] * xs[:, i]
        ys.append(y)
    y = torch.stack(ys, 1).reshape(b, t, m.d_inner)
    if z is not None:
        y = y * F.silu(z)
    if s.gated_norm:
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * m.norm.weight.double()
    return y @ m.out_proj.weight.double().T


@pytest.mark.parametrize(
    "spec",
    [
        SSD(head_dim=16, chunk_size=16),  # Cheems: per-head B/C, RoPE, nothing else
        SSD(head_dim=16, rope=False, chunk_size=16),
        SSD(head_dim=16, state_dim=24, rope_dim=8, groups=2, chunk_size=8),
        SSD(head_dim=16, expand=2, groups=1, conv1d=True, gate=True, skip=True, gated_norm=True, chunk_size=16),
    ],
)
@pytest.mark.parametrize("t", [1, 37])
def test_ssd_block_matches_recurrent_mamba2(spec, t):
    torch.manual_seed(0)
    m = spec.build(64)
    x = torch.randn(2, t, 64)
    assert_close(m(x), recurrent_block(m, x), torch.float32, f"{spec}")


def test_ssd_block_decode_and_conv_state():
    torch.manual_seed(1)
    m = SSD(head_dim=16, expand=2, conv1d=True, gate=True, chunk_size=16).build(64)
    x = torch.randn(3, 20, 64)
    full = m(x)
    state = m.init_state(3)
    steps = []
    for i in range(20):
        ctx = Context(state=state, position_ids=torch.full((3, 1), i))
        steps.append(m(x[:, i : i + 1], ctx))
    assert_close(torch.cat(steps, 1), full, torch.float32)


def test_rope_dim_must_fit_state():
    with pytest.raises(ValueError, match="rope_dim: expected an even number <= state_dim=16, got 18"):
        SSD(head_dim=16, rope_dim=18).build(64)
