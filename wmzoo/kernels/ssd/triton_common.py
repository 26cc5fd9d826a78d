"""Triton pieces shared by the SSD kernels: B / C tiles with RoPE applied on load, state tiles,
the matrix product in the precision the inputs allow, and each program's token range.

Every chunked SSD kernel runs one program per (sequence, head[, block of p]) and walks that
sequence's chunks in order; with too few such programs to fill the GPU, per (segment of a
sequence, head[, block of p]) instead (triton_segments: each segment's start state is found
first, then the segments run in parallel). A packed varlen batch is just a list of sequences whose token
ranges come from ``cu_seqlens`` (read inside the kernel: no host sync); chunks start at each
sequence's first token, so a chunk never holds two sequences and no state crosses a boundary.

RoPE on load: ``load_rotated`` forms a rotated tile from the plain load and gathers of each
channel's rotation partner (channel i pairs with i + r/2 for i < r/2) and of its cos / sin;
``load_rotated_halves`` loads the two halves a rotation pairs as separate plain tiles and turns
them against each other (``load_paired_halves``: B's and C's, one table pair for both). B~, C~
and the p x n state are single n-wide tiles, or cut by column (triton_fwd's PLAIN: the rotated
and the plain channels, or the two halves at r = n), with the state parts loaded and stored by
``load_state_cols`` / ``store_state_cols``. The backward's
kernels produce gradients w.r.t. the rotated B~ and C~; RoPE's transpose is applied to them
afterwards by ``_unrotate_kernel`` (elementwise, in place).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..registry import INTERPRET

# The autotune key of the chunked kernels: tile shapes and modes, never lengths, batch, head or
# group counts, so a new length never re-tunes.
TILE_KEY = ["P", "N", "Q", "BLOCK_P", "NB", "ROPE", "DOT"]


def configs(warps_stages):
    """Autotune configs from (num_warps, num_stages) pairs; the interpreter takes exactly one."""
    if INTERPRET:
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in warps_stages]


# Codes of the DOT constexpr: how tl.dot multiplies (see `mm`).
DOT_IEEE = 0  # fp32 inputs, or the CPU interpreter: exact fp32 products
DOT_BF16 = 1  # bf16 inputs on the GPU: bf16 tensor cores, fp32 accumulation
DOT_FP16 = 2  # fp16 inputs on the GPU


@triton.jit
def mm(a, b, DOT: tl.constexpr):
    """a @ b with fp32 accumulation; operands rounded to the inputs' half type on the GPU."""
    if DOT == 1:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif DOT == 2:
        return tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def operand(z, DOT: tl.constexpr):
    """z as tl.dot sees it (rounded to the inputs' half type on the GPU), back in fp32.

    A value used both inside a product and elementwise (RoPE-rotated B / C in the backward) must
    be the same value on both sides, or terms that should cancel in dL/dG do not.
    """
    if DOT == 1:
        return z.to(tl.bfloat16).to(tl.float32)
    elif DOT == 2:
        return z.to(tl.float16).to(tl.float32)
    else:
        return z


@triton.jit
def mm_split_b(a, b, DOT: tl.constexpr):
    """a @ b to ~fp32 accuracy where a is exact in the half type and b (fp32) is not: b = hi + lo.

    For the backward's state products: dL/dG sums them over the whole sequence, where they
    cancel pairwise, so one rounding of the state to bf16 (2^-9) would swamp dA (measured 1e-2 ..
    3e-2 relative on the H200; docs/benchmarks/NOTES.md).
    """
    if DOT == 0:
        return mm(a, b, DOT)
    hi = operand(b, DOT)
    return mm(a, hi, DOT) + mm(a, b - hi, DOT)


@triton.jit
def mm_split_a(a, b, DOT: tl.constexpr):
    """a @ b to ~fp32 accuracy where b is exact in the half type and a (fp32) is not."""
    if DOT == 0:
        return mm(a, b, DOT)
    hi = operand(a, DOT)
    return mm(hi, b, DOT) + mm(a - hi, b, DOT)


@triton.jit
def sequence_range(cu_ptr, k, T, HAS_CU: tl.constexpr):
    """First and one-past-last flattened token of sequence k (batch row k without cu_seqlens)."""
    if HAS_CU:
        start = tl.load(cu_ptr + k).to(tl.int64)
        end = tl.load(cu_ptr + k + 1).to(tl.int64)
    else:
        start = k.to(tl.int64) * T
        end = start + T
    return start, end


# Each chunked kernel spells out its prologue (program_chunks, its group's B / C columns, A)
# rather than calling a helper that takes and returns the pointers: torch's analysis of which
# tensors a traced Triton kernel writes then counts every pointer passed through such a nested
# helper as written (x, B, C, A, cu_seqlens), and a compiled graph would copy them before each
# launch (tests/test_traced_writes.py caught it).
@triton.jit
def program_chunks(cu_ptr, k, T, Q: tl.constexpr, SEGS, HAS_CU: tl.constexpr):
    """Token range [start, end) of the sequence of program ``k`` (= sequence x SEGS + segment)
    and the chunks [c0, c1) of its segment: equal runs of whole chunks, the last ones short or
    empty. With SEGS = 1, the whole sequence."""
    start, end = sequence_range(cu_ptr, k // SEGS, T, HAS_CU)
    nch = tl.cdiv(end - start, Q)
    per = tl.cdiv(nch, SEGS)
    c0 = tl.minimum((k % SEGS) * per, nch)
    return start, end, c0, tl.minimum(c0 + per, nch)


@triton.jit
def chunk_decays(dt_ptr, rows, row_mask, H, head, A):
    """dt of a chunk's rows (0 past the sequence end: no decay, no input) and its log decays:
    Lam_t = a_1 + ... + a_t with a = dt A, and Lam_Q."""
    dt = tl.load(dt_ptr + rows * H + head, mask=row_mask, other=0.0).to(tl.float32)
    a = dt * A
    return dt, tl.cumsum(a, axis=0), tl.sum(a, axis=0)


@triton.jit
def load_cols(ptr, row_stride, rows, row_mask, col0, width, BLOCK: tl.constexpr):
    """Columns [col0, col0 + width) of rows ``rows`` of a (tokens, row_stride) view, fp32."""
    cols = tl.arange(0, BLOCK)
    mask = row_mask[:, None] & (cols[None, :] < width)
    return tl.load(ptr + rows[:, None] * row_stride + col0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_cols(ptr, row_stride, rows, row_mask, col0, width, value, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    mask = row_mask[:, None] & (cols[None, :] < width)
    tl.store(ptr + rows[:, None] * row_stride + col0 + cols[None, :], value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def state_tile(k, head, H, P, N, offs_p, NB: tl.constexpr):
    """Offsets and mask of the (block of p) x n tile of state (k, head) in a (states, h, p, n)
    buffer."""
    return state_cols_tile(k, head, H, P, N, offs_p, 0, N, NB)


@triton.jit
def state_cols_tile(k, head, H, P, N, offs_p, col0, width, NB: tl.constexpr):
    """The same for channels [col0, col0 + width) of the state (a column part, NB wide)."""
    cols = tl.arange(0, NB)
    offs = ((k.to(tl.int64) * H + head) * P + offs_p[:, None]) * N + col0 + cols[None, :]
    return offs, (offs_p[:, None] < P) & (cols[None, :] < width)


@triton.jit
def load_state_cols(ptr, k, head, H, P, N, offs_p, col0, width, PRESENT: tl.constexpr,
                    BLOCK_P: tl.constexpr, NB: tl.constexpr):
    """Channels [col0, col0 + width) of state k of a (states, h, p, n) fp32 buffer; zeros where
    the input is not PRESENT."""
    s = tl.zeros([BLOCK_P, NB], dtype=tl.float32)
    if PRESENT:
        offs, mask = state_cols_tile(k, head, H, P, N, offs_p, col0, width, NB)
        s = tl.load(ptr + offs, mask=mask, other=0.0)
    return s


@triton.jit
def store_state(ptr, k, head, H, P, N, offs_p, s, ok, NB: tl.constexpr):
    """Store state k where the scalar condition ``ok`` holds."""
    store_state_cols(ptr, k, head, H, P, N, offs_p, 0, N, s, ok, NB)


@triton.jit
def store_state_cols(ptr, k, head, H, P, N, offs_p, col0, width, s, ok, NB: tl.constexpr):
    """Store channels [col0, col0 + width) of state k where ``ok`` holds."""
    offs, mask = state_cols_tile(k, head, H, P, N, offs_p, col0, width, NB)
    tl.store(ptr + offs, s, mask=mask & ok)


@triton.jit
def rotate(z, ptr, row_stride, rows, row_mask, cos_ptr, sin_ptr, HALF, NB: tl.constexpr):
    """z (rows, NB), rows of B or C loaded from ptr, rotated by (tokens, HALF) tables:
    z~_i = z_i cos_i - z_{i+HALF} sin_i, z~_{i+HALF} = z_{i+HALF} cos_i + z_i sin_i. Partner
    channels (cache hits: the same rows were just loaded) and tables are read by index gathers.

    Measured on the H200 at B4 T4096 H64 P64 N128, r 64 (docs/benchmarks/NOTES.md, fourth
    session): this form 1.18 / 7.06 ms fwd / fwd+bwd; tables shared by B and C read as two
    contiguous masked loads per half 2.79 / 11.08 (and 270 KB of shared memory at two stages);
    (tokens, n) tables laid out on the host, one plain load each, 1.32 / 9.57."""
    cols = tl.arange(0, NB)
    first = cols < HALF
    rotated = row_mask[:, None] & (cols[None, :] < 2 * HALF)
    partner = tl.where(first, cols + HALF, cols - HALF)
    freq = tl.where(first, cols, cols - HALF)
    zp = tl.load(ptr + rows[:, None] * row_stride + partner[None, :], mask=rotated, other=0.0).to(tl.float32)
    table = rows[:, None] * HALF + freq[None, :]
    cos = tl.load(cos_ptr + table, mask=rotated, other=1.0)
    sin = tl.load(sin_ptr + table, mask=rotated, other=0.0)
    return z * cos + tl.where(first, -1.0, 1.0)[None, :] * zp * sin


@triton.jit
def load_rotated_halves(ptr, row_stride, rows, row_mask, cos, sin, HALF, HB: tl.constexpr):
    """Channels [0, HALF) and [HALF, 2 HALF) of rows of B or C as two (rows, HB) tiles, turned
    against each other by the (rows, HB) tables cos, sin: z~_lo = z_lo cos - z_hi sin, z~_hi =
    z_hi cos + z_lo sin. Plain loads, no gathers; one pair of tables serves B and C."""
    lo = load_cols(ptr, row_stride, rows, row_mask, 0, HALF, HB)
    hi = load_cols(ptr, row_stride, rows, row_mask, HALF, HALF, HB)
    return lo * cos - hi * sin, hi * cos + lo * sin


@triton.jit
def load_paired_halves(Bg, Cg, row_stride, rows, row_mask, cos_ptr, sin_ptr, HALF, HB: tl.constexpr):
    """B~ and C~ of a chunk at r = n as the halves RoPE turns against each other (the kernels'
    PAIRED form): b_lo, c_lo, b_hi, c_hi, each (rows, HB), with the chunk's (rows, HB) tables
    read once for B and C."""
    cos = load_cols(cos_ptr, HALF, rows, row_mask, 0, HALF, HB)
    sin = load_cols(sin_ptr, HALF, rows, row_mask, 0, HALF, HB)
    b_lo, b_hi = load_rotated_halves(Bg, row_stride, rows, row_mask, cos, sin, HALF, HB)
    c_lo, c_hi = load_rotated_halves(Cg, row_stride, rows, row_mask, cos, sin, HALF, HB)
    return b_lo, c_lo, b_hi, c_hi


@triton.jit
def load_rotated(ptr, row_stride, rows, row_mask, cos_ptr, sin_ptr, N, HALF,
                 NB: tl.constexpr, ROPE: tl.constexpr):
    """Rows of B or C (all n channels, fp32), rotated when ROPE."""
    z = load_cols(ptr, row_stride, rows, row_mask, 0, N, NB)
    if ROPE:
        z = rotate(z, ptr, row_stride, rows, row_mask, cos_ptr, sin_ptr, HALF, NB)
    return z


@triton.jit
def _unrotate_kernel(d_ptr, cos_ptr, sin_ptr, TOKENS, HEADS, N, HALF,
                     BLOCK_T: tl.constexpr, HB: tl.constexpr):
    """RoPE's transpose (a turn by -angle) in place on a (tokens, heads, n) gradient w.r.t. the
    rotated channels: d_i <- d~_i cos_i + d~_{i+HALF} sin_i, d_{i+HALF} <- d~_{i+HALF} cos_i -
    d~_i sin_i. One program per (block of tokens, head); elementwise, fp32 inside."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    head = tl.program_id(1)
    row_mask = rows < TOKENS
    cos = load_cols(cos_ptr, HALF, rows, row_mask, 0, HALF, HB)
    sin = load_cols(sin_ptr, HALF, rows, row_mask, 0, HALF, HB)
    base = d_ptr + head * N
    lo, hi = load_rotated_halves(base, HEADS * N, rows, row_mask, cos, -sin, HALF, HB)  # by -angle
    store_cols(base, HEADS * N, rows, row_mask, 0, HALF, lo, HB)
    store_cols(base, HEADS * N, rows, row_mask, HALF, HALF, hi, HB)
