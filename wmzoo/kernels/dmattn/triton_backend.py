"""Triton backend of the DMAttn ops: ``forward``, ``backward`` (the op bodies' signatures) and
``decode`` (for ``DMAttnCache.attend``). Inputs the kernels cannot take raise
``Unsupported`` with the reason; the op then runs the reference.

No host syncs: block tables for varlen are built with device ops (triton_layout), and every
branch depends on shapes, dtypes and the static keep_window only.
"""

from __future__ import annotations

import torch
import triton

from ..registry import INTERPRET, Unsupported, launch
from .triton_bwd import (
    KV_VARLEN_BLOCK_N,
    bwd_kv_kernel,
    bwd_kv_kernel_varlen,
    bwd_kv_window_kernel,
    bwd_q_kernel,
)
from .triton_decode import _decode_kernel, _merge_kernel, _replace_lowest_kernel
from .triton_fwd import fwd_kernel
from .triton_key_order import key_order
from .triton_layout import block_layout
from .triton_select import select_window

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in KERNEL_DTYPES:
            raise Unsupported(f"{name}: dtype {t.dtype} (kernels take float16, bfloat16, float32)")
    if not (q.dtype == k.dtype == v.dtype):
        raise Unsupported(f"q, k, v: mixed dtypes {q.dtype}, {k.dtype}, {v.dtype}")
    if bias.dtype not in KERNEL_DTYPES:
        raise Unsupported(f"bias: dtype {bias.dtype} (kernels take float16, bfloat16, float32)")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise Unsupported(f"q: head dim {q.shape[-1]} > {MAX_HEAD_DIM}")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """Head-dim stride 1, as every kernel assumes (the grad of .sum() has stride 0)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _window(keep_window: int, t: int) -> int:
    """0 = no window; a window at or above the (longest possible) length keeps every causal key."""
    return 0 if keep_window <= 0 or keep_window >= t else keep_window


# Query-block size: the window lists, the thresholds' layout and every query-major kernel share
# it. The interpreter runs fewer, larger programs faster, and 32 still gives several blocks at
# the test sizes; on the GPU 128 queries per block amortize each gathered key over more rows.
BLOCK_M = 32 if INTERPRET else 128


def _flags(q: torch.Tensor, d: int, varlen: bool) -> dict:
    """Constexprs every DMAttn kernel takes. EVEN: a dense batch (sequences start at 0, blocks at
    multiples of the block sizes) with d a power of two, so whole tiles need no masks."""
    block_d = max(16, triton.next_power_of_2(d))
    return dict(BLOCK_D=block_d, UPCAST=INTERPRET and not q.is_cuda, IEEE=q.dtype == torch.float32,
                EVEN=not varlen and d == block_d)


def empty_window_lists(q, k, v, bias, cu_seqlens, keep_window: int):
    """Uninitialized (kept, kept_bias, theta, count) of the shapes ``forward_with_window`` returns when
    the kernels take this input with a window, else None; raises ``Unsupported`` as ``forward``.
    For the op's fake: every shape follows from input shapes and keep_window (block_layout
    builds its tables with device ops only, so it runs on fake tensors without host syncs)."""
    _check(q, k, v, bias)
    b, t = q.shape[:2]
    hkv = k.shape[2]
    w = _window(keep_window, t)
    if not w:
        return None
    n_blocks = block_layout(t, cu_seqlens, BLOCK_M, q.device).n_blocks
    return (q.new_empty((b, hkv, n_blocks, w), dtype=torch.int32),
            q.new_empty((b, hkv, n_blocks, w), dtype=torch.float32),
            q.new_empty((b, hkv, t), dtype=torch.int32), q.new_empty((b, hkv, t), dtype=torch.int32))


def forward(q, k, v, bias, cu_seqlens, keep_window: int, scale: float):
    """o, lse (for callers that do not run a backward)."""
    return forward_with_window(q, k, v, bias, cu_seqlens, keep_window, scale)[:2]


def forward_with_window(q, k, v, bias, cu_seqlens, keep_window: int, scale: float):
    """o, lse and the window selection (kept, kept_bias, theta, count; see triton_select), which the
    backward takes instead of selecting again; None instead of the selection without a window."""
    _check(q, k, v, bias)
    q, k, v, bias = _rows(q), _rows(k), _rows(v), bias.contiguous()
    b, t, h, d = q.shape
    hkv = k.shape[2]
    w = _window(keep_window, t)
    layout = block_layout(t, cu_seqlens, BLOCK_M, q.device)
    o = torch.empty_like(q)
    lse = torch.empty((b, h, t), dtype=torch.float32, device=q.device)
    lists = select_window(bias, w, BLOCK_M, layout) if w else None
    kept, kept_bias, theta, count = lists or (layout.blk_info,) * 4  # placeholders without a window, never read
    flags = _flags(q, d, layout.varlen)
    launch(fwd_kernel)[(layout.n_blocks, b * h)](
        q, k, v, bias, o, lse, layout.blk_info, kept, kept_bias, theta, count,
        scale, t, d, h, h // hkv, max(w, 1), layout.n_blocks,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        bias.stride(0), bias.stride(1), lse.stride(0), lse.stride(1),
        kept.stride(0) if w else 0, kept.stride(1) if w else 0,
        theta.stride(0) if w else 0, theta.stride(1) if w else 0,
        VARLEN=layout.varlen, WINDOW=bool(w), BLOCK_M=BLOCK_M, **flags,
    )
    return o, lse, lists


def backward(do, q, k, v, bias, o, lse, kept, kept_bias, theta, count, cu_seqlens, keep_window: int,
             scale: float):
    """dq, dk, dv, dbias; with a window, from the forward's selection (kept, kept_bias, theta,
    count), which are ignored without one."""
    _check(q, k, v, bias)
    do, q, k, v, o = _rows(do), _rows(q), _rows(k), _rows(v), _rows(o)
    bias_c = bias.contiguous()
    lse = lse.contiguous()
    b, t, h, d = q.shape
    hkv = k.shape[2]
    g = h // hkv
    w = _window(keep_window, t)
    # rowsum(dO * O) (b, h, t), written by the dq kernel for the key-major kernels after it
    delta = torch.empty((b, h, t), dtype=torch.float32, device=q.device)
    layout = block_layout(t, cu_seqlens, BLOCK_M, q.device)
    flags = _flags(q, d, layout.varlen)
    dq = torch.empty_like(q)
    if w and (kept.dim() != 4 or kept.shape[-1] != w):  # static shapes only: no sync, no guard
        raise Unsupported(f"kept: shape {tuple(kept.shape)}, expected the forward's window lists "
                          f"(b, hkv, blocks, {w})")
    if w:
        # contiguous: count shares theta's strides in the kernels
        kept, kept_bias, theta, count = (x.contiguous() for x in (kept, kept_bias, theta, count))
    else:
        kept = kept_bias = theta = count = layout.blk_info  # placeholders, never read
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dbias = torch.empty(bias_c.shape, dtype=bias.dtype, device=bias.device)
    launch(bwd_q_kernel)[(layout.n_blocks, b * h)](
        q, k, v, bias_c, do, o, lse, delta, dq,
        layout.blk_info, kept, kept_bias, theta, count,
        scale, t, d, h, g, max(w, 1), layout.n_blocks,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *o.stride()[:3], *dq.stride()[:3],
        bias_c.stride(0), bias_c.stride(1), lse.stride(0), lse.stride(1), delta.stride(0), delta.stride(1),
        kept.stride(0) if w else 0, kept.stride(1) if w else 0,
        theta.stride(0) if w else 0, theta.stride(1) if w else 0,
        VARLEN=layout.varlen, WINDOW=bool(w), BLOCK_M=BLOCK_M, **flags,
    )
    # dk, dv, dbias key-major, deterministic: with a window over tiles of keys sorted by the last
    # query keeping them (triton_key_order), without one over blocks of consecutive keys
    args = (q, k, v, bias_c, do, lse, delta, dk, dv, dbias)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
               *dk.stride()[:3], *dv.stride()[:3], dbias.stride(0), dbias.stride(1),
               bias_c.stride(0), bias_c.stride(1), lse.stride(0), lse.stride(1), delta.stride(0), delta.stride(1))
    if w:
        order, last = key_order(bias_c, theta, w, layout)  # same (contiguous) layout, one stride pair
        launch(bwd_kv_window_kernel)[lambda meta: (triton.cdiv(t, meta["BLOCK_N"]), b * hkv)](
            *args, order, last, scale, t, d, hkv, g, *strides, order.stride(0), order.stride(1),
            BLOCK_D=flags["BLOCK_D"], UPCAST=flags["UPCAST"], IEEE=flags["IEEE"])
    elif cu_seqlens is None:
        n_blk = lambda meta: triton.cdiv(t, meta["BLOCK_N"])  # noqa: E731
        launch(bwd_kv_kernel)[lambda meta: (n_blk(meta), b * hkv)](
            *args, layout.blk_info, scale, t, d, hkv, g, 0, *strides, VARLEN=False, **flags)
    else:
        kv_layout = block_layout(t, cu_seqlens, KV_VARLEN_BLOCK_N, q.device)
        launch(bwd_kv_kernel_varlen)[(kv_layout.n_blocks, b * hkv)](
            *args, kv_layout.blk_info, scale, t, d, hkv, g, kv_layout.n_blocks, *strides,
            VARLEN=True, BLOCK_N=KV_VARLEN_BLOCK_N, **flags)
    return dq, dk, dv, dbias


def decode(q, k_cache, v_cache, bias_cache, valid, scale):
    """o (b, 1, h, d) for q (b, 1, h, d) against slots k_cache, v_cache (b, s, hkv, d),
    bias_cache (b, hkv, s) and valid (b, hkv, s) (bool): softmax over the valid slots.
    Two launches and three allocations: decode is bound by host time per call, not bytes."""
    _check(q, k_cache, v_cache, bias_cache)
    q, k_cache, v_cache, bias_cache = _rows(q), _rows(k_cache), _rows(v_cache), _rows(bias_cache)
    valid = _rows(valid).view(torch.int8)  # same bytes as bool: no conversion kernel
    b, _, h, d = q.shape
    s, hkv = k_cache.shape[1], k_cache.shape[2]
    block_n = 64
    # split-K: ~1024 programs in all (several per SM), at least 4 tiles each; chunks of whole
    # tiles. (Measured on the H200 with 256 programs: the 64K full-cache decode ran at 0.8 TB/s.)
    n_split = max(1, min(triton.cdiv(s, 4 * block_n), triton.cdiv(1024, b * h) if q.is_cuda else 4))
    chunk = triton.cdiv(triton.cdiv(s, n_split), block_n) * block_n
    n_split = max(1, triton.cdiv(s, chunk))
    block_d = max(16, triton.next_power_of_2(d))
    acc = torch.empty((b, h, n_split, block_d), dtype=torch.float32, device=q.device)
    ml = torch.empty((2, b, h, n_split), dtype=torch.float32, device=q.device)
    m, lsum = ml[0], ml[1]
    launch(_decode_kernel)[(b * h, n_split)](
        q, k_cache, v_cache, bias_cache, valid, acc, m, lsum,
        scale, s, d, h, h // hkv, chunk,
        q.stride(0), q.stride(2), *k_cache.stride()[:3], *v_cache.stride()[:3],
        bias_cache.stride(0), bias_cache.stride(1), valid.stride(0), valid.stride(1), m.stride(0), m.stride(1),
        BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4,
    )
    out = torch.empty_like(q)
    launch(_merge_kernel)[(b * h,)](
        acc, m, lsum, out, d, n_split, out.stride(0), out.stride(2), h,
        BLOCK_S=max(2, triton.next_power_of_2(n_split)), BLOCK_D=block_d, num_warps=4,
    )
    return out


REPLACE_BLOCK_S = 1024  # slots per step of replace_lowest's scan (a test sets fewer: several steps)


def replace_lowest(k_cache, v_cache, bias_cache, pos_cache, k, v, bias, position: int) -> None:
    """In place: each (batch, kv head)'s lowest-ranked cached key gives its slot to the new key
    k, v (b, 1, hkv, d), bias (b, hkv, 1) at ``position`` iff the new key ranks above it.
    Caches as DMAttnCache holds them (every slot filled); one launch."""
    b, s, hkv, d = k_cache.shape
    for name, t in (("k cache", k_cache), ("v cache", v_cache), ("bias cache", bias_cache), ("positions", pos_cache)):
        if t.stride(-1) != 1:  # the caches are made and replaced whole by DMAttnCache: never
            raise Unsupported(f"{name}: last-dim stride {t.stride(-1)} (the kernel takes 1)")
    k, v = _rows(k), _rows(v)
    launch(_replace_lowest_kernel)[(b * hkv,)](
        k_cache, v_cache, bias_cache, pos_cache, k, v, bias, position,
        s, d, hkv,
        *k_cache.stride()[:3], *v_cache.stride()[:3], *bias_cache.stride()[:2], *pos_cache.stride()[:2],
        k.stride(0), k.stride(2), v.stride(0), v.stride(2), bias.stride(0), bias.stride(1),
        BLOCK_S=min(REPLACE_BLOCK_S, triton.next_power_of_2(s)), BLOCK_D=max(16, triton.next_power_of_2(d)), num_warps=4,
    )
