"""Triton backend of the SSD ops: ``forward``, ``backward``, ``step`` (the op bodies' argument
lists and return tuples, see op.py) and ``warmup``. Inputs the kernels cannot take raise
``Unsupported`` with the reason; the op body then runs the reference.

No host syncs: sequence boundaries are read from ``cu_seqlens`` inside the kernels, and every
branch here depends on shapes and dtypes only. With fewer (sequence, head) programs than SMs,
each sequence is cut into segments that run in parallel (``segments``, triton_segments). The
backward runs the forward sweep, then the chunk-local kernel over all chunks at once, then the
reverse sweep, which adds the state terms to the local ones (triton_bwd). They write dB~ and dC~
(gradients w.r.t. the rotated B, C) per head; with g < h, summing each group's heads is a torch
op after them (fp32 per-head buffers), with g = h they write in place; with RoPE, one
elementwise kernel then turns them back (RoPE's transpose).
"""

from __future__ import annotations

import torch
import triton

from ..registry import Unsupported, empty_like_none, launch
from .triton_bwd import _ssd_bwd_chunk_local, _ssd_bwd_forward_sweep, _ssd_bwd_reverse_sweep
from .triton_common import DOT_BF16, DOT_FP16, DOT_IEEE, _unrotate_kernel
from .triton_fwd import _ssd_fwd_kernel
from .triton_segments import (
    _ssd_chain_dstates,
    _ssd_chain_states,
    _ssd_segment_dstates,
    _ssd_segment_states,
)
from .triton_step import _ssd_step_kernel

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_P = 128  # the backward keeps p x n states and several chunk x p tiles in registers
MAX_N = 256
# The chunk is a tl.dot side too (see MIN_TILE_CUDA); 128 overflows shared memory / registers.
CHUNK_SIZES_CUDA = (64,)
CHUNK_SIZES_CPU = (16, 32, 64)
# Fewer (sequence, head) programs than this and the forward splits p into blocks to fill the GPU.
MIN_PROGRAMS = 264
# Fewer programs than one wave of the H200's 132 SMs and each sequence is cut into segments that
# run in parallel (triton_segments), up to MAX_SEGMENTS of them, aiming at MIN_PROGRAMS.
ONE_WAVE = 132
MAX_SEGMENTS = 16
# The chain kernels' tiles: elementwise only (no tl.dot, so no tile-side minimum).
CHAIN_BLOCK_P = 16
# Smallest tile side of any tl.dot. On the H200 with triton 3.6 (benchmarks/ssd_probe_configs.py,
# docs/benchmarks/ssd.md) every probed config gave wrong results or illegal memory accesses
# once some dot had a side of 16 or 32 (p blocks, the RoPE halves of an earlier tile layout),
# and every config was correct with all sides >= 64; so on CUDA tiles are padded (masked) up
# to 64. tl.dot's own minimum, 16, is kept on CPU, where the interpreter computes dots exactly.
MIN_TILE_CUDA = 64
MIN_TILE_CPU = 16


def _check(x, dt, A, B, C, D, state, rope_cos, chunk_size: int | None) -> None:
    """Raise Unsupported, in words, for what the kernels cannot take."""
    if x.dtype not in KERNEL_DTYPES:
        raise Unsupported(f"x: dtype {x.dtype} (the kernels take float16, bfloat16, float32)")
    if A.dtype != torch.float32:
        raise Unsupported(f"A: dtype {A.dtype} (the kernels take float32)")
    if state is not None and state.dtype != torch.float32:
        raise Unsupported(f"state: dtype {state.dtype} (the kernels keep float32 states)")
    if D is not None and D.dtype == torch.float64:
        raise Unsupported("D: dtype float64 (the kernels take float32 or x's dtype)")
    if dt.dtype == torch.float64:
        raise Unsupported("dt: dtype float64 (the kernels take float32 or x's dtype)")
    if x.shape[-1] > MAX_P:
        raise Unsupported(f"x: head dim p = {x.shape[-1]} > {MAX_P}")
    if B.shape[-1] > MAX_N:
        raise Unsupported(f"B: state size n = {B.shape[-1]} > {MAX_N}")
    sizes = CHUNK_SIZES_CUDA if x.is_cuda else CHUNK_SIZES_CPU
    if chunk_size is not None and chunk_size not in sizes:
        raise Unsupported(f"chunk_size = {chunk_size} (the kernels take {sizes} on {x.device.type})")


def _dot(x: torch.Tensor) -> int:
    if not x.is_cuda or x.dtype == torch.float32:
        return DOT_IEEE
    return DOT_BF16 if x.dtype == torch.bfloat16 else DOT_FP16


def _pow2(v: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(v))  # tl.dot needs every dimension >= 16


def _min_tile(x: torch.Tensor) -> int:
    return MIN_TILE_CUDA if x.is_cuda else MIN_TILE_CPU


def _tiles(p: int, n: int, half: int, floor: int) -> dict:
    """Tile sizes of p and of all n channels (RoPE rotates on load, so it changes no tile)."""
    return dict(BLOCK_P=_pow2(p, floor), NB=_pow2(n, floor), ROPE=half > 0)


# The forward and the backward's sweeps cut B / C and the state into rotated and plain channel
# tiles (PLAIN, triton_fwd) where RoPE leaves channels plain and both parts' padded widths fit
# in one tile's. At r 64 of n 128 (ssd.md run 16, an H100): forward 1.218 -> 0.702 ms (0.423
# without RoPE), and the sweeps' cut takes forward+backward from 8.00 to 5.90 ms (4.35).
SPLIT_ROPE_FORWARD = True
SPLIT_ROPE_BACKWARD = True
# At r = n (the SSD block's default) they cut at r / 2 instead, into the halves RoPE turns
# against each other (PAIRED): forward 1.270 -> 0.794 ms, forward+backward 8.74 -> 8.28 with
# the forward's halves and 6.78 with the sweeps' too (run 16). The switches stay for
# benchmarks/ssd_rope_probe.py, which times each form against the others.
PAIRED_ROPE_FORWARD = True
PAIRED_ROPE_BACKWARD = True


def _rope_tiles(tiles: dict, n: int, half: int, floor: int, split: bool) -> dict:
    """A kernel's column tiles: NR channels in the first tile (NB wide), the rest in a plain
    one (PB wide) when PLAIN."""
    if split and 0 < 2 * half < n:
        nb, pb = _pow2(2 * half, floor), _pow2(n - 2 * half, floor)
        if nb + pb <= tiles["NB"]:
            return dict(tiles, NB=nb, NR=2 * half, PLAIN=True, PB=pb)
    return dict(tiles, NR=n, PLAIN=False, PB=floor)  # PB unused


def _column_tiles(tiles: dict, n: int, half: int, floor: int, split: bool, paired: bool) -> dict:
    """A kernel's column tiles: the halves of r = n (PAIRED) where they fit one tile, else
    _rope_tiles'."""
    hb = _pow2(half, floor)
    if paired and 2 * half == n and 2 * hb <= tiles["NB"]:
        return dict(tiles, NB=hb, NR=half, PLAIN=True, PB=hb, PAIRED=True)
    return dict(_rope_tiles(tiles, n, half, floor, split), PAIRED=False)


UNROTATE_BLOCK_T = 64


def _unrotate(d: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int) -> torch.Tensor:
    """RoPE's transpose applied in place to d (tokens, heads, n), a gradient w.r.t. rotated
    channels; tables (tokens, half). Returns d."""
    tokens, heads, n = d.shape
    launch(_unrotate_kernel)[(triton.cdiv(tokens, UNROTATE_BLOCK_T), heads)](
        d, cos, sin, tokens, heads, n, half, BLOCK_T=UNROTATE_BLOCK_T, HB=_pow2(half))
    return d


def _rope(rope_cos, rope_sin, dummy):
    if rope_cos is None:
        return dummy, dummy, 0
    # int(): under torch.compile(dynamic=True) sizes are symbolic; tile sizes must be constants.
    return rope_cos.contiguous(), rope_sin.contiguous(), int(rope_cos.shape[-1])


def _output(like: torch.Tensor, varlen: bool, dtype=None) -> torch.Tensor:
    # With cu_seqlens only the tokens inside [0, cu_seqlens[-1]) are written; zero the rest.
    make = torch.zeros_like if varlen else torch.empty_like
    return make(like, dtype=dtype)


def segments(programs: int, device: torch.device) -> int:
    """Segments per sequence for a grid of ``programs`` (sequence, head[, p block]) programs.

    On CUDA below one wave of SMs, enough segments for about MIN_PROGRAMS programs; 1 otherwise
    and on CPU (the tests set this through ``FORCE_SEGMENTS``)."""
    if FORCE_SEGMENTS:
        return FORCE_SEGMENTS
    if device.type != "cuda" or programs >= ONE_WAVE:
        return 1
    # int(): a kernel constexpr depends on it; under torch.compile(dynamic=True) this specializes
    # on the (small) grid size only on this path
    return int(min(MAX_SEGMENTS, triton.cdiv(MIN_PROGRAMS, programs)))


FORCE_SEGMENTS = 0  # > 0: that many segments everywhere (tests of the segmented path on CPU)

# The backward's chunk-local kernel: its programs (sequence x piece, head) take runs of chunks of
# one sequence (no state between them). A fixed count, not one derived from the batch: under
# torch.compile(dynamic=True) a count computed from the number of sequences would specialize
# the graph on it (a packed varlen batch has a new count at every step). 16 pieces make 4096
# programs at B4 H64 (4 chunks each), 512 at B1 H32 (T 32768: 32 chunks each).
LOCAL_PIECES_CUDA = 16
FORCE_LOCAL_PIECES = 0  # > 0: that many pieces everywhere (tests of the GPU's split on CPU)


def local_pieces(device: torch.device) -> int:
    """Runs of chunks per sequence for the chunk-local kernel (CPU: one, the interpreter is
    fastest with few programs)."""
    if FORCE_LOCAL_PIECES:
        return FORCE_LOCAL_PIECES
    return LOCAL_PIECES_CUDA if device.type == "cuda" else 1


def _segment_states(x, dt, A, B, initial_state, cu_seqlens, cos, sin, half, seqs, segs, chunk_size, tiles):
    """The state entering every segment (seqs x segs, h, p, n) and the final state (seqs, h, p, n)."""
    b, t, h, p = x.shape
    g, n = int(B.shape[-2]), int(B.shape[-1])
    states = x.new_empty(seqs * segs, h, p, n, dtype=torch.float32)
    dec = x.new_empty(seqs * segs, h, dtype=torch.float32)
    cu = A if cu_seqlens is None else cu_seqlens
    launch(_ssd_segment_states)[(seqs * segs, h, triton.cdiv(p, tiles["BLOCK_P"]))](
        x, dt, A, B, cu, cos, sin, states, dec,
        t, h, g, p, n, half, segs,
        HAS_CU=cu_seqlens is not None, Q=chunk_size, DOT=_dot(x), **tiles,
    )
    final = x.new_empty(seqs, h, p, n, dtype=torch.float32)
    launch(_ssd_chain_states)[(seqs, h, triton.cdiv(p, CHAIN_BLOCK_P))](
        states, dec, A if initial_state is None else initial_state.contiguous(), final, h, p, n, segs,
        HAS_H0=initial_state is not None, BLOCK_P=CHAIN_BLOCK_P, BLOCK_N=_pow2(n),
    )
    return states, dec, final


def forward(x, dt, A, B, C, D, initial_state, cu_seqlens, rope_cos, rope_sin, chunk_size):
    _check(x, dt, A, B, C, D, initial_state, rope_cos, chunk_size)
    b, t, h, p = x.shape
    g, n = int(B.shape[-2]), int(B.shape[-1])
    seqs = b if cu_seqlens is None else cu_seqlens.shape[0] - 1
    x, dt, B, C = x.contiguous(), dt.contiguous(), B.contiguous(), C.contiguous()
    cos, sin, half = _rope(rope_cos, rope_sin, A)
    tiles = _tiles(int(p), n, half, _min_tile(x))
    while x.is_cuda and tiles["BLOCK_P"] > MIN_TILE_CUDA and seqs * h * triton.cdiv(p, tiles["BLOCK_P"]) < MIN_PROGRAMS:
        tiles["BLOCK_P"] //= 2
    p_blocks = triton.cdiv(p, tiles["BLOCK_P"])
    segs = segments(seqs * h * p_blocks, x.device)
    y = _output(x, cu_seqlens is not None)
    if segs > 1:  # start states of the segments first; the final state comes with them
        starts, _, final = _segment_states(x, dt, A, B, initial_state, cu_seqlens, cos, sin, half,
                                           seqs, segs, chunk_size, tiles)
    else:
        starts = initial_state.contiguous() if initial_state is not None else None
        final = x.new_empty(seqs, h, p, n, dtype=torch.float32)
    launch(_ssd_fwd_kernel)[(seqs * segs, h, p_blocks)](
        x, dt, A, B, C, A if D is None else D, A if starts is None else starts,
        A if cu_seqlens is None else cu_seqlens, cos, sin,
        y, final,
        t, h, g, p, n, half, segs,
        HAS_D=D is not None, HAS_H0=starts is not None, HAS_CU=cu_seqlens is not None,
        WRITE_FINAL=segs == 1, Q=chunk_size, DOT=_dot(x),
        **_column_tiles(tiles, n, half, _min_tile(x), SPLIT_ROPE_FORWARD, PAIRED_ROPE_FORWARD),
    )
    return y, final


def _grad_buffer(like: torch.Tensor, h: int, varlen: bool) -> torch.Tensor:
    """Where the kernels write dB or dC per head: the gradient itself when g = h, else fp32."""
    b, t, g, n = like.shape
    dtype = like.dtype if g == h else torch.float32
    make = torch.zeros if varlen else torch.empty
    return make(b * t, h, n, dtype=dtype, device=like.device)


def _group_grad(d_heads: torch.Tensor, like: torch.Tensor, cos, sin, half: int) -> torch.Tensor:
    """dB or dC from the kernels' per-head gradients w.r.t. the rotated B~ / C~: the heads of
    each group summed (g < h, in fp32), then RoPE's transpose, then like's dtype."""
    b, t, g, n = like.shape
    d = d_heads if d_heads.shape[1] == g else d_heads.view(b * t, g, -1, n).sum(2)
    if half:
        _unrotate(d, cos, sin, half)
    return d.view(b, t, g, n).to(like.dtype)


def backward(dy, dfinal_state, x, dt, A, B, C, D, initial_state, cu_seqlens, rope_cos, rope_sin,
             chunk_size):
    _check(x, dt, A, B, C, D, initial_state, rope_cos, chunk_size)
    if dfinal_state is not None and dfinal_state.dtype != torch.float32:
        raise Unsupported(f"dfinal_state: dtype {dfinal_state.dtype} (the kernels take float32)")
    b, t, h, p = x.shape
    g, n = int(B.shape[-2]), int(B.shape[-1])
    seqs = b if cu_seqlens is None else cu_seqlens.shape[0] - 1
    varlen = cu_seqlens is not None
    x, dt, B, C, dy = x.contiguous(), dt.contiguous(), B.contiguous(), C.contiguous(), dy.contiguous()
    cos, sin, half = _rope(rope_cos, rope_sin, A)
    cu = A if cu_seqlens is None else cu_seqlens
    tiles = _tiles(int(p), n, half, _min_tile(x))
    common = dict(Q=chunk_size, DOT=_dot(x), **tiles)
    segs = segments(seqs * h, x.device)
    grid = (seqs * segs, h)
    if segs > 1:
        # Start states (forward chain) and the dS arriving at every segment's end plus its
        # carry of dL/dG (reverse chain), so that the two sweeps run every segment in parallel.
        starts, dec, final = _segment_states(x, dt, A, B, initial_state, cu_seqlens, cos, sin, half,
                                             seqs, segs, chunk_size, tiles)
        ends = x.new_empty(seqs * segs, h, p, n, dtype=torch.float32)
        launch(_ssd_segment_dstates)[grid](
            dy, dt, A, C, cu, cos, sin, ends, t, h, g, p, n, half, segs, HAS_CU=varlen, **common)
        npb = triton.cdiv(p, CHAIN_BLOCK_P)
        carry_parts = x.new_empty(seqs * segs, h, npb, dtype=torch.float32)
        launch(_ssd_chain_dstates)[(seqs, h, npb)](
            ends, dec, starts, final, A if dfinal_state is None else dfinal_state.contiguous(), carry_parts,
            h, p, n, segs, npb, HAS_DFINAL=dfinal_state is not None, BLOCK_P=CHAIN_BLOCK_P, BLOCK_N=_pow2(n))
        carry = carry_parts.sum(-1)
    else:
        starts = initial_state.contiguous() if initial_state is not None else None
        ends = dfinal_state.contiguous() if dfinal_state is not None else None

    # The sweeps' B / C column tiles (see SPLIT_ROPE_BACKWARD)
    columns = _column_tiles(tiles, n, half, _min_tile(x), SPLIT_ROPE_BACKWARD, PAIRED_ROPE_BACKWARD)
    dC_heads = _grad_buffer(C, h, varlen)
    c_dc = x.new_empty(b * t, h, dtype=torch.float32)  # C~_t . dC~_t (state part)
    d_final = x.new_empty(seqs * segs, h, dtype=torch.float32)  # <dfinal, final> (one segment)
    launch(_ssd_bwd_forward_sweep)[grid](
        dy, A if ends is None else ends, x, dt, A, B, C, A if starts is None else starts,
        cu, cos, sin,
        dC_heads, c_dc, d_final,
        t, h, g, p, n, half, segs,
        HAS_DFINAL=segs == 1 and ends is not None, HAS_H0=starts is not None, HAS_CU=varlen,
        Q=chunk_size, DOT=_dot(x), **columns,
    )

    dx = _output(x, varlen)
    ddt = _output(dt, varlen)
    dB_heads = _grad_buffer(B, h, varlen)
    # In-chunk terms first, all chunks in parallel, in fp32 buffers of their own (never aliased
    # with the outputs: a traced graph sees each kernel's writes separately); the reverse sweep
    # adds the state terms. Only rows of sequences are written and read.
    # With RoPE the reverse sweep computes them itself: each kernel that rotates B and C pays
    # the rotation, and a third one cost more than it saved (ssd.md runs 12 and 16).
    local = half == 0
    if local:
        dB_local = x.new_empty(b * t, h, n, dtype=torch.float32)
        dxd_local = x.new_empty(b * t, h, p, dtype=torch.float32)
        dG_local = x.new_empty(b * t, h, dtype=torch.float32)
        pieces = local_pieces(x.device)
        launch(_ssd_bwd_chunk_local)[(seqs * pieces, h)](
            dy, x, dt, A, B, C, cu,
            dB_local, dxd_local, dG_local,
            t, h, g, p, n, pieces,
            HAS_CU=varlen, Q=chunk_size, DOT=_dot(x), BLOCK_P=tiles["BLOCK_P"], NB=tiles["NB"],
        )
    else:
        dB_local = dxd_local = dG_local = c_dc  # not read (LOCAL off)
    dA_part = x.new_empty(seqs * segs, h, dtype=torch.float32)
    dD_part = x.new_empty(seqs * segs, h, dtype=torch.float32)
    dh0 = x.new_empty(seqs, h, p, n, dtype=torch.float32)
    launch(_ssd_bwd_reverse_sweep)[grid](
        dy, A if ends is None else ends, x, dt, A, B, C, A if D is None else D, cu, cos, sin,
        c_dc, carry if segs > 1 else d_final, dB_local, dxd_local, dG_local,
        dx, ddt, dB_heads, dA_part, dD_part, dh0,
        t, h, g, p, n, half, segs,
        HAS_DFINAL=ends is not None, HAS_D=D is not None, HAS_CU=varlen, LOCAL=local,
        Q=chunk_size, DOT=_dot(x), **columns,
    )

    dA = dA_part.sum(0).to(A.dtype)
    dD = empty_like_none(x) if D is None else dD_part.sum(0).to(D.dtype)
    d_initial = empty_like_none(x) if initial_state is None else dh0
    dB = _group_grad(dB_heads, B, cos, sin, half)
    dC = _group_grad(dC_heads, C, cos, sin, half)
    return dx, ddt, dA, dB, dC, dD, d_initial


def step(state, x, dt, A, B, C, D, rope_cos, rope_sin):
    _check(x, dt, A, B, C, D, state, rope_cos, None)
    b, h, p = x.shape
    g, n = B.shape[-2:]
    x, dt, B, C, state = x.contiguous(), dt.contiguous(), B.contiguous(), C.contiguous(), state.contiguous()
    cos, sin, half = _rope(rope_cos, rope_sin, A)
    block_p, block_n = min(_pow2(p), 32), _pow2(n)  # small p blocks: more programs stream states
    y = torch.empty_like(x)
    new = torch.empty_like(state)
    launch(_ssd_step_kernel)[(b, h, triton.cdiv(p, block_p))](
        state, x, dt, A, B, C, A if D is None else D, cos, sin,
        y, new,
        h, g, p, n, half,
        HAS_D=D is not None, ROPE=half > 0, BLOCK_P=block_p, BLOCK_N=block_n,
    )
    return y, new


def warmup(heads: int, groups: int, p: int, n: int, *, dtype=torch.bfloat16, chunk_size: int = 64,
           rope_dim: int = 0, batch: int = 1, seqlen: int = 2048, device: str = "cuda") -> None:
    """Compile and tune the forward and backward kernels for one configuration.

    The autotune key holds the head / state sizes, chunk size, dtype and RoPE, never the
    sequence length, so after this no new length pays for tuning. Tuning times the candidate
    configs on ``batch`` x ``seqlen``: pass a length like the training one.
    """
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    x = rand(batch, seqlen, heads, p).to(dtype)
    dt = torch.rand(batch, seqlen, heads, generator=gen, device=device) * 0.1
    A = -torch.rand(heads, generator=gen, device=device)
    B, C = rand(batch, seqlen, groups, n).to(dtype), rand(batch, seqlen, groups, n).to(dtype)
    cos = sin = None
    if rope_dim:
        angle = rand(batch, seqlen, rope_dim // 2)
        cos, sin = angle.cos(), angle.sin()
    y, final = forward(x, dt, A, B, C, None, None, None, cos, sin, chunk_size)
    backward(torch.ones_like(y), torch.ones_like(final), x, dt, A, B, C, None, None, None, cos, sin,
             chunk_size)
