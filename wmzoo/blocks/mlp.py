"""Gated SiLU MLP: W_down(silu(W_gate x) * W_up x). A state transform: the context is ignored."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..specs import BlockSpec, block_spec
from .norm import init_normal_


def default_hidden(d_model: int) -> int:
    """8/3 d rounded up to a multiple of 64: the usual gated-MLP width at 4d-MLP cost."""
    return -(-(8 * d_model // 3) // 64) * 64


@block_spec
class MLP(BlockSpec):
    hidden: int | None = None

    def build(self, d_model: int) -> nn.Module:
        return MLPModule(d_model, self.hidden or default_hidden(d_model))


class MLPModule(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        init_normal_(self)

    def forward(self, x, ctx=None):
        return self.down(F.silu(self.gate(x)) * self.up(x))
