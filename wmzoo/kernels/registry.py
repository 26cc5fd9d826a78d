"""The one place that decides how a wmzoo op is registered and which implementation runs.

Every op family (ssd, dmattn, cdmoe, rope) defines its forward and backward as plain Python
functions with type annotations and hands them to :func:`register_op`. This module decides,
once for the whole library (design.md, "Kernels: compile-clean by construction"):

* CUDA build of torch, no interpreter: ``torch.library.triton_op``. Inductor traces the body
  and sees the Triton kernels (launched through ``wrap_triton``). The body doubles as the fake
  implementation, so bodies must be free of host syncs (no ``.item()``, ``.tolist()``,
  ``nonzero``) on every path, the reference path included.
* otherwise (CPU, with or without ``TRITON_INTERPRET=1``): an opaque ``torch.library.custom_op``
  with an explicit fake. Under the interpreter the body runs the same Triton code on CPU
  tensors; without it the body runs the plain-PyTorch reference.

Which implementation a body runs is decided by :func:`use_triton` from the tensors' devices,
and a Triton backend may refuse an input with reasons in words (:class:`Unsupported`), in the
manner of xformers' ``not_supported_reasons``; the body then falls back to the reference.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

import torch

NAMESPACE = "wmzoo"

# Read once at import, as Triton itself does: kernels are compiled for one mode per process.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


TRITON_AVAILABLE = _triton_importable()

# triton_op needs a GPU Triton backend to compile for; under the interpreter it cannot be traced
# by torch.compile (checked on torch 2.13 CPU), so there we register opaque custom ops instead.
USE_TRITON_OP = TRITON_AVAILABLE and torch.cuda.is_available() and not INTERPRET


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """True when the Triton code path can run on these tensors' device.

    CUDA tensors always take Triton; CPU tensors only under ``TRITON_INTERPRET=1``.
    """
    present = [t for t in tensors if t is not None]
    if not TRITON_AVAILABLE or not present:
        return False
    if all(t.is_cuda for t in present):
        return True
    return INTERPRET and all(t.device.type == "cpu" for t in present)


def register_op(name: str, body: Callable, *, fake: Callable | None = None):
    """Register ``body`` as the op ``wmzoo::name`` and return the op (a ``CustomOpDef``).

    ``fake`` computes output metadata from input metadata; it is used wherever the op is
    opaque (off CUDA). With ``triton_op`` the body itself is traced instead, so ``fake`` is not
    needed there.
    """
    qualname = f"{NAMESPACE}::{name}"
    if USE_TRITON_OP:
        return torch.library.triton_op(qualname, body, mutates_args=())
    schema = torch.library.infer_schema(body, mutates_args=())
    op = torch.library.custom_op(qualname, body, mutates_args=(), schema=schema)
    if fake is None:
        raise ValueError(f"register_op({name!r}): a fake implementation is required on this platform")
    op.register_fake(fake)
    return op


def launch(kernel):
    """Wrap a ``@triton.jit`` kernel so that a ``triton_op`` body exposes it to Inductor.

    Eager calls inside a ``triton_op`` body, under :func:`direct_launches` and under the
    interpreter go straight to the kernel; anywhere else on CUDA through the traceable wrapper.
    An autotuned kernel (``kernels.autotune.Autotuned``) launches tuned, or pinned to one
    config while ``torch.use_deterministic_algorithms(True)`` is on.
    """
    pick = getattr(kernel, "pick", None)
    return torch.library.wrap_triton(pick() if pick else kernel)


try:  # the switch triton_op itself uses for its eager calls
    from torch._library.triton import set_wrap_triton_enabled as _set_wrap_triton_enabled
except ImportError:  # an older torch: launches keep going through the wrapper (slower, correct)
    _set_wrap_triton_enabled = None


def direct_launches():
    """A context in which :func:`launch`-ed kernels run straight away, not through the traceable
    wrapper, whose eager dispatch as a higher-order op costs about 1 ms per launch (torch's own
    figure, in ``set_wrap_triton_enabled``). For code that always runs on real tensors: the
    decode path. While torch.compile traces, the wrapper stays on (it is what
    makes the kernels traceable)."""
    if _set_wrap_triton_enabled is None or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return _set_wrap_triton_enabled(False)


class Unsupported(Exception):
    """Raised by a Triton backend's check: the fast path cannot take this input, and why."""


def triton_or_reference(tensors: Sequence[torch.Tensor | None], triton_fn: Callable | None, reference_fn: Callable):
    """``triton_fn()`` when Triton can run on these tensors' device and the backend accepts the
    input (it raises :class:`Unsupported` otherwise), else ``reference_fn()``: the dispatch of
    every op body, decided the same way everywhere."""
    if triton_fn is not None and use_triton(*tensors):
        try:
            return triton_fn()
        except Unsupported:
            pass
    return reference_fn()


@contextlib.contextmanager
def _autograd_inside_op():
    """Re-admit autograd inside an op body.

    The dispatcher runs an op body below autograd (its dispatch keys are excluded for the
    call), so ``torch.enable_grad`` alone records nothing there and a recomputed reference
    would silently yield zero gradients. (``torch.func.vjp`` would also work, but its wrapper
    tensors break opcheck's schema check.)
    """
    include = torch._C._dispatch_tls_local_include_set()
    exclude = torch._C._dispatch_tls_local_exclude_set().remove(torch._C.DispatchKey.AutogradFunctionality)
    with torch._C._ForceDispatchKeyGuard(include, exclude), torch.enable_grad():
        yield


def reference_vjp(
    fn: Callable[..., Sequence[torch.Tensor] | torch.Tensor],
    inputs: Sequence[torch.Tensor | None],
    grad_outputs: Sequence[torch.Tensor | None],
    **static,
) -> list[torch.Tensor | None]:
    """Gradients of a plain-PyTorch reference, by recomputing it under autograd.

    This is the backward of every op's reference backend: the reference is the spec, so its
    autograd graph is the spec of the backward too. Float inputs get gradients; ``None`` and
    integer inputs get ``None``. Works inside op bodies (see ``_autograd_inside_op``).
    """
    with _autograd_inside_op():
        leaves = [
            t.detach().requires_grad_(True) if t is not None and t.is_floating_point() else t
            for t in inputs
        ]
        outs = fn(*leaves, **static)
        outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None and o.requires_grad]
        wrt = [t for t in leaves if t is not None and t.requires_grad]
        if not pairs or not wrt:
            grads = [None] * len(wrt)
        else:
            grads = torch.autograd.grad(
                [o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True
            )
    it = iter(grads)
    result: list[torch.Tensor | None] = []
    for t in leaves:
        if t is not None and isinstance(t, torch.Tensor) and t.requires_grad:
            g = next(it)
            result.append(torch.zeros_like(t) if g is None else g)
        else:
            result.append(None)
    return result


def empty_like_none(ref: torch.Tensor) -> torch.Tensor:
    """The stand-in for an absent tensor output (op schemas cannot return ``None``)."""
    return ref.new_empty(0)


def contiguous_outputs(outputs) -> tuple[torch.Tensor, ...]:
    """Op outputs made contiguous, as the fakes promise (reference results can be views, and
    Inductor plans with the fakes' strides)."""
    return tuple(t.contiguous() for t in outputs)
