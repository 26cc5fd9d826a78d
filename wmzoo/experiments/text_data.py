"""Real text for the language-model experiments, as bytes (vocabulary 256).

Bytes need no tokenizer to train or ship, and both arms of an ablation see exactly the same
tokens. Perplexities are therefore per byte, lower than per-word or per-BPE-token figures.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import torch

VOCAB = 256
TEXT_SUFFIXES = (".txt", ".rst", ".md", ".py")

# The smoke tests' corpus: a few paragraphs written for this project (no download, no licence).
EMBEDDED_TEXT = """\
A state space layer keeps a fixed-size summary of everything it has read. Each new token
decays the old summary a little and adds its own contribution, so the cost of reading a long
document grows with its length, never with its square. Attention keeps every token instead
and looks back at all of them; it is exact but its memory grows with the context.

Rotary position embeddings turn each query and key by an angle that grows with the position.
The product of a rotated query and a rotated key then depends only on how far apart the two
tokens are. A state space layer has the same kind of product between its input and output
projections, so the same rotation can be applied there, and one position encoding serves the
whole hybrid model.

Associative recall asks a model to remember which value was paired with which key earlier in
the sequence. A model that compresses its past into a small state must choose what to forget;
a model that attends over its past can look the pair up again. Dynamic masks let attention
drop keys that will not be needed, keeping the lookup while bounding the cost.

A mixture of experts routes each token to a few small networks out of many. When experts are
single neurons retrieved by product keys, routing costs grow with the square root of the
number of experts, and the experts themselves are rows gathered from two tables.
"""


def read_documents(path: str | Path | None) -> list[str]:
    """Text documents from a file, a directory (recursive) or a tarball; None: the embedded text.

    Files are taken in name order, so the corpus (and its split) is the same on every machine.
    """
    if path is None:
        return [EMBEDDED_TEXT]
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data: expected a text file, directory or tarball, got missing path {str(path)!r}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
        docs = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(TEXT_SUFFIXES)),
                             key=lambda m: m.name)
            docs = [tar.extractfile(m).read().decode("utf-8", errors="replace") for m in members]
    else:
        docs = [path.read_text(encoding="utf-8", errors="replace")]
    if not docs:
        raise ValueError(f"data: no text files ({', '.join(TEXT_SUFFIXES)}) found in {str(path)!r}")
    return docs


def to_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def split_rule(documents: int, every: int = 10) -> str:
    """In words, how :func:`train_eval_split` holds out text for this many documents."""
    return f"every {every}th document held out" if documents >= every else "last 10% of the bytes held out"


def train_eval_split(docs: list[str], every: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``every``-th document is held out for evaluation (the split then spans the whole
    corpus, not one corner of it); a corpus of fewer documents splits its bytes 90/10."""
    if len(docs) >= every:
        train = "\n".join(d for i, d in enumerate(docs) if i % every != every - 1)
        held = "\n".join(d for i, d in enumerate(docs) if i % every == every - 1)
        return to_bytes(train), to_bytes(held)
    tokens = to_bytes("\n".join(docs))
    cut = len(tokens) * 9 // 10
    return tokens[:cut], tokens[cut:]


def random_windows(tokens: torch.Tensor, length: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, length + 1) windows at random offsets (inputs and next-token targets)."""
    if len(tokens) < length + 1:
        raise ValueError(f"train_len: expected at most {len(tokens) - 1} (the training text), got {length}")
    starts = torch.randint(0, len(tokens) - length, (batch,), generator=gen)
    return torch.stack([tokens[s : s + length + 1] for s in starts.tolist()])


def eval_windows(tokens: torch.Tensor, length: int, budget: int) -> torch.Tensor:
    """(n, length + 1) consecutive windows covering the first ``budget`` tokens of the held-out
    text: every evaluation length scores the same bytes."""
    budget = min(budget, len(tokens) - 1)
    n = budget // length
    if n < 1:
        raise ValueError(f"eval length: expected at most {budget} (held-out tokens), got {length}")
    return torch.stack([tokens[i * length : (i + 1) * length + 1] for i in range(n)])
