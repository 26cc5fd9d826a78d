"""The DMAttn ops as torch.library ops: dispatch, fakes, autograd, and the checked public entry.

``wmzoo::dmattn_fwd`` and ``wmzoo::dmattn_bwd`` are each their own registered op, a triton_op
on CUDA (traced by Inductor; see ``_bwd_op``).
Bodies dispatch through ``registry.triton_or_reference``: the Triton backend where it can run
and accepts the input, else the reference. The reference backward is written out in
reference.py (explicit, so it needs no autograd inside the op body).

``dmattn_fwd`` also returns the Triton forward's window selection (kept lists, their biases,
per-query thresholds), saved for ``dmattn_bwd``, so a training step selects once; they are
non-differentiable, and empty where no selection was made (reference path, no window).
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from ..checks import FLOAT_DTYPES, check_cu_seqlens, check_divides, check_positive, check_tensor
from ..registry import contiguous_outputs, empty_like_none, register_op, triton_or_reference
from .reference import dmattn_reference, dmattn_reference_backward

try:  # the Triton backend is optional: without triton the reference serves every device
    from . import triton_backend
except ImportError:
    triton_backend = None


def _window(keep_window: int) -> int | None:
    """The ops take 0 for "no window" (schemas have no Optional[int] default worth the noise)."""
    return keep_window if keep_window > 0 else None


def _no_window_lists(q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The (kept, kept_bias, theta, count) outputs when no window selection was made (reference path,
    no window): empty, in the dtypes of the real lists, since op schemas cannot return None."""
    none = empty_like_none(q)
    return none.to(torch.int32), none.to(torch.float32), none.to(torch.int32), none.to(torch.int32)


def _fwd_body(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, cu_seqlens: Optional[Tensor],
    keep_window: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """o, lse and the window selection (kept, kept_bias, theta, count, as triton_select writes them),
    returned so that the backward need not select again."""
    def triton():
        o, lse, lists = triton_backend.forward_with_window(q, k, v, bias, cu_seqlens, keep_window, scale)
        return o, lse, *(lists or _no_window_lists(q))

    def reference():
        o, lse = dmattn_reference(q, k, v, bias, keep_window=_window(keep_window), scale=scale,
                                  cu_seqlens=cu_seqlens)
        return o, lse, *_no_window_lists(q)

    return contiguous_outputs(triton_or_reference((q, k, v, bias, cu_seqlens), triton_backend and triton, reference))


def _fwd_fake(q, k, v, bias, cu_seqlens, keep_window, scale):
    b, t, h, d = q.shape
    lists = triton_or_reference(  # the same decision as the body, from metadata alone
        (q, k, v, bias, cu_seqlens),
        triton_backend and (lambda: triton_backend.empty_window_lists(q, k, v, bias, cu_seqlens, keep_window)),
        lambda: None,
    )
    return q.new_empty(b, t, h, d), q.new_empty(b, h, t, dtype=torch.float32), *(lists or _no_window_lists(q))


_fwd_op = register_op("dmattn_fwd", _fwd_body, fake=_fwd_fake)


def _bwd_body(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, o: Tensor, lse: Tensor,
    kept: Tensor, kept_bias: Tensor, theta: Tensor, count: Tensor,
    cu_seqlens: Optional[Tensor], keep_window: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The Triton backward reuses the forward's window selection (kept, kept_bias, theta, count)."""
    return contiguous_outputs(triton_or_reference(
        (do, q, k, v, bias, cu_seqlens),
        triton_backend and (lambda: triton_backend.backward(do, q, k, v, bias, o, lse, kept, kept_bias, theta,
                                                            count, cu_seqlens, keep_window, scale)),
        lambda: dmattn_reference_backward(do, q, k, v, bias, keep_window=_window(keep_window),
                                          scale=scale, cu_seqlens=cu_seqlens),
    ))


def _bwd_fake(do, q, k, v, bias, o, lse, kept, kept_bias, theta, count, cu_seqlens, keep_window, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), bias.new_empty(bias.shape)


# Both ops are triton_ops on CUDA (Inductor traces their bodies, the block tables' torch ops
# included: wrong on the GPU until the tables stopped searching a sliced tensor, see
# kernels/varlen.bucket_of). Until the fourteenth session the backward was opaque: traced, the
# windowed form crashed Inductor (torch 2.11, pytorch/pytorch#181735) on a clone of a buffer
# that AOT autograd's CSE had merged with an identical torch.full (triton_select now fills its
# buffers differently, and tests/test_traced_writes.py checks it). Traced, the backward compiles
# and matches eager (dmattn.md runs 13 and 14).
_bwd_op = register_op("dmattn_bwd", _bwd_body, fake=_bwd_fake)


def _setup_context(ctx, inputs, output):
    q, k, v, bias, cu_seqlens, keep_window, scale = inputs
    o, lse, kept, kept_bias, theta, count = output
    ctx.save_for_backward(q, k, v, bias, o, lse, kept, kept_bias, theta, count, cu_seqlens)
    ctx.keep_window, ctx.scale = keep_window, scale
    ctx.mark_non_differentiable(lse, kept, kept_bias, theta, count)
    ctx.set_materialize_grads(False)  # no zero grads allocated for the non-differentiable outputs


def _backward(ctx, do, _dlse, _dkept, _dkept_bias, _dtheta, _dcount):
    q, k, v, bias, o, lse, kept, kept_bias, theta, count, cu_seqlens = ctx.saved_tensors
    dq, dk, dv, dbias = _bwd_op(do.contiguous(), q, k, v, bias, o, lse, kept, kept_bias, theta, count,
                                cu_seqlens, ctx.keep_window, ctx.scale)
    return dq, dk, dv, dbias, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)

dmattn_fwd = _fwd_op
dmattn_bwd = _bwd_op


def dmattn(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, *,
    keep_window: int | None = None, scale: float | None = None, cu_seqlens: Tensor | None = None,
) -> Tensor:
    """Dynamic Mask Attention: causal attention with a per-key bias and an optional top-w window.

    q (b, t, h, d); k, v (b, t, hkv, d), hkv divides h; bias (b, hkv, t), added to every
    query's logit for that key. keep_window w: query i keeps only the w keys j <= i of highest
    rank (bias desc, ties to the more recent key); None keeps every causal key. scale defaults
    to d**-0.5. cu_seqlens (num_seqs + 1,) packs sequences into b == 1 with no attention across
    boundaries. Returns o (b, t, h, d) in q's dtype; gradients reach q, k, v and bias.
    """
    check_tensor("q", q, ndim=4, dtypes=FLOAT_DTYPES)
    b, t, h, d = q.shape
    check_tensor("k", k, shape=(b, t, None, d), dtypes=(q.dtype,), device=q.device)
    hkv = k.shape[2]
    check_divides("k heads (hkv)", hkv, "q heads (h)", h)
    check_tensor("v", v, shape=(b, t, hkv, d), dtypes=(q.dtype,), device=q.device)
    check_tensor("bias", bias, shape=(b, hkv, t), dtypes=FLOAT_DTYPES, device=q.device)
    if keep_window is not None:
        if isinstance(keep_window, bool) or not isinstance(keep_window, numbers.Integral):
            raise TypeError(f"keep_window: expected an int >= 1 or None, got {keep_window!r}")
        keep_window = int(keep_window)  # numpy integers too; the op schema takes a Python int
        check_positive("keep_window", keep_window)
    if scale is None:
        scale = d**-0.5
    elif not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0):
        raise ValueError(f"scale: expected a number > 0, got {scale!r}")
    check_cu_seqlens(cu_seqlens, b, t, q.device)
    return _fwd_op(q.contiguous(), k.contiguous(), v.contiguous(), bias.contiguous(), cu_seqlens,
                   keep_window or 0, float(scale))[0]
