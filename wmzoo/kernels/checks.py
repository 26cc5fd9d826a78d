"""Argument checks shared by every op: each error names the argument, the expected and the
actual value, so that bad input never reaches a kernel as an index error or a NaN."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(
    name: str,
    t: torch.Tensor,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
) -> None:
    """Check rank, shape (``None`` entries are free), dtype and device of ``t``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, t.shape)):
            if want is not None and want != got:
                dims = ["*" if s is None else str(s) for s in shape]
                exp = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
                raise ValueError(
                    f"{name}: expected shape {exp}, got {tuple(t.shape)} (dimension {axis})"
                )
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name}: expected dtype in ({names}), got {str(t.dtype).removeprefix('torch.')}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected device {device}, got {t.device}")


def check_divides(small_name: str, small: int, big_name: str, big: int) -> None:
    if small <= 0 or big % small != 0:
        raise ValueError(f"{small_name}={small} must divide {big_name}={big}")


def check_power_of_two(name: str, value: int) -> None:
    if value <= 0 or value & (value - 1):
        raise ValueError(f"{name}: expected a power of two, got {value}")


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value}")


def check_cu_seqlens(cu_seqlens: torch.Tensor | None, batch: int, total: int, device) -> None:
    """Packed varlen layout: batch 1, cu_seqlens int32/int64 (n+1,) starting at 0.

    Only metadata is checked (no host sync); the values are the caller's contract:
    non-decreasing, first 0, last equal to the packed length.
    """
    if cu_seqlens is None:
        return
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64), device=device)
    if cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens: expected at least 2 entries (0 and the total), got {tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ValueError(f"cu_seqlens: packed varlen inputs need batch size 1, got batch {batch} (total length {total})")
