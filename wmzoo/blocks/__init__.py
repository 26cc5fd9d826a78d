"""Block specs: frozen dataclasses with ``build(d_model) -> nn.Module`` (one file per block)."""

from .attention import Attention
from .cdmoe import CDMoE
from .dmattn import DMAttn
from .mlp import MLP
from .norm import RMSNorm
from .rope import RoPE
from .ssd import SSD

__all__ = ["SSD", "DMAttn", "Attention", "CDMoE", "MLP", "RoPE", "RMSNorm"]
