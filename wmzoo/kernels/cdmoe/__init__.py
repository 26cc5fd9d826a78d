"""Cross Domain MoE ops: product-key retrieval and the single-neuron expert mixture."""

from .op import cdmoe_experts, product_key_topk, sqrt_experts
from .reference import cdmoe_experts_reference, product_key_topk_reference

__all__ = [
    "cdmoe_experts",
    "product_key_topk",
    "sqrt_experts",
    "cdmoe_experts_reference",
    "product_key_topk_reference",
]
