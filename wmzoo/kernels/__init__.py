"""Functional ops, layout (batch, time, heads, dim). Each family: reference, kernels, op."""

from .cdmoe import cdmoe_experts, product_key_topk
from .dmattn import DMAttnCache, dmattn
from .rope import rope, rope_tables
from .ssd import ssd, ssd_step

__all__ = ["ssd", "ssd_step", "dmattn", "DMAttnCache", "cdmoe_experts", "product_key_topk", "rope", "rope_tables"]
