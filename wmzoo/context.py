"""The per-call context every block receives: positions, shared RoPE tables, padding, varlen,
decode state, and auxiliary losses (design.md, "One protocol for every block")."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .kernels.checks import check_cu_seqlens, check_tensor
from .kernels.rope import rope_tables
from .kernels.varlen import positions_from_cu_seqlens


@dataclass
class StackState:
    """Decode state of a whole Stack: one entry per layer (None for stateless blocks) and the
    number of tokens already consumed (the absolute position of the next token)."""

    layers: list[Any]
    offset: int = 0


@dataclass
class Context:
    """What a sequence mixer needs beyond x; state transforms ignore it.

    position_ids: (B, T) absolute positions (default: offset of the decode state + arange(T),
        or positions within each packed sequence when cu_seqlens is given).
    attention_mask: (B, T), 1/True for real tokens, 0/False for padding. Padded tokens are
        excluded from attention keys and from SSD state updates.
    cu_seqlens: (num_seqs + 1,) int32/int64 boundaries of packed sequences (batch must be 1).
    state: a StackState (for a Stack) or one block's own state (for a lone block).
    """

    position_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    state: Any = None
    aux_losses: list[torch.Tensor] = field(default_factory=list)
    rope_theta: float = 10000.0
    max_position: int | None = None
    _tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _derived_positions: bool = False

    def begin_call(self) -> None:
        """Forget what the previous forward derived (positions, tables, losses), so that one
        Context can be reused across decode steps without stale RoPE positions."""
        if self._derived_positions:
            self.position_ids, self._derived_positions = None, False
        self._tables.clear()
        self.aux_losses.clear()

    @property
    def aux_loss(self) -> torch.Tensor | float:
        """Sum of the auxiliary losses the blocks added during the last forward (0.0 if none)."""
        return sum(self.aux_losses) if self.aux_losses else 0.0

    def for_block(self, state: Any) -> Context:
        """A view for one block: its own state; positions, tables and losses shared."""
        return replace(self, state=state)

    def positions(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """(B, T) int64 positions of the tokens of x (B, T, d); validated once, cached."""
        if self.position_ids is None:
            b, t = x.shape[:2]
            if self.cu_seqlens is not None:
                check_cu_seqlens(self.cu_seqlens, b, t, x.device)
                pos = positions_from_cu_seqlens(self.cu_seqlens, t)[None]
            else:
                pos = (torch.arange(t, device=x.device) + offset)[None].expand(b, t)
            self.position_ids, self._derived_positions = pos, True
        check_tensor("position_ids", self.position_ids, shape=tuple(x.shape[:2]), device=x.device)
        return self.position_ids

    def rope(self, x: torch.Tensor, rope_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, T, rope_dim/2) fp32 for x's tokens: computed once per forward per dim."""
        if rope_dim not in self._tables:
            pos = self.positions(x)
            if self.max_position is not None and not torch.compiler.is_compiling():
                # A host sync, so eager only: traced graphs trust their positions.
                top = int(pos.max()) if pos.numel() else -1
                if top >= self.max_position:
                    raise ValueError(
                        f"position_ids: expected positions < max_position={self.max_position} "
                        f"(the RoPE table), got {top}"
                    )
            self._tables[rope_dim] = rope_tables(pos, rope_dim, self.rope_theta)
        return self._tables[rope_dim]

    def padding(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, T) bool mask of real tokens, or None when there is no padding."""
        if self.attention_mask is None:
            return None
        check_tensor("attention_mask", self.attention_mask, shape=tuple(x.shape[:2]), device=x.device)
        return self.attention_mask.bool()


def as_context(ctx: Context | None) -> Context:
    return Context() if ctx is None else ctx
