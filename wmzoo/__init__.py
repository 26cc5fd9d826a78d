"""wmzoo: the Wonderful Matrices architecture as composable blocks with Triton kernels.

    from wmzoo import Stack, SSD, DMAttn, CDMoE
    stack = Stack([SSD(), DMAttn(), CDMoE()] * 4, d_model=256)
"""

from .blocks import MLP, SSD, Attention, CDMoE, DMAttn, RMSNorm, RoPE
from .context import Context, StackState
from .lm import CausalLM
from .specs import BlockSpec, spec_from_dict, swap
from .stack import Stack

__all__ = [
    "Stack", "CausalLM", "Context", "StackState", "BlockSpec", "spec_from_dict", "swap",
    "SSD", "DMAttn", "Attention", "CDMoE", "MLP", "RoPE", "RMSNorm",
]
