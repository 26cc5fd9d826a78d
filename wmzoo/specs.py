"""Blocks are specs: frozen dataclasses of hyperparameters with ``build(d_model)``.

``[SSD(), DMAttn()] * n`` repeats the same spec objects, and Stack builds n independent
modules from them, so specs can be shared, printed, compared, serialised and swapped
(design.md, "Blocks are specs, Stack builds them").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

SPEC_TYPES: dict[str, type] = {}


def block_spec(cls):
    """Class decorator: a frozen dataclass spec registered by its class name (for from_dict)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    SPEC_TYPES[cls.__name__] = cls
    return cls


class BlockSpec:
    """Base of every spec. Subclasses implement ``build(d_model) -> nn.Module``; the module's
    ``forward(x, ctx=None)`` maps (B, T, d) to (B, T, d)."""

    # Sequence mixers carry decode state; state transforms (MLP, CDMoE) do not.
    is_mixer: bool = False

    def build(self, d_model: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **dataclasses.asdict(self)}

    def replace(self, **changes) -> BlockSpec:
        return dataclasses.replace(self, **changes)


def spec_from_dict(data: dict[str, Any]) -> BlockSpec:
    data = dict(data)
    kind = data.pop("type", None)
    if kind not in SPEC_TYPES:
        raise ValueError(f"spec type: expected one of {sorted(SPEC_TYPES)}, got {kind!r}")
    return SPEC_TYPES[kind](**data)


def swap(
    specs: Iterable[BlockSpec], kind: type, new: BlockSpec | Callable[[BlockSpec], BlockSpec]
) -> list[BlockSpec]:
    """Replace every spec of type ``kind`` by ``new`` (a spec, or a function of the old spec)."""
    out = []
    for s in specs:
        if isinstance(s, kind):
            s = new(s) if callable(new) and not isinstance(new, BlockSpec) else new
        out.append(s)
    return out
