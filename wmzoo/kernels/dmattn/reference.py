"""Dynamic Mask Attention in plain PyTorch: the spec (wonderful-matrices.md, section 3).

Dense causal attention with one additive bias per key and kv head, and the exact keep_window
selection: query i keeps the w causal keys of highest rank, where key j ranks above key j'
iff bias_j > bias_j', or the biases tie and j > j' (the more recent key wins).

Everything here is free of host syncs (it is also the body of the op on CUDA, where the body
doubles as the fake) and no tensor is larger than the (b, h, t, t) score matrix.
"""

from __future__ import annotations

import torch

from ..varlen import seq_idx_from_cu_seqlens


def visible_keys(t: int, cu_seqlens: torch.Tensor | None, device) -> torch.Tensor:
    """(t, t) bool: key j is visible to query i iff j <= i and both lie in the same sequence."""
    pos = torch.arange(t, device=device)
    visible = pos[None, :] <= pos[:, None]
    if cu_seqlens is not None:
        seq = seq_idx_from_cu_seqlens(cu_seqlens, t)
        visible = visible & (seq[None, :] == seq[:, None])
    return visible


def window_mask(bias: torch.Tensor, visible: torch.Tensor, keep_window: int) -> torch.Tensor:
    """(b, hkv, t, t) bool: key j is kept by query i under the keep_window rule.

    Keys are ranked once per (b, hkv): a stable ascending sort of the bias leaves ties in index
    order, so the sorted position is the rank (higher = ranks above; ties go to the later key).
    Walking keys from the highest rank down, a visible key is kept iff fewer than w visible
    keys ranked above it: an exclusive cumulative count over the rank-ordered visibility.
    """
    t = bias.shape[-1]
    order = torch.sort(bias.detach(), dim=-1, stable=True).indices.flip(-1)  # (b, hkv, t), best first
    # visibility of the rank-ordered keys for every query: (b, hkv, t_query, t_rank)
    vis_sorted = visible[:, order].permute(1, 2, 0, 3)
    above = torch.cumsum(vis_sorted.to(torch.int32), dim=-1) - vis_sorted.to(torch.int32)
    kept_sorted = vis_sorted & (above < keep_window)
    # back to key order: key j sits at sorted position place[j]
    place = torch.argsort(order, dim=-1)
    return torch.gather(kept_sorted, -1, place[:, :, None, :].expand(-1, -1, t, -1))


def kept_mask(bias: torch.Tensor, cu_seqlens: torch.Tensor | None, keep_window: int | None,
              group: int) -> torch.Tensor:
    """Bool mask of the kept keys, broadcastable to the (b, h, t, t) scores."""
    t = bias.shape[-1]
    mask = visible_keys(t, cu_seqlens, bias.device)[None, None]  # (1, 1, t, t)
    if keep_window is None or not 0 < keep_window < t:
        return mask
    return window_mask(bias, mask[0, 0], keep_window).repeat_interleave(group, dim=1)


def _probabilities(q, k, bias, mask, scale):
    """Masked scaled logits and their softmax, (b, h, t, t), in fp32 (or wider)."""
    group = q.shape[2] // k.shape[2]
    compute = torch.promote_types(q.dtype, torch.float32)
    qf = q.to(compute).transpose(1, 2)  # (b, h, t, d)
    kf = k.to(compute).transpose(1, 2).repeat_interleave(group, dim=1)
    key_bias = bias.to(compute).repeat_interleave(group, dim=1)[:, :, None, :]  # (b, h, 1, t)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale + key_bias
    # every query keeps at least one key (itself while i < w, else w >= 1 keys): no row is all -inf
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores, torch.softmax(scores, dim=-1)


def dmattn_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    keep_window: int | None = None,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """o (b, t, h, d) in q's dtype and lse (b, h, t) fp32 (log-sum-exp of the kept scaled logits).

    q (b, t, h, d); k, v (b, t, hkv, d) with hkv | h (query head i reads kv head i // (h//hkv));
    bias (b, hkv, t). keep_window None (or 0, or >= t) keeps every causal key. The softmax runs
    in fp32 (float64 inputs stay float64, so tests can check the math tightly).
    """
    group = q.shape[2] // k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    mask = kept_mask(bias, cu_seqlens, keep_window, group)
    scores, p = _probabilities(q, k, bias, mask, scale)
    vf = v.to(p.dtype).transpose(1, 2).repeat_interleave(group, dim=1)
    o = torch.matmul(p, vf)
    return o.transpose(1, 2).contiguous().to(q.dtype), torch.logsumexp(scores, dim=-1).float()


def dmattn_reference_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    keep_window: int | None = None,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv, dbias for the output gradient do (b, t, h, d), each in its input's dtype.

    Written out rather than taken from autograd: an op body runs below the autograd dispatch
    keys, where recording a graph would need private dispatcher guards. The softmax is
    recomputed in fp32 (or float64) instead of read from the saved fp32 lse, so float64 inputs
    get float64-exact gradients. The selection is a constant of the bias (detached): dbias is
    the softmax gradient of the kept logits, summed over queries and the kv head's query heads.
    """
    b, t, h, d = q.shape
    hkv = k.shape[2]
    group = h // hkv
    scale = d**-0.5 if scale is None else scale
    mask = kept_mask(bias, cu_seqlens, keep_window, group)
    _, p = _probabilities(q, k, bias, mask, scale)
    compute = p.dtype
    dof = do.to(compute).transpose(1, 2)  # (b, h, t, d)
    qf = q.to(compute).transpose(1, 2)
    kf = k.to(compute).transpose(1, 2).repeat_interleave(group, dim=1)
    vf = v.to(compute).transpose(1, 2).repeat_interleave(group, dim=1)
    dp = torch.matmul(dof, vf.transpose(-1, -2))
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))  # masked entries have p = 0, so ds = 0 there

    def per_kv_head(x):  # (b, h, ...) -> (b, hkv, ...): sum the query heads sharing a kv head
        return x.reshape(b, hkv, group, *x.shape[2:]).sum(2)

    dq = torch.matmul(ds, kf) * scale
    dk = per_kv_head(torch.matmul(ds.transpose(-1, -2), qf)) * scale
    dv = per_kv_head(torch.matmul(p.transpose(-1, -2), dof))
    dbias = per_kv_head(ds.sum(-2))
    return (
        dq.transpose(1, 2).contiguous().to(q.dtype),
        dk.transpose(1, 2).contiguous().to(k.dtype),
        dv.transpose(1, 2).contiguous().to(v.dtype),
        dbias.contiguous().to(bias.dtype),
    )
