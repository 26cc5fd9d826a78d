"""RoPE shared by attention and SSD (rotate-half convention)."""

from .op import rope
from .reference import rope_inv_freq, rope_reference, rope_tables

__all__ = ["rope", "rope_reference", "rope_tables", "rope_inv_freq"]
