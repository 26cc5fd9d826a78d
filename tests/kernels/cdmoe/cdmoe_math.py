"""Independent float64 math for the CDMoE tests: brute force over all N experts and an
explicit loop over tokens and kept experts. Differentiable, so it also gives the gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def brute_force_topk(query, sub_keys, k):
    """Score every expert a*S + b of every head as q1.K1[a] + q2.K2[b], keep the true top-k
    (equal scores: lower id first), softmax. Returns float64 weights and int64 ids."""
    q, keys = query.double(), sub_keys.double()
    half = q.shape[-1] // 2
    s1 = torch.einsum("nhr,hsr->nhs", q[..., :half], keys[:, 0])
    s2 = torch.einsum("nhr,hsr->nhs", q[..., half:], keys[:, 1])
    full = (s1[..., :, None] + s2[..., None, :]).flatten(-2)
    ids = full.argsort(dim=-1, descending=True, stable=True)[..., :k]
    return full.gather(-1, ids).softmax(-1), ids


def scores_at(query, sub_keys, ids):
    """Float64 softmax over the full scores of the given expert ids (n, He, k), and the
    float64 top-k scores: to check a retrieval whose ids may swap at near-ties."""
    q, keys = query.double(), sub_keys.double()
    S, half = keys.shape[2], q.shape[-1] // 2
    s1 = torch.einsum("nhr,hsr->nhs", q[..., :half], keys[:, 0])
    s2 = torch.einsum("nhr,hsr->nhs", q[..., half:], keys[:, 1])
    kept = s1.gather(-1, ids // S) + s2.gather(-1, ids % S)
    best = (s1[..., :, None] + s2[..., None, :]).flatten(-2).topk(ids.shape[-1], dim=-1).values
    return kept.softmax(-1), kept, best


def loop_experts(x, indices, weights, down, up):
    """out[t] = sum_j silu(x[t] . down[e]) * w[t, j] * up[e], e = indices[t, j], in float64."""
    x, weights, down, up = x.double(), weights.double(), down.double(), up.double()
    rows = []
    for t in range(x.shape[0]):
        acc = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        for j in range(indices.shape[1]):
            e = int(indices[t, j])
            acc = acc + F.silu(x[t] @ down[e]) * weights[t, j] * up[e]
        rows.append(acc)
    return torch.stack(rows)


def gathered_experts(x, indices, weights, down, up):
    """The same mixture vectorised in float64 (gathered rows), for GPU-sized tests where the
    loop is too slow; the loop checks it on the small sizes."""
    x, weights, down, up = x.double(), weights.double(), down.double(), up.double()
    act = F.silu(torch.einsum("nd,nkd->nk", x, down[indices])) * weights
    return torch.einsum("nk,nkd->nd", act, up[indices])


def grads(fn, inputs, grad_out):
    """Gradients of sum(fn(*inputs) * grad_out) w.r.t. the float inputs (None for others)."""
    leaves = [t.detach().clone().requires_grad_(True) if t.is_floating_point() else t for t in inputs]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    (out.double() * grad_out.double()).sum().backward()
    return [t.grad if t.is_floating_point() else None for t in leaves]


def retrieval_inputs(n, heads, r, s, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, heads, r, generator=g, dtype=torch.float64).to(dtype)
    keys = torch.randn(heads, 2, s, r // 2, generator=g, dtype=torch.float64).to(dtype)
    return q, keys


def expert_inputs(n, d, k, n_experts, dtype=torch.float32, seed=0, repeat=False):
    """Random expert-mixture inputs; ``repeat`` makes every token pick some expert twice."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    idx = torch.randint(0, n_experts, (n, k), generator=g)
    if repeat and k > 1:
        idx[:, -1] = idx[:, 0]
    w = torch.rand(n, k, generator=g, dtype=torch.float64).to(dtype)
    down = (torch.randn(n_experts, d, generator=g, dtype=torch.float64) / d**0.5).to(dtype)
    up = torch.randn(n_experts, d, generator=g, dtype=torch.float64).to(dtype)
    return x, idx, w, down, up
