"""Functional ops, layout (batch, time, heads, dim). Each family: reference, kernels, op."""

from .rope import rope, rope_tables

__all__ = ["rope", "rope_tables"]
