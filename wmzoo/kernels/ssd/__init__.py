"""SSD (Mamba2 state space duality) with fused RoPE on B and C: op, decode step, reference."""

from .op import ssd, ssd_step
from .reference import ssd_reference, ssd_step_reference

__all__ = ["ssd", "ssd_step", "ssd_reference", "ssd_step_reference"]
