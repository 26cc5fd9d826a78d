"""Stack: builds independent layers from block specs and runs them under one context.

Each spec becomes one pre-norm residual sublayer with a learnable per-channel skip scale
(Cheems: ``h = s * h + block(RMSNorm(h))``, s initialised to 1). ``[SSD(), CDMoE()] * n``
builds 2n independent sublayers: specs are data, so repeating them repeats hyperparameters,
never weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks.norm import RMSNorm
from .blocks.rope import RoPE
from .context import Context, StackState, as_context
from .specs import BlockSpec


class Residual(nn.Module):
    """Pre-norm residual around one block, with Cheems' per-channel skip scale."""

    def __init__(self, spec: BlockSpec, d_model: int):
        super().__init__()
        self.spec = spec
        self.norm = RMSNorm(d_model)
        self.block = spec.build(d_model)
        self.skip = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return self.skip.to(x.dtype) * x + self.block(self.norm(x), ctx)

    def init_state(self, batch: int, device=None, dtype=None):
        init = getattr(self.block, "init_state", None)
        return None if init is None else init(batch, device=device, dtype=dtype)


class Stack(nn.Module):
    def __init__(self, specs: Sequence[BlockSpec], d_model: int, rope: RoPE = RoPE()):
        super().__init__()
        specs = list(specs)
        if not specs:
            raise ValueError("specs: expected at least one block spec, got an empty list")
        for i, s in enumerate(specs):
            if not isinstance(s, BlockSpec):
                raise TypeError(f"specs[{i}]: expected a block spec (e.g. SSD()), got {type(s).__name__}")
        if d_model < 1:
            raise ValueError(f"d_model: expected a positive integer, got {d_model}")
        self.specs = specs
        self.d_model = d_model
        self.rope = rope
        self.layers = nn.ModuleList(Residual(s, d_model) for s in specs)

    def init_state(self, batch: int, device=None, dtype=None) -> StackState:
        """Fresh decode state: per layer the block's own state (None for state transforms)."""
        return StackState([layer.init_state(batch, device=device, dtype=dtype) for layer in self.layers])

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected shape (batch, time, {self.d_model}), got {tuple(x.shape)}")
        ctx = as_context(ctx)
        ctx.begin_call()
        ctx.rope_theta, ctx.max_position = self.rope.theta, self.rope.max_position
        state = ctx.state
        if state is not None and not isinstance(state, StackState):
            raise TypeError(f"ctx.state: expected the StackState from Stack.init_state, got {type(state).__name__}")
        if state is not None and ctx.cu_seqlens is not None:
            raise ValueError("ctx: cu_seqlens (packed training batches) cannot be combined with a decode state")
        ctx.positions(x, offset=0 if state is None else state.offset)
        for i, layer in enumerate(self.layers):
            x = layer(x, ctx.for_block(None if state is None else state.layers[i]))
        if state is not None:
            state.offset += x.shape[1]
        return x

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, layers={len(self.layers)}"
