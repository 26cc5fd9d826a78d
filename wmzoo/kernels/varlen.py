"""Packed variable-length batches: helpers every op family shares, all free of host syncs."""

from __future__ import annotations

import torch


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Sequence index of every packed position, shape (total,), int64.

    ``cu_seqlens = [0, 3, 5]`` gives ``[0, 0, 0, 1, 1]``. Positions past the last boundary get
    the index of a trailing sequence of their own, so they never attend into real sequences.
    """
    pos = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return bucket_of(cu_seqlens, pos).to(torch.int64)


def bucket_of(bounds: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """For sorted ``bounds``, the i with bounds[i] <= v < bounds[i + 1] for every v (-1 below
    bounds[0], len(bounds) - 1 from the last bound on).

    Searches the whole tensor and subtracts one rather than searching ``bounds[1:]``: Inductor
    on CUDA (torch 2.11) lowers searchsorted over a slice from the base buffer, ignoring the
    slice's offset, which silently shifted every index by one under torch.compile
    (pytorch/pytorch#182343; found through DMAttn's block tables, docs/benchmarks/dmattn.md run 8).
    """
    return torch.searchsorted(bounds.contiguous(), values, right=True) - 1


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position of every packed token inside its own sequence, shape (total,), int64."""
    seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, total)
    starts = cu_seqlens.to(torch.int64)[seq_idx.clamp(max=cu_seqlens.shape[0] - 2)]
    return torch.arange(total, device=cu_seqlens.device) - starts
