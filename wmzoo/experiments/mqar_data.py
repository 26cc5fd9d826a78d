"""Multi-query associative recall (MQAR) data, in the Zoology style.

Layout of one example of length T with n key-value pairs and vocabulary V:

    k_1 v_1 k_2 v_2 ... k_n v_n | 0 0 k_7 0 k_2 0 0 k_n ... 0
    <------- context: 2n ------> <---- queries: T - 2n ----->

Keys are n distinct tokens from [1, V/2), values tokens from [V/2, V) (drawn independently),
0 is the filler. Every key is queried exactly once, in a random order, at n distinct random
positions of the query region. At a query position the model must predict the value bound to
that key in the context; only those positions carry a loss, and accuracy is the fraction of
queries whose arg-max prediction is exactly the bound value.
(Zoology spaces queries by a power law; uniform positions are used here: simpler, and every
query still needs a lookup across at least the rest of the context.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # label of positions without a loss (torch's cross-entropy default)
KV_PAIRS_CAP = 256


@dataclass(frozen=True)
class MQARTask:
    seq_len: int
    vocab: int = 8192
    kv_pairs: int | None = None  # default: seq_len // 4, at most KV_PAIRS_CAP

    def __post_init__(self):
        if self.vocab < 4 or self.vocab % 2:
            raise ValueError(f"vocab: expected an even number >= 4, got {self.vocab}")
        n = self.pairs
        if n < 1:
            raise ValueError(f"kv_pairs: expected >= 1, got {n} (seq_len={self.seq_len})")
        if 3 * n > self.seq_len:
            raise ValueError(
                f"kv_pairs: expected 3 * kv_pairs <= seq_len (context of 2n plus n queries), "
                f"got kv_pairs={n}, seq_len={self.seq_len}"
            )
        if n > self.vocab // 2 - 1:
            raise ValueError(f"kv_pairs: expected <= vocab/2 - 1 = {self.vocab // 2 - 1} distinct keys, got {n}")

    @property
    def pairs(self) -> int:
        """64 pairs at length 256, growing with the length (T/4) up to KV_PAIRS_CAP."""
        return self.kv_pairs if self.kv_pairs is not None else min(self.seq_len // 4, KV_PAIRS_CAP)


@dataclass
class MQARBatch:
    inputs: torch.Tensor  # (B, T) int64 tokens
    query_positions: torch.Tensor  # (B, n) int64, where each query key sits
    answers: torch.Tensor  # (B, n) int64, the value bound to that key

    def targets(self) -> torch.Tensor:
        """(B, T) labels: the answer at each query position, IGNORE elsewhere."""
        labels = torch.full_like(self.inputs, IGNORE)
        return labels.scatter_(1, self.query_positions, self.answers)


def random_subset(batch: int, population: int, size: int, gen: torch.Generator, device) -> torch.Tensor:
    """(batch, size) distinct integers from [0, population), in random order, per row."""
    return torch.rand(batch, population, generator=gen, device=device).argsort(-1)[:, :size]


def mqar_batch(task: MQARTask, batch: int, gen: torch.Generator, device=None) -> MQARBatch:
    device = device or gen.device
    n, t, half = task.pairs, task.seq_len, task.vocab // 2
    keys = random_subset(batch, half - 1, n, gen, device) + 1
    values = torch.randint(half, task.vocab, (batch, n), generator=gen, device=device)
    inputs = torch.zeros(batch, t, dtype=torch.long, device=device)
    inputs[:, 0 : 2 * n : 2] = keys
    inputs[:, 1 : 2 * n : 2] = values
    positions = random_subset(batch, t - 2 * n, n, gen, device) + 2 * n
    order = random_subset(batch, n, n, gen, device)  # which pair each query asks for
    inputs.scatter_(1, positions, keys.gather(1, order))
    return MQARBatch(inputs, positions, values.gather(1, order))
