"""SSD as torch.library ops (contract: ssd_fwd, ssd_bwd, ssd_step, ssd_step_bwd) and the public
``ssd`` / ``ssd_step`` that validate their arguments before reaching an op.

Each op body runs the Triton backend when ``use_triton`` says the tensors' device can and the
backend accepts the input; a backend that cannot take an input raises ``Unsupported`` and the
body falls back to the plain-PyTorch reference. The reference backward is the autograd graph
of the reference (``reference_vjp``). Op schemas cannot return ``None``: absent gradients are
empty tensors (``empty_like_none``) and are turned back into ``None`` for autograd.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from ..checks import (
    FLOAT_DTYPES,
    check_cu_seqlens,
    check_divides,
    check_power_of_two,
    check_tensor,
)
from ..registry import (
    contiguous_outputs,
    direct_launches,
    empty_like_none,
    reference_vjp,
    register_op,
    triton_or_reference,
)
from .reference import compute_dtype, ssd_reference, ssd_step_reference

try:
    triton_backend = importlib.import_module(f"{__package__}.triton_backend")
except ModuleNotFoundError as err:  # no triton installed (or no backend written yet): reference only
    if err.name not in ("triton", f"{__package__}.triton_backend"):
        raise
    triton_backend = None

# fp64 is accepted where the contract says fp32, so that exactness can be tested in fp64.
STATE_DTYPES = (torch.float32, torch.float64)


def _backend(name: str):
    """The Triton backend's function ``name``, or None without a backend."""
    return None if triton_backend is None else getattr(triton_backend, name)


def _absent_to_empty(grads, ref: Tensor) -> tuple[Tensor, ...]:
    return contiguous_outputs(empty_like_none(ref) if g is None else g for g in grads)


def _empty_fakes(tensors, ref: Tensor) -> tuple[Tensor, ...]:
    """Contiguous outputs shaped like ``tensors``; an empty tensor for each absent one."""
    return tuple(ref.new_empty(0) if t is None else t.new_empty(t.shape) for t in tensors)


def _grads_for(inputs, grads) -> tuple[Tensor | None, ...]:
    """The op's gradients with ``None`` for the inputs that were ``None``."""
    return tuple(None if t is None else g for t, g in zip(inputs, grads))


# ---------------------------------------------------------------------------------------------
# wmzoo::ssd_fwd / wmzoo::ssd_bwd


def _ssd_fwd_body(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    rope_cos: Tensor | None,
    rope_sin: Tensor | None,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    args = (x, dt, A, B, C, D, initial_state, cu_seqlens, rope_cos, rope_sin, chunk_size)
    forward = _backend("forward")
    return contiguous_outputs(triton_or_reference((x,), forward and (lambda: forward(*args)), lambda: ssd_reference(*args)))


def _ssd_fwd_fake(x, dt, A, B, C, D, initial_state, cu_seqlens, rope_cos, rope_sin, chunk_size):
    b, _, h, p = x.shape
    states = b if cu_seqlens is None else cu_seqlens.shape[0] - 1
    final = x.new_empty(states, h, p, B.shape[-1], dtype=compute_dtype(x))
    return x.new_empty(x.shape), final


_ssd_fwd = register_op("ssd_fwd", _ssd_fwd_body, fake=_ssd_fwd_fake)


def _ssd_bwd_body(
    dy: Tensor,
    dfinal_state: Tensor | None,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    rope_cos: Tensor | None,
    rope_sin: Tensor | None,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    backward = _backend("backward")

    def triton():
        return contiguous_outputs(backward(dy, dfinal_state, x, dt, A, B, C, D, initial_state,
                                    cu_seqlens, rope_cos, rope_sin, chunk_size))

    def reference():
        grads = reference_vjp(ssd_reference, (x, dt, A, B, C, D, initial_state), (dy, dfinal_state),
                              cu_seqlens=cu_seqlens, rope_cos=rope_cos, rope_sin=rope_sin, chunk_size=chunk_size)
        return _absent_to_empty(grads, x)

    return triton_or_reference((x,), backward and triton, reference)


def _ssd_bwd_fake(dy, dfinal_state, x, dt, A, B, C, D, initial_state, cu_seqlens, rope_cos,
                  rope_sin, chunk_size):
    return _empty_fakes((x, dt, A, B, C, D, initial_state), x)


_ssd_bwd = register_op("ssd_bwd", _ssd_bwd_body, fake=_ssd_bwd_fake)


def _ssd_setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, initial_state, cu_seqlens, rope_cos, rope_sin, chunk_size = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, initial_state, cu_seqlens, rope_cos, rope_sin)
    ctx.chunk_size = chunk_size


def _ssd_backward(ctx, dy, dfinal_state):
    x, dt, A, B, C, D, initial_state, cu_seqlens, rope_cos, rope_sin = ctx.saved_tensors
    dfinal_state = None if dfinal_state is None else dfinal_state.contiguous()
    grads = _ssd_bwd(dy.contiguous(), dfinal_state, x, dt, A, B, C, D, initial_state,
                     cu_seqlens, rope_cos, rope_sin, ctx.chunk_size)
    # No gradient to cu_seqlens, the RoPE tables (fixed functions of positions) or chunk_size.
    return (*_grads_for((x, dt, A, B, C, D, initial_state), grads), None, None, None, None)


_ssd_fwd.register_autograd(_ssd_backward, setup_context=_ssd_setup_context)


# ---------------------------------------------------------------------------------------------
# wmzoo::ssd_step / wmzoo::ssd_step_bwd


def _ssd_step_body(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    rope_cos: Tensor | None,
    rope_sin: Tensor | None,
) -> tuple[Tensor, Tensor]:
    args = (state, x, dt, A, B, C, D, rope_cos, rope_sin)
    step = _backend("step")
    return contiguous_outputs(triton_or_reference((x,), step and (lambda: step(*args)), lambda: ssd_step_reference(*args)))


def _ssd_step_fake(state, x, dt, A, B, C, D, rope_cos, rope_sin):
    return x.new_empty(x.shape), state.new_empty(state.shape)


_ssd_step = register_op("ssd_step", _ssd_step_body, fake=_ssd_step_fake)


def _ssd_step_bwd_body(
    dy: Tensor,
    dnew_state: Tensor | None,
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    rope_cos: Tensor | None,
    rope_sin: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    # A decode step is cheap and rarely differentiated: its backward is always the reference's.
    grads = reference_vjp(
        ssd_step_reference,
        (state, x, dt, A, B, C, D),
        (dy, dnew_state),
        rope_cos=rope_cos,
        rope_sin=rope_sin,
    )
    return _absent_to_empty(grads, x)


def _ssd_step_bwd_fake(dy, dnew_state, state, x, dt, A, B, C, D, rope_cos, rope_sin):
    return _empty_fakes((state, x, dt, A, B, C, D), x)


_ssd_step_bwd = register_op("ssd_step_bwd", _ssd_step_bwd_body, fake=_ssd_step_bwd_fake)


def _step_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _step_backward(ctx, dy, dnew_state):
    state, x, dt, A, B, C, D, rope_cos, rope_sin = ctx.saved_tensors
    dnew_state = None if dnew_state is None else dnew_state.contiguous()
    grads = _ssd_step_bwd(dy.contiguous(), dnew_state, state, x, dt, A, B, C, D, rope_cos, rope_sin)
    return (*_grads_for((state, x, dt, A, B, C, D), grads), None, None)


_ssd_step.register_autograd(_step_backward, setup_context=_step_setup_context)


# ---------------------------------------------------------------------------------------------
# Public functions: every argument checked, with errors that name it.


def _check_common(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                  lead: tuple[int, ...], rope_cos: Tensor | None, rope_sin: Tensor | None) -> None:
    """Checks shared by ssd and ssd_step; ``lead`` is (b, t) or (b,)."""
    dev = x.device
    h = x.shape[-2]
    check_tensor("dt", dt, shape=(*lead, h), dtypes=(torch.float32, x.dtype), device=dev)
    check_tensor("A", A, shape=(h,), dtypes=STATE_DTYPES, device=dev)
    check_tensor("B", B, shape=(*lead, None, None), dtypes=(x.dtype,), device=dev)
    check_tensor("C", C, shape=tuple(B.shape), dtypes=(x.dtype,), device=dev)
    check_divides("groups g (B.shape[-2])", B.shape[-2], "heads h (x.shape[-2])", h)
    if D is not None:
        check_tensor("D", D, shape=(h,), dtypes=(torch.float32, x.dtype), device=dev)
    if (rope_cos is None) != (rope_sin is None):
        raise ValueError("rope_cos, rope_sin: pass both tables or neither, got only "
                         + ("rope_cos" if rope_sin is None else "rope_sin"))
    if rope_cos is not None:
        check_tensor("rope_cos", rope_cos, shape=(*lead, None), dtypes=(torch.float32,), device=dev)
        check_tensor("rope_sin", rope_sin, shape=tuple(rope_cos.shape), dtypes=(torch.float32,), device=dev)
        r, n = 2 * rope_cos.shape[-1], B.shape[-1]
        if r == 0 or r > n:
            raise ValueError(f"rope_cos: rotated dim r = 2*{rope_cos.shape[-1]} = {r} must be in [2, n={n}] "
                             f"(n = state size, B.shape[-1])")


def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    chunk_size: int = 64,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    rope_cos: Tensor | None = None,
    rope_sin: Tensor | None = None,
):
    """Mamba2 SSD: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B~_t^T, y_t = h_t C~_t (+ D x_t).

    x (b,t,h,p); dt (b,t,h) positive (after softplus), fp32 or x's dtype; A (h,) negative fp32;
    B, C (b,t,g,n) in x's dtype, g divides h, head i uses group i // (h // g); D (h,) optional.
    rope_cos / rope_sin (b,t,r/2) fp32: B and C get their first r channels rotated (B~, C~).
    cu_seqlens (num_seqs+1,) int32/int64 packs sequences into b = 1; states never cross them.
    initial_state / final_state: (b,h,p,n), or (num_seqs,h,p,n) with cu_seqlens, fp32.
    Returns y (x's dtype), or (y, final_state) with ``return_final_state``.
    """
    check_tensor("x", x, ndim=4, dtypes=FLOAT_DTYPES)
    b, t, h, p = x.shape
    if t < 1:
        raise ValueError(f"x: expected a sequence length t >= 1, got shape {tuple(x.shape)}")
    _check_common(x, dt, A, B, C, D, (b, t), rope_cos, rope_sin)
    if not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size: expected an int, got {type(chunk_size).__name__}")
    check_power_of_two("chunk_size", chunk_size)
    check_cu_seqlens(cu_seqlens, b, t, x.device)
    if initial_state is not None:
        states = b if cu_seqlens is None else cu_seqlens.shape[0] - 1
        what = "b" if cu_seqlens is None else "num_seqs = len(cu_seqlens) - 1"
        try:
            check_tensor("initial_state", initial_state, shape=(states, h, p, B.shape[-1]),
                         dtypes=STATE_DTYPES, device=x.device)
        except ValueError as err:
            raise ValueError(f"{err}; expected (b or num_seqs, h, p, n) with {what}") from None
    y, final_state = _ssd_fwd(x, dt, A, B, C, D, initial_state, cu_seqlens, rope_cos, rope_sin, chunk_size)
    return (y, final_state) if return_final_state else y


def ssd_step(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    rope_cos: Tensor | None = None,
    rope_sin: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One decode step of :func:`ssd`. state (b,h,p,n) fp32; x (b,h,p); dt (b,h); B, C (b,g,n);
    rope_cos / rope_sin (b,r/2) at the step's absolute position. Returns (y, new_state)."""
    check_tensor("x", x, ndim=3, dtypes=FLOAT_DTYPES)
    b, h, p = x.shape
    _check_common(x, dt, A, B, C, D, (b,), rope_cos, rope_sin)
    check_tensor("state", state, shape=(b, h, p, B.shape[-1]), dtypes=STATE_DTYPES, device=x.device)
    args = (state, x, dt, A, B, C, D, rope_cos, rope_sin)
    if _needs_op(args):
        return _ssd_step(*args)
    with direct_launches():
        return _ssd_step_body(*args)


def _needs_op(tensors) -> bool:
    """Whether a decode step must go through its registered op: while torch.compile traces, or
    when a gradient can flow. Otherwise the step calls the op's body itself: at small batch a
    decode step is bound by host time, and the op's dispatch cost more than the kernel (batch 1:
    0.109 ms against mamba_ssm's 0.055, ssd.md run 9)."""
    if torch.compiler.is_compiling():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
