"""CDMoE in plain PyTorch: the spec (wonderful-matrices.md, section 4).

Two ops: the multi-head product-key retrieval and the single-neuron expert mixture. Both
compute in fp32 (float64 stays float64) and return the input dtype.

Ties are broken deterministically: at equal score the lower id wins, in both half top-k's
and in the final top-k, and the k kept experts are returned by score descending, then id
ascending. With that rule the product-key top-k is exactly the top-k over all N experts:
a pair (a, b) whose a is outside the top-k of the first half is beaten by the k pairs
(a', b) with a' in that top-k (higher score, or equal score and lower id a'*S+b), and the
same holds for b.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for 16-bit inputs, the input dtype otherwise (float64 stays exact)."""
    return torch.promote_types(dtype, torch.float32)


def topk_lowest_id_first(scores: torch.Tensor, ids: torch.Tensor, k: int):
    """Top-k of ``scores`` along the last dim, ties to the lower ``ids``; sorted.

    Sort by id first, then a stable descending sort by score: equal scores keep id order.
    """
    by_id = ids.argsort(dim=-1)
    scores, ids = scores.gather(-1, by_id), ids.gather(-1, by_id)
    order = scores.argsort(dim=-1, descending=True, stable=True)[..., :k]
    return scores.gather(-1, order), ids.gather(-1, order)


def half_scores(query: torch.Tensor, sub_keys: torch.Tensor):
    """s1 = q[:, :, :R/2] . K1 and s2 = q[:, :, R/2:] . K2 per head: two (n, He, S) tensors."""
    acc = accumulation_dtype(query.dtype)
    half = query.shape[-1] // 2
    q, keys = query.to(acc), sub_keys.to(acc)
    s1 = torch.einsum("nhr,hsr->nhs", q[..., :half], keys[:, 0])
    s2 = torch.einsum("nhr,hsr->nhs", q[..., half:], keys[:, 1])
    return s1, s2


def product_key_topk_reference(query: torch.Tensor, sub_keys: torch.Tensor, topk: int):
    """Per head: top-k of each half's S scores, the k*k sums with ids a*S + b, their top-k,
    softmax over the kept scores. Returns weights (n, He, k) in query's dtype and indices
    (n, He, k) int64; gradients reach query and sub_keys through the kept scores."""
    S = sub_keys.shape[2]
    s1, s2 = half_scores(query, sub_keys)
    position = torch.arange(S, device=query.device).expand_as(s1)
    v1, a = topk_lowest_id_first(s1, position, topk)
    v2, b = topk_lowest_id_first(s2, position, topk)
    sums = (v1[..., :, None] + v2[..., None, :]).flatten(-2)
    ids = (a[..., :, None] * S + b[..., None, :]).flatten(-2)
    kept, indices = topk_lowest_id_first(sums, ids, topk)
    return kept.softmax(dim=-1).to(query.dtype), indices


def cdmoe_experts_reference(x, indices, weights, down, up):
    """sum_j silu(x . down[idx_j]) * w_j * up[idx_j] per token, gathering (n, k, d) rows."""
    acc = accumulation_dtype(x.dtype)
    rows_down, rows_up = down.to(acc)[indices], up.to(acc)[indices]
    act = F.silu(torch.einsum("nd,nkd->nk", x.to(acc), rows_down)) * weights.to(acc)
    return torch.einsum("nk,nkd->nd", act, rows_up).to(x.dtype)



def product_key_topk_backward_reference(query, sub_keys, indices, weights, grad_weights):
    """Gradients of the retrieval w.r.t. query and sub_keys, from the saved ids and weights.

    Softmax backward gives d(kept score); a kept score is s1[a] + s2[b], so it scatters into
    dense (n, He, S) half-score gradients, which two matmuls take back to q and the keys.
    Explicit math rather than autograd: it runs inside op bodies, where autograd is off.
    """
    acc = accumulation_dtype(query.dtype)
    S, half = sub_keys.shape[2], query.shape[-1] // 2
    w, gw = weights.to(acc), grad_weights.to(acc)
    d_kept = w * (gw - (w * gw).sum(-1, keepdim=True))
    zeros = torch.zeros(*query.shape[:2], S, dtype=acc, device=query.device)
    ds1 = zeros.scatter_add(-1, indices // S, d_kept)
    ds2 = zeros.scatter_add(-1, indices % S, d_kept)
    q, keys = query.to(acc), sub_keys.to(acc)
    dq = torch.cat([torch.einsum("nhs,hsr->nhr", ds1, keys[:, 0]), torch.einsum("nhs,hsr->nhr", ds2, keys[:, 1])], -1)
    dk = torch.stack([torch.einsum("nhs,nhr->hsr", ds1, q[..., :half]), torch.einsum("nhs,nhr->hsr", ds2, q[..., half:])], 1)
    return dq.to(query.dtype), dk.to(sub_keys.dtype)


def cdmoe_experts_backward_reference(grad, x, indices, weights, down, up):
    """dx, dweights, d(down), d(up) of the expert mixture, gathering (n, k, d) rows.

    With h_j = x . down[e_j] and a_j = silu(h_j): dw_j = a_j (g . up[e_j]),
    dh_j = w_j (g . up[e_j]) silu'(h_j), dx = sum_j dh_j down[e_j],
    d(down)[e] += dh_j x and d(up)[e] += a_j w_j g over every (token, j) that picked e.
    """
    acc = accumulation_dtype(x.dtype)
    g, xa, w = grad.to(acc), x.to(acc), weights.to(acc)
    rows_down, rows_up = down.to(acc)[indices], up.to(acc)[indices]
    h = torch.einsum("nd,nkd->nk", xa, rows_down)
    sig = torch.sigmoid(h)
    act = h * sig
    g_up = torch.einsum("nd,nkd->nk", g, rows_up)
    dw = act * g_up
    dh = w * g_up * sig * (1 + h * (1 - sig))
    dx = torch.einsum("nk,nkd->nd", dh, rows_down)
    flat = indices.reshape(-1)
    d_down = torch.zeros(down.shape, dtype=acc, device=x.device).index_add_(0, flat, (dh[..., None] * xa[:, None]).reshape(-1, x.shape[1]))
    d_up = torch.zeros(up.shape, dtype=acc, device=x.device).index_add_(0, flat, ((act * w)[..., None] * g[:, None]).reshape(-1, x.shape[1]))
    return dx.to(x.dtype), dw.to(weights.dtype), d_down.to(down.dtype), d_up.to(up.dtype)
