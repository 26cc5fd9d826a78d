"""The CDMoE block against a brute-force float64 mixture over all N experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import assert_close
from wmzoo import MLP, CDMoE, Context
from wmzoo.blocks.cdmoe import CDMoEModule

SPEC = CDMoE(experts=49, heads=3, experts_per_head=4, retrieval_dim=12, hidden=40)


def brute_force(m, x):
    """Score all N experts per head (q1.K1[a] + q2.K2[b]), keep the true top-k, softmax, mix."""
    s, xd = m.spec, x.double().reshape(-1, x.shape[-1])
    half = s.retrieval_dim // 2
    q = (xd @ m.query.weight.double().T).view(-1, s.heads, s.retrieval_dim)
    K = m.sub_keys.double()
    s1 = torch.einsum("nhr,hsr->nhs", q[..., :half], K[:, 0])
    s2 = torch.einsum("nhr,hsr->nhs", q[..., half:], K[:, 1])
    full = (s1[..., :, None] + s2[..., None, :]).flatten(-2)  # (n, He, N), id a*sqrt(N)+b
    top, idx = full.topk(s.experts_per_head, dim=-1)
    g = top.softmax(-1)
    act = F.silu(torch.einsum("nd,nhkd->nhk", xd, m.down.double()[idx]))
    experts = torch.einsum("nhk,nhkd->nd", act * g, m.up.double()[idx])
    sh = m.shared
    shared = (F.silu(xd @ sh.gate.weight.double().T) * (xd @ sh.up.weight.double().T)) @ sh.down.weight.double().T
    return (shared + experts).view(x.shape)


def test_cdmoe_block_matches_brute_force():
    torch.manual_seed(0)
    m = SPEC.build(40)
    x = torch.randn(3, 11, 40)
    assert_close(m(x), brute_force(m, x), torch.float32)


def test_dense_to_sparse_starts_as_the_dense_mlp():
    torch.manual_seed(0)
    mlp = MLP(hidden=72).build(40)
    moe = CDMoEModule.from_dense(mlp, SPEC)
    x = torch.randn(2, 9, 40)
    assert_close(moe(x), mlp(x), torch.float32)
    assert moe.spec.hidden == 72


def test_balance_loss_is_reported_and_differentiable():
    torch.manual_seed(0)
    m = SPEC.replace(aux_loss_weight=0.01).build(40)
    ctx = Context()
    m(torch.randn(4, 16, 40), ctx)
    loss = ctx.aux_loss
    assert torch.is_tensor(loss) and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert m.query.weight.grad is not None and m.query.weight.grad.abs().sum() > 0
