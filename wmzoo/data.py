"""Training data: documents from the embedded corpus, a file, a directory or a Hugging Face
dataset; one token stream; a deterministic train/validation split; packed fixed-length batches
addressed by position, so a resumed run reads exactly the batches it would have read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .corpus import stdlib_documents

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")
HF_PREFIX = "hf:"


def read_documents(source: str | Path | None) -> list[tuple[str, str]]:
    """(name, text) documents in a fixed order.

    source: None for the embedded corpus (the standard library's sources); a text file; a
    directory (its files ending in TEXT_SUFFIXES, recursively, in path order); or
    ``hf:NAME[:CONFIG][@SPLIT]`` for a Hugging Face dataset's ``text`` column (needs
    ``datasets`` installed).
    """
    if source is None:
        return stdlib_documents()
    source = str(source)
    if source.startswith(HF_PREFIX):
        return hf_documents(source[len(HF_PREFIX):])
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"data: expected a text file, a directory of text files or hf:NAME, got {source!r}, which does not exist"
        )
    if path.is_file():
        return [(path.name, path.read_text(encoding="utf-8", errors="replace"))]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"data: expected text files ({', '.join(TEXT_SUFFIXES)}) under {source!r}, found none")
    return [(str(p.relative_to(path)), p.read_text(encoding="utf-8", errors="replace")) for p in files]


def hf_documents(spec: str) -> list[tuple[str, str]]:
    try:
        import datasets
    except ImportError as e:
        raise ImportError("data: hf:NAME needs the `datasets` package (pip install datasets)") from e
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    ds = datasets.load_dataset(name, config or None, split=split or "train")
    if "text" not in ds.column_names:
        raise ValueError(f"data: expected a 'text' column in {name!r}, got columns {ds.column_names}")
    return [(f"{name}[{i}]", row["text"]) for i, row in enumerate(ds)]


def split_stream(tokens: np.ndarray, val_fraction: float, min_val: int) -> tuple[np.ndarray, np.ndarray]:
    """Train on the head of the stream, validate on its tail (at least ``min_val`` tokens)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction}")
    n_val = max(int(len(tokens) * val_fraction), min_val)
    if n_val * 2 > len(tokens):
        raise ValueError(
            f"data: expected at least {2 * n_val} tokens to split off {n_val} validation tokens, got {len(tokens)}; "
            "use more text or a shorter --seq-len"
        )
    return tokens[:-n_val], tokens[-n_val:]


@dataclass
class PackedBatches:
    """Fixed-length windows of a token stream, shuffled per epoch with a seeded permutation.

    Batch ``position`` holds samples position*batch_size ... +batch_size-1 of an endless
    sequence of epochs, so the data position of a checkpoint is one integer.
    """

    tokens: np.ndarray
    batch_size: int
    seq_len: int
    seed: int = 0

    def __post_init__(self):
        # Each window holds seq_len inputs and, shifted by one, seq_len targets.
        self.windows = (len(self.tokens) - 1) // self.seq_len
        if self.windows < 1:
            raise ValueError(
                f"seq_len: expected at most {len(self.tokens) - 1} (the data has {len(self.tokens)} tokens), got {self.seq_len}"
            )
        self._perms: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.windows)}
        return self._perms[epoch]

    def batch(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, seq_len) int64."""
        rows = []
        for sample in range(position * self.batch_size, (position + 1) * self.batch_size):
            epoch, index = divmod(sample, self.windows)
            start = int(self._permutation(epoch)[index]) * self.seq_len
            rows.append(self.tokens[start : start + self.seq_len + 1])
        block = torch.from_numpy(np.stack(rows).astype(np.int64))
        return block[:, :-1], block[:, 1:]


def sequential_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None):
    """Non-overlapping (inputs, targets) windows in stream order, for evaluation."""
    n = (len(tokens) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    for i in range(n):
        block = torch.from_numpy(tokens[i * seq_len : (i + 1) * seq_len + 1].astype(np.int64))
        yield block[None, :-1], block[None, 1:]


def head_texts(docs: list[tuple[str, str]], fraction: float) -> list[str]:
    """The first ``fraction`` of the corpus' characters (the last document cut): what a BPE
    tokenizer may be trained on without seeing the held-out tail."""
    budget = int(sum(len(text) for _, text in docs) * fraction)
    out = []
    for _, text in docs:
        if budget <= 0:
            break
        out.append(text[:budget])
        budget -= len(text)
    return out


def prepare_data(source: str | None, tokenizer_kind: str, vocab_size: int, val_fraction: float, min_val: int):
    """(tokenizer, train tokens, validation tokens) for a data source."""
    from .tokenizer import build_tokenizer

    docs = read_documents(source)
    tokenizer = build_tokenizer(tokenizer_kind, head_texts(docs, 1.0 - val_fraction), vocab_size)
    train, val = split_stream(tokenizer.encode_documents(text for _, text in docs), val_fraction, min_val)
    return tokenizer, train, val


def held_out(source: str | None, tokenizer, val_fraction: float, min_val: int) -> np.ndarray:
    """The validation tokens of a run, recomputed from its source with its own tokenizer."""
    docs = read_documents(source)
    return split_stream(tokenizer.encode_documents(text for _, text in docs), val_fraction, min_val)[1]
