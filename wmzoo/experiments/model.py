"""The small model and optimiser set-up the experiments share.

Embedding -> Stack -> RMSNorm -> Linear head, written here so the experiments depend only on
the block protocol (Stack and specs), not on the language-model package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..blocks.norm import RMSNorm, init_normal_
from ..specs import BlockSpec
from ..stack import Stack

INITS = ("cheems", "fan_in")


class TinyLM(nn.Module):
    """``init``: "cheems" keeps the blocks' own init (every Linear N(0, 0.02), embedding
    N(0, 0.02), as the paper's models); "fan_in" redraws every Linear weight N(0, 1/fan_in)
    and the embedding N(0, 1). At the narrow widths of MQAR (d 32..256) 0.02 is far below
    1/sqrt(d): measured on CPU, a 2-layer attention model then stayed on the MQAR plateau for
    6000 steps at length 32 with 4 pairs, and failed even to learn copying the previous token,
    while with "fan_in" it solved length 64 with 16 pairs in under 2000 steps
    (docs/experiments/README.notes.md)."""

    def __init__(self, specs: Sequence[BlockSpec], d_model: int, vocab: int, init: str = "cheems"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {init!r}")
        self.embed = nn.Embedding(vocab, d_model)
        self.stack = Stack(specs, d_model)
        self.norm = RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        if init == "cheems":
            nn.init.normal_(self.embed.weight, std=0.02)
            init_normal_(self.head)
        else:
            nn.init.normal_(self.embed.weight, std=1.0)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=m.in_features**-0.5)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, d) final normalised hidden states."""
        return self.norm(self.stack(self.embed(tokens)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab) logits."""
        return self.head(self.hidden(tokens))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW; no decay on vectors (norm weights, skip scales, biases, A, dt_bias)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def warmup_cosine(step: int, total: int, warmup_frac: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 10%."""
    warmup = max(1, int(total * warmup_frac))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the paper trains in bf16); plain fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
