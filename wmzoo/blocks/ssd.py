"""The SSD mixer (Mamba2 state space duality) with RoPE on B and C (wonderful-matrices.md, 2).

Cheems' SSD has no conv1d, z gate, D or gated norm, G = H and N = P; each is an option here so
the same block also serves as a plain Mamba2 mixer (``SSD(conv1d=True, gate=True, skip=True,
gated_norm=True, groups=1, expand=2)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..context import as_context
from ..kernels.checks import check_divides, check_power_of_two
from ..kernels.ssd import ssd, ssd_step
from ..specs import BlockSpec, block_spec
from .conv import CausalConv1d
from .norm import RMSNorm, init_normal_


@block_spec
class SSD(BlockSpec):
    heads: int | None = None  # default: d_model * expand // head_dim
    head_dim: int = 64  # P
    state_dim: int | None = None  # N, default head_dim
    groups: int | None = None  # G, default heads (per-head B and C, as Cheems)
    expand: int = 1
    chunk_size: int = 64
    rope: bool = True
    rope_dim: int | None = None  # rotated prefix of N, default N
    conv1d: bool = False
    conv_kernel: int = 4
    gate: bool = False
    skip: bool = False
    gated_norm: bool = False
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    a_init_range: tuple[float, float] = (1.0, 16.0)

    is_mixer = True

    def build(self, d_model: int) -> nn.Module:
        return SSDModule(self, d_model)


@dataclass
class SSDState:
    ssm: torch.Tensor  # (B, H, P, N) fp32
    conv: torch.Tensor | None = None  # (B, k-1, conv channels)


class SSDModule(nn.Module):
    def __init__(self, spec: SSD, d_model: int):
        super().__init__()
        self.spec = spec
        inner = d_model * spec.expand
        if spec.heads is None:
            check_divides("head_dim", spec.head_dim, "d_model * expand", inner)
        self.heads = h = spec.heads or inner // spec.head_dim
        self.p = spec.head_dim
        self.n = n = spec.state_dim or spec.head_dim
        self.g = g = spec.groups or h
        check_divides("groups", g, "heads", h)
        check_power_of_two("chunk_size", spec.chunk_size)
        self.rope_dim = spec.rope_dim or n
        if spec.rope and (self.rope_dim % 2 or self.rope_dim > n):
            raise ValueError(f"rope_dim: expected an even number <= state_dim={n}, got {self.rope_dim}")
        self.d_inner = h * self.p
        self.xbc = self.d_inner + 2 * g * n
        self.in_proj = nn.Linear(d_model, (self.d_inner if spec.gate else 0) + self.xbc + h, bias=False)
        self.conv = CausalConv1d(self.xbc, spec.conv_kernel) if spec.conv1d else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.norm = RMSNorm(self.d_inner) if spec.gated_norm else None
        init_normal_(self)
        # Mamba2 init: A = -exp(A_log), A_log = log(uniform[a, b]); softplus(dt_bias)
        # log-uniform in [dt_min, dt_max].
        lo, hi = spec.a_init_range
        self.A_log = nn.Parameter(torch.empty(h).uniform_(lo, hi).log())
        dt = torch.exp(torch.rand(h) * (math.log(spec.dt_max) - math.log(spec.dt_min)) + math.log(spec.dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.D = nn.Parameter(torch.ones(h)) if spec.skip else None

    def init_state(self, batch: int, device=None, dtype=None) -> SSDState:
        conv = None
        if self.conv is not None:
            conv = torch.zeros(batch, self.spec.conv_kernel - 1, self.xbc, device=device, dtype=dtype)
        return SSDState(torch.zeros(batch, self.heads, self.p, self.n, device=device), conv)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        ctx = as_context(ctx)
        b, t, _ = x.shape
        h, p, g, n = self.heads, self.p, self.g, self.n
        proj = self.in_proj(x)
        z = None
        if self.spec.gate:
            z, proj = proj.split([self.d_inner, self.xbc + h], dim=-1)
        xbc, dt = proj.split([self.xbc, h], dim=-1)
        keep = ctx.padding(x)
        state: SSDState | None = ctx.state
        if self.conv is not None:
            if keep is not None:
                xbc = xbc * keep[..., None].to(xbc.dtype)
            xbc, past = self.conv(xbc, None if state is None else state.conv, ctx.cu_seqlens)
            xbc = F.silu(xbc)
            if state is not None:
                state.conv = past
        xs, Bm, Cm = xbc.split([self.d_inner, g * n, g * n], dim=-1)
        xs = xs.reshape(b, t, h, p)
        Bm, Cm = Bm.reshape(b, t, g, n), Cm.reshape(b, t, g, n)
        dt = F.softplus(dt.float() + self.dt_bias.float())
        if keep is not None:  # padded tokens must not enter the state
            dt = dt * keep[..., None].to(dt.dtype)
        A = -torch.exp(self.A_log.float())
        cos = sin = None
        if self.spec.rope:
            cos, sin = ctx.rope(x, self.rope_dim)
        D = None if self.D is None else self.D.float()
        if state is None:
            y = ssd(xs, dt, A, Bm, Cm, D=D, chunk_size=self.spec.chunk_size,
                    cu_seqlens=ctx.cu_seqlens, rope_cos=cos, rope_sin=sin)
        elif t == 1:
            y, state.ssm = ssd_step(state.ssm, xs[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], D=D,
                                    rope_cos=None if cos is None else cos[:, 0],
                                    rope_sin=None if sin is None else sin[:, 0])
            y = y[:, None]
        else:
            y, state.ssm = ssd(xs, dt, A, Bm, Cm, D=D, chunk_size=self.spec.chunk_size,
                               initial_state=state.ssm, return_final_state=True,
                               rope_cos=cos, rope_sin=sin)
        y = y.reshape(b, t, self.d_inner)
        if z is not None:
            y = y * F.silu(z)
        if self.norm is not None:
            y = self.norm(y)
        return self.out_proj(y)
