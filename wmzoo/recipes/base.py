"""A recipe: a named model shape (width, block specs, vocabulary, head tying) that builds a
CausalLM, prints as a layer table with parameter counts and swaps blocks piecewise."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..lm import CausalLM, count_parameters
from ..specs import BlockSpec, spec_from_dict, swap


@dataclass(frozen=True)
class ModelSize:
    """Width and depth shared by the recipes of one size (heads of head_dim for attention)."""

    d_model: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class Recipe:
    name: str
    size: str
    d_model: int
    specs: tuple[BlockSpec, ...]
    vocab_size: int = 32768  # the size's reference vocabulary; training uses its tokenizer's
    tie_embeddings: bool = True
    max_seq_len: int = 4096

    def build(self, vocab_size: int | None = None) -> CausalLM:
        return CausalLM(self.specs, self.d_model, vocab_size or self.vocab_size,
                        tie_embeddings=self.tie_embeddings, max_seq_len=self.max_seq_len)

    def swap(self, kind: type, new: BlockSpec | Callable[[BlockSpec], BlockSpec]) -> Recipe:
        """Every spec of type ``kind`` replaced by ``new`` (a spec or a function of the old one),
        e.g. ``cheems("60m").swap(DMAttn, lambda s: Attention(heads=s.heads, kv_heads=s.kv_heads,
        head_dim=s.head_dim))``."""
        specs = tuple(swap(self.specs, kind, new))
        if specs == self.specs:
            raise ValueError(f"swap: expected {self.name} {self.size} to contain a {kind.__name__} block, found none")
        return dataclasses.replace(self, specs=specs)

    def parameter_counts(self, vocab_size: int | None = None) -> tuple[list[tuple[str, int]], int]:
        """[(row name, parameters)] for the embedding, every sublayer, the final norm and an
        untied head, and the model total; built on the meta device, so no memory is used."""
        with torch.device("meta"):
            model = self.build(vocab_size)
        rows = [("embedding" + (" (tied head)" if self.tie_embeddings else ""), model.embed.weight.numel())]
        for i, layer in enumerate(model.stack.layers):
            rows.append((f"{i:3d} {short_repr(layer.spec)}", count_parameters(layer)))
        rows.append(("final RMSNorm", count_parameters(model.norm)))
        if model.head is not None:
            rows.append(("LM head", model.head.weight.numel()))
        return rows, count_parameters(model)

    def table(self, vocab_size: int | None = None) -> str:
        """The layer table: one row per sublayer (pre-norm residual around one block)."""
        vocab = vocab_size or self.vocab_size
        rows, total = self.parameter_counts(vocab)
        width = max(len(name) for name, _ in rows)
        head = f"{self.name} {self.size}: d_model={self.d_model}, {len(self.specs)} sublayers, vocab {vocab}"
        lines = [head, f"{'sublayer':<{width}}  {'params':>12}"]
        lines += [f"{name:<{width}}  {n:>12,}" for name, n in rows]
        lines.append(f"{'total':<{width}}  {total:>12,}  ({total / 1e6:.1f}M)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "size": self.size, "d_model": self.d_model,
            "specs": [s.to_dict() for s in self.specs], "vocab_size": self.vocab_size,
            "tie_embeddings": self.tie_embeddings, "max_seq_len": self.max_seq_len,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        data = dict(data)
        data["specs"] = tuple(spec_from_dict(tuples_back(s)) for s in data["specs"])
        return cls(**data)


def carry_over(spec: BlockSpec, new_type: type) -> BlockSpec:
    """A ``new_type`` spec keeping the fields both types share (heads, kv_heads, head_dim ...):
    how `--swap DMAttn=Attention` turns each DMAttn into the matching softmax attention."""
    shared = {f.name for f in dataclasses.fields(new_type)} & {f.name for f in dataclasses.fields(spec)}
    return new_type(**{name: getattr(spec, name) for name in shared})


def tuples_back(spec: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuple fields into lists; specs are frozen and compared by value, so undo it."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}


def short_repr(spec: BlockSpec) -> str:
    """``SSD(head_dim=32)``: only the fields that differ from the spec's defaults."""
    default = type(spec)()
    changed = [f"{f.name}={getattr(spec, f.name)!r}" for f in dataclasses.fields(spec)
               if getattr(spec, f.name) != getattr(default, f.name)]
    return f"{type(spec).__name__}({', '.join(changed)})"
