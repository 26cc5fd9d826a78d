"""RoPE settings shared by every block of a Stack: one table per forward, per rotated width."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoPE:
    theta: float = 10000.0
    max_position: int = 1 << 16  # positions at or past this raise a clear error (eager)
