"""Cross Domain MoE (wonderful-matrices.md, section 4): out = S(x) + E(x).

S is a shared gated MLP. E holds N single-neuron experts (a down and an up vector each),
retrieved per token by multi-head product keys: He heads each pick k experts out of N with
two top-k's over sqrt(N) sub-keys. Experts are gathered rows, never a loop over experts.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.cdmoe import cdmoe_experts, product_key_topk, sqrt_experts
from ..kernels.checks import check_positive
from ..specs import BlockSpec, block_spec
from .mlp import MLPModule, default_hidden
from .norm import init_normal_


@block_spec
class CDMoE(BlockSpec):
    experts: int = 4096  # N, a perfect square
    heads: int = 4  # He
    experts_per_head: int = 8  # k
    retrieval_dim: int = 256  # R (even): query width per head
    hidden: int | None = None  # shared MLP width, default as MLP
    aux_loss_weight: float = 0.0  # load balancing over experts; 0 = off

    def build(self, d_model: int) -> nn.Module:
        return CDMoEModule(self, d_model)


class CDMoEModule(nn.Module):
    def __init__(self, spec: CDMoE, d_model: int):
        super().__init__()
        self.spec = spec
        self.sqrt_n = s = sqrt_experts(spec.experts)
        check_positive("heads", spec.heads)
        check_positive("experts_per_head", spec.experts_per_head)
        if spec.experts_per_head > s:
            raise ValueError(f"experts_per_head: expected <= sqrt(experts)={s}, got {spec.experts_per_head}")
        if spec.retrieval_dim % 2:
            raise ValueError(f"retrieval_dim: expected an even number, got {spec.retrieval_dim}")
        self.shared = MLPModule(d_model, spec.hidden or default_hidden(d_model))
        self.query = nn.Linear(d_model, spec.heads * spec.retrieval_dim, bias=False)
        init_normal_(self.query)
        # N(0, 0.02) sub-keys, not zeros: zero keys make every score tie at step 0.
        self.sub_keys = nn.Parameter(torch.randn(spec.heads, 2, s, spec.retrieval_dim // 2) * 0.02)
        self.down = nn.Parameter(torch.randn(spec.experts, d_model) * 0.02)
        self.up = nn.Parameter(torch.randn(spec.experts, d_model) * 0.02)

    @classmethod
    def from_dense(cls, mlp: MLPModule, spec: CDMoE) -> CDMoEModule:
        """Dense-to-sparse continuation: the MLP becomes the shared expert and the private
        experts start silent (up vectors zero), so the block computes exactly the MLP."""
        d_model = mlp.gate.in_features
        spec = spec.replace(hidden=mlp.gate.out_features)
        module = cls(spec, d_model).to(mlp.gate.weight.device, mlp.gate.weight.dtype)
        module.shared.load_state_dict(mlp.state_dict())
        with torch.no_grad():
            module.up.zero_()
        return module

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        spec = self.spec
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        q = self.query(flat).view(flat.shape[0], spec.heads, spec.retrieval_dim)
        weights, indices = product_key_topk(q, self.sub_keys.to(q.dtype), spec.experts_per_head)
        n = flat.shape[0]
        weights, indices = weights.reshape(n, -1), indices.reshape(n, -1)
        experts = cdmoe_experts(flat, indices, weights.to(flat.dtype), self.down.to(flat.dtype), self.up.to(flat.dtype))
        if spec.aux_loss_weight and ctx is not None and self.training:
            ctx.aux_losses.append(spec.aux_loss_weight * self.balance_loss(weights, indices))
        return self.shared(x) + experts.view(shape)

    def balance_loss(self, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Switch-style balance: N * sum_e f_e * P_e, f_e the share of picks of expert e
        (no gradient), P_e its share of routing weight; 1 when perfectly uniform."""
        N = self.spec.experts
        flat_idx = indices.reshape(-1)
        picks = torch.zeros(N, device=weights.device).index_add_(0, flat_idx, torch.ones_like(flat_idx, dtype=torch.float32))
        mass = torch.zeros(N, device=weights.device).index_add_(0, flat_idx, weights.reshape(-1).float())
        f = picks / flat_idx.numel()
        P = mass / weights.float().sum()
        return N * (f * P).sum()
