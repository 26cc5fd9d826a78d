"""The CDMoE ops as torch.library ops: argument checks, dispatch, autograd.

Each forward and each backward is its own registered op, so torch.compile sees opaque ops
(or, on CUDA, traceable triton_op bodies) in both directions and never needs to trace the
reference's autograd graph. Bodies run the Triton kernels when ``use_triton`` says so and
the kernel accepts the input (else ``Unsupported`` sends them to the reference). The
retrieval backward is plain PyTorch on every device: a scatter into the S half-scores and
two matmuls, which cuBLAS does better than a custom kernel would.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import FLOAT_DTYPES, check_positive, check_tensor
from ..registry import register_op, triton_or_reference
from .experts_kernel import cdmoe_experts_backward_triton, cdmoe_experts_triton
from .reference import (
    cdmoe_experts_backward_reference,
    cdmoe_experts_reference,
    product_key_topk_backward_reference,
    product_key_topk_reference,
)
from .retrieval_kernel import product_key_topk_triton


def sqrt_experts(n_experts: int) -> int:
    """sqrt(N) for product keys; an error naming N and the nearest squares otherwise."""
    s = math.isqrt(max(n_experts, 0))
    if n_experts < 1 or s * s != n_experts:
        raise ValueError(
            f"experts: product keys need a perfect square N, got N={n_experts}; "
            f"nearest squares {s * s} and {(s + 1) ** 2}"
        )
    return s


# ---------------------------------------------------------------- product-key retrieval


def _retrieval_body(query: Tensor, sub_keys: Tensor, topk: int) -> tuple[Tensor, Tensor]:
    return triton_or_reference((query, sub_keys), lambda: product_key_topk_triton(query, sub_keys, topk),
                               lambda: product_key_topk_reference(query, sub_keys, topk))


def _retrieval_fake(query, sub_keys, topk):
    n, heads, _ = query.shape
    return query.new_empty(n, heads, topk), query.new_empty(n, heads, topk, dtype=torch.int64)


_retrieval_op = register_op("product_key_topk", _retrieval_body, fake=_retrieval_fake)


def _retrieval_bwd_body(
    query: Tensor, sub_keys: Tensor, indices: Tensor, weights: Tensor, grad_weights: Tensor
) -> tuple[Tensor, Tensor]:
    return product_key_topk_backward_reference(query, sub_keys, indices, weights, grad_weights)


def _retrieval_bwd_fake(query, sub_keys, indices, weights, grad_weights):
    return torch.empty_like(query), torch.empty_like(sub_keys)


_retrieval_bwd_op = register_op("product_key_topk_bwd", _retrieval_bwd_body, fake=_retrieval_bwd_fake)


def _retrieval_setup(ctx, inputs, output):
    query, sub_keys, _ = inputs
    weights, indices = output
    ctx.save_for_backward(query, sub_keys, indices, weights)


def _retrieval_backward(ctx, grad_weights, _grad_indices):
    query, sub_keys, indices, weights = ctx.saved_tensors
    if grad_weights is None:
        return None, None, None
    dq, dk = _retrieval_bwd_op(query, sub_keys, indices, weights, grad_weights.contiguous())
    return dq, dk, None


_retrieval_op.register_autograd(_retrieval_backward, setup_context=_retrieval_setup)


def product_key_topk(query: Tensor, sub_keys: Tensor, topk: int) -> tuple[Tensor, Tensor]:
    """Multi-head product-key retrieval of ``topk`` experts out of N = S*S.

    query (n, He, R), R even; sub_keys (He, 2, S, R/2) (first and second half keys). Per head:
    s1 = q[:R/2] . K1 and s2 = q[R/2:] . K2 (S scores each), top-k of each, the k*k sums
    s1_a + s2_b with expert id a*S + b, their top-k, softmax. Returns weights (n, He, k) in
    query's dtype and indices (n, He, k) int64, sorted by score descending; equal scores go
    to the lower expert id (reference.py explains why this equals brute force over N).
    Gradients reach query and sub_keys through the kept scores.
    """
    check_tensor("query", query, ndim=3, dtypes=FLOAT_DTYPES)
    n, heads, r = query.shape
    if r % 2:
        raise ValueError(f"query: expected an even retrieval dim R (two halves), got R={r}")
    check_tensor("sub_keys", sub_keys, shape=(heads, 2, None, r // 2), dtypes=(query.dtype,), device=query.device)
    check_positive("topk", topk)
    s = sub_keys.shape[2]
    if topk > s:
        raise ValueError(f"topk: expected <= S={s} sub-keys per half (N={s * s} experts), got {topk}")
    return _retrieval_op(query.contiguous(), sub_keys.contiguous(), topk)


# ---------------------------------------------------------------- expert mixture


def _experts_body(x: Tensor, indices: Tensor, weights: Tensor, down: Tensor, up: Tensor) -> Tensor:
    args = (x, indices, weights, down, up)
    return triton_or_reference(args, lambda: cdmoe_experts_triton(*args), lambda: cdmoe_experts_reference(*args))


def _experts_fake(x, indices, weights, down, up):
    return torch.empty_like(x)


_experts_op = register_op("cdmoe_experts", _experts_body, fake=_experts_fake)


def _experts_bwd_body(
    grad: Tensor, x: Tensor, indices: Tensor, weights: Tensor, down: Tensor, up: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    args = (grad, x, indices, weights, down, up)
    # index_add_ of the reference: deterministic on CPU; on CUDA only if torch is asked to be
    # (the Triton backward always is)
    return triton_or_reference(args, lambda: cdmoe_experts_backward_triton(*args),
                               lambda: cdmoe_experts_backward_reference(*args))


def _experts_bwd_fake(grad, x, indices, weights, down, up):
    return torch.empty_like(x), torch.empty_like(weights), torch.empty_like(down), torch.empty_like(up)


_experts_bwd_op = register_op("cdmoe_experts_bwd", _experts_bwd_body, fake=_experts_bwd_fake)


def _experts_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _experts_backward(ctx, grad):
    x, indices, weights, down, up = ctx.saved_tensors
    dx, dw, ddown, dup = _experts_bwd_op(grad.contiguous(), x, indices, weights, down, up)
    return dx, None, dw, ddown, dup


_experts_op.register_autograd(_experts_backward, setup_context=_experts_setup)


def cdmoe_experts(x: Tensor, indices: Tensor, weights: Tensor, down: Tensor, up: Tensor) -> Tensor:
    """sum_j silu(x . down[idx_j]) * w_j * up[idx_j] for each token: (n, d) in x's dtype.

    x (n, d); indices (n, k) int64 in [0, N) (values are the caller's contract: checking them
    would sync the host); weights (n, k); down, up (N, d); all floats of x's dtype on x's
    device. Gradients reach x, weights, down and up. The Triton backward is deterministic:
    the down/up table gradients are summed per expert in a fixed (sorted) order, no atomics.
    """
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    n, d = x.shape
    check_tensor("indices", indices, shape=(n, None), dtypes=(torch.int64,), device=x.device)
    k = indices.shape[1]
    check_tensor("weights", weights, shape=(n, k), dtypes=(x.dtype,), device=x.device)
    check_tensor("down", down, shape=(None, d), dtypes=(x.dtype,), device=x.device)
    check_tensor("up", up, shape=tuple(down.shape), dtypes=(x.dtype,), device=x.device)
    return _experts_op(x.contiguous(), indices.contiguous(), weights.contiguous(), down.contiguous(), up.contiguous())
