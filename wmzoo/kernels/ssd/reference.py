"""SSD (Mamba2 state space duality) in plain PyTorch: the spec of the op (wonderful-matrices.md, 2).

Recurrence per head: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B~_t^T (h is p x n), y_t = h_t C~_t + D x_t,
with B~, C~ the RoPE-rotated B, C. The chunked algorithm computes the same thing in four parts:
the quadratic (dual) form inside each chunk, each chunk's own end state, the passing of states
from chunk to chunk, and the outputs read from the incoming states.

Packed varlen batches (cu_seqlens) are handled with tensor ops only (no host sync): every
decay between two positions of different sequences is exp(-inf) = 0, each sequence's initial
state enters at its first token and each sequence's final state is read at its last token.
All math runs in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..rope import rope_reference
from ..varlen import seq_idx_from_cu_seqlens

NEG_INF = float("-inf")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 inputs are computed (and their states kept) in fp64, everything else in fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the diagonal.

    Summed by a masked cumsum rather than as a difference of two cumsums, so it stays exact
    where a holds -inf (a chunk whose incoming state belongs to another sequence).
    """
    size = a.shape[-1]
    ones = torch.ones(size, size, dtype=torch.bool, device=a.device)
    rep = a[..., :, None].expand(*a.shape, size).masked_fill(~ones.tril(-1), 0.0)
    return rep.cumsum(dim=-2).masked_fill(~ones.tril(0), NEG_INF)


def _heads(z: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., g, n) -> (..., h, n): head i uses group i // (h // g)."""
    return z.repeat_interleave(heads // z.shape[-2], dim=-2)


def _rotate(z: torch.Tensor, rope_cos, rope_sin, dtype: torch.dtype) -> torch.Tensor:
    z = z.to(dtype)
    return z if rope_cos is None else rope_reference(z, rope_cos, rope_sin)


def ssd_reference(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD. x (b,t,h,p), dt (b,t,h), A (h,), B, C (b,t,g,n), D (h,).

    initial_state and the returned final_state are (b,h,p,n), or (num_seqs,h,p,n) with
    cu_seqlens (b = 1). Returns (y in x's dtype, final_state in fp32 / fp64).
    """
    b, t, h, p = x.shape
    n = B.shape[-1]
    cdt = compute_dtype(x)
    dev = x.device
    Q = chunk_size
    nc = -(-t // Q)
    pad = nc * Q - t

    def chunks(z: torch.Tensor) -> torch.Tensor:
        """(b, t, ...) -> (b, nc, Q, ...) in the compute dtype; padded steps have dt = 0 and
        x = B = C = 0, so they neither decay nor feed the state."""
        z = F.pad(z.to(cdt), (0, 0) * (z.ndim - 2) + (0, pad))
        return z.reshape(b, nc, Q, *z.shape[2:])

    xc = chunks(x)
    dtc = chunks(dt)
    Bc = chunks(_heads(_rotate(B, rope_cos, rope_sin, cdt), h))
    Cc = chunks(_heads(_rotate(C, rope_cos, rope_sin, cdt), h))
    xdt = xc * dtc[..., None]
    dtA = dtc * A.to(cdt)  # (b, nc, Q, h), log of the per-step decay
    Acum = dtA.cumsum(dim=2)  # log decay from the chunk start through step s (inclusive)
    Aexcl = Acum - dtA  # ... up to step s (exclusive)

    # Sequence of every (padded) position and the boundaries of every sequence; without
    # cu_seqlens each batch row is one sequence [0, t).
    if cu_seqlens is None:
        seq = torch.zeros(b, nc, Q, dtype=torch.long, device=dev)
        bounds = (torch.arange(2, device=dev) * t).expand(b, 2)  # [0, t], t may be symbolic
    else:
        seq = seq_idx_from_cu_seqlens(cu_seqlens, nc * Q).view(1, nc, Q)
        # bounds[k] is the start of sequence k; bounds[num_seqs] = t starts the padding.
        bounds = cu_seqlens.to(torch.long)[None]
    num_seqs = bounds.shape[1] - 1
    rows = torch.arange(b, device=dev)[:, None]
    chunk_start = torch.arange(nc, device=dev) * Q  # (nc,)
    steps = torch.arange(Q, device=dev)

    h0 = None
    if initial_state is not None:
        # (b, num_seqs + 1, h, p, n): one state per sequence, zero for the padding "sequence".
        h0 = initial_state.to(cdt).reshape(b, num_seqs, h, p, n)
        h0 = torch.cat([h0, h0.new_zeros(b, 1, h, p, n)], dim=1)

    # 1. Inside each chunk: the quadratic form with the decay mask L[t, s] = exp(sum dtA).
    seg = _segsum(dtA.transpose(2, 3))  # (b, nc, h, Q, Q)
    if cu_seqlens is not None:
        same = seq[..., :, None] == seq[..., None, :]
        seg = seg.masked_fill(~same[:, :, None], NEG_INF)
    y = torch.einsum("bcthn,bcshn,bchts,bcshp->bcthp", Cc, Bc, seg.exp(), xdt)

    # 2. Each chunk's end state, for the sequence of its last step, from its own steps.
    last_seq = seq[:, :, -1]  # (b, nc)
    to_end = Acum[:, :, -1:] - Acum
    if cu_seqlens is not None:
        to_end = to_end.masked_fill((seq != last_seq[..., None])[..., None], NEG_INF)
    states = torch.einsum("bcsh,bcshn,bcshp->bchpn", to_end.exp(), Bc, xdt)

    # 3. State passing: S_c = w_c S_{c-1} + u_c. The previous state survives (w_c = chunk
    # decay) only if the last step's sequence began before this chunk; otherwise that
    # sequence's initial state enters at its first step.
    start_last = bounds.gather(1, last_seq)  # (b, nc)
    carried = start_last < chunk_start
    A_last = Acum[:, :, -1]  # (b, nc, h)
    if h0 is not None:
        entry = (start_last - chunk_start).clamp(0, Q - 1)
        enter = A_last - Aexcl.gather(2, entry[:, :, None, None].expand(b, nc, 1, h))[:, :, 0]
        enter = enter.masked_fill(carried[..., None], NEG_INF).exp()
        states = states + enter[..., None, None] * h0[rows, last_seq]
    log_w = A_last.masked_fill(~carried[..., None], NEG_INF)
    passed = torch.einsum("bhcj,bjhpn->bchpn", _segsum(log_w.transpose(1, 2)).exp(), states)
    incoming = torch.cat([torch.zeros_like(passed[:, :1]), passed[:, :-1]], dim=1)

    # 4. Outputs from the incoming state: the previous chunk's for steps whose sequence began
    # before this chunk, the sequence's initial state for the others.
    start_tok = bounds[rows, seq.view(b, -1)].view(b, nc, Q)
    from_prev = start_tok < chunk_start[:, None]
    dec_prev = Acum.masked_fill(~from_prev[..., None], NEG_INF).exp()
    y = y + torch.einsum("bcthn,bchpn,bcth->bcthp", Cc, incoming, dec_prev)
    if h0 is not None:
        entry_tok = (start_tok - chunk_start[:, None]).clamp(0, Q - 1)
        dec0 = Acum - Aexcl.gather(2, entry_tok[..., None].expand(b, nc, Q, h))
        dec0 = dec0.masked_fill(from_prev[..., None], NEG_INF).exp()
        read = torch.einsum("bcthn,bkhpn->bctkhp", Cc, h0)  # C~_t . h0_k for every sequence k
        pick = seq[..., None, None, None].expand(b, nc, Q, 1, h, p)
        y = y + read.gather(3, pick)[:, :, :, 0] * dec0[..., None]

    y = y.reshape(b, nc * Q, h, p)[:, :t]
    if D is not None:
        y = y + D.to(cdt)[:, None] * x.to(cdt)

    # Final states: each sequence's state after its last step e, rebuilt inside e's chunk from
    # that chunk's incoming state (or the initial state) and the chunk's steps up to e.
    starts, ends = bounds[:, :-1], bounds[:, 1:]
    empty = ends == starts
    last = (ends - 1).clamp(min=0)
    ce, oe = last // Q, last % Q  # (b, num_seqs)
    kidx = torch.arange(num_seqs, device=dev)
    acum_k = Acum[rows, ce]  # (b, num_seqs, Q, h)
    acum_e = acum_k.gather(2, oe[:, :, None, None].expand(b, num_seqs, 1, h))[:, :, 0]
    mine = (steps <= oe[..., None]) & (seq[rows, ce] == kidx[:, None]) & ~empty[..., None]
    dec_s = (acum_e[:, :, None] - acum_k).masked_fill(~mine[..., None], NEG_INF).exp()
    final = torch.einsum("bksh,bkshn,bkshp->bkhpn", dec_s, Bc[rows, ce], xdt[rows, ce])
    prev_k = (starts < ce * Q) & ~empty
    dec_k = acum_e.masked_fill(~prev_k[..., None], NEG_INF).exp()
    final = final + dec_k[..., None, None] * incoming[rows, ce]
    if h0 is not None:
        entry_k = (starts - ce * Q).clamp(0, Q - 1)
        aexcl_k = Aexcl[rows, ce].gather(2, entry_k[:, :, None, None].expand(b, num_seqs, 1, h))[:, :, 0]
        fresh = ~prev_k & ~empty
        dec_0 = (acum_e - aexcl_k).masked_fill(~fresh[..., None], NEG_INF).exp()
        h0_k = h0[:, :num_seqs]
        final = final + dec_0[..., None, None] * h0_k + empty[..., None, None, None] * h0_k
    final = final.reshape(b * num_seqs, h, p, n)
    return y.to(x.dtype), final


def ssd_step_reference(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step. state (b,h,p,n), x (b,h,p), dt (b,h), B, C (b,g,n), rope (b,r/2).

    Returns (y (b,h,p) in x's dtype, new_state in state's dtype).
    """
    h = x.shape[1]
    cdt = compute_dtype(x)
    cos = None if rope_cos is None else rope_cos[:, None]
    sin = None if rope_sin is None else rope_sin[:, None]
    Bh = _heads(_rotate(B[:, None], cos, sin, cdt)[:, 0], h)  # (b, h, n)
    Ch = _heads(_rotate(C[:, None], cos, sin, cdt)[:, 0], h)
    dtc = dt.to(cdt)
    xc = x.to(cdt)
    decay = torch.exp(dtc * A.to(cdt))
    new = decay[..., None, None] * state.to(cdt) + (dtc[..., None] * xc)[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new, Ch)
    if D is not None:
        y = y + D.to(cdt)[:, None] * xc
    return y.to(x.dtype), new.to(state.dtype)
