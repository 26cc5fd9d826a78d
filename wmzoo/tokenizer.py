"""Tokenizers: bytes by default (nothing to train or ship), BPE trained locally as an option.

Both map a list of documents to one stream of token ids with an end-of-document token between
documents, and both save to / load from a checkpoint directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
EOS_TEXT = "<|endoftext|>"


class ByteTokenizer:
    """UTF-8 bytes 0..255 and one end-of-document id, 256."""

    kind = "byte"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_documents(self, texts: Iterable[str]) -> np.ndarray:
        parts = []
        for text in texts:
            parts.append(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32))
            parts.append(np.array([self.eos_id], dtype=np.int32))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        # A sampled byte sequence may cut a UTF-8 character in half: show U+FFFD, never fail.
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps({"wmzoo_tokenizer": "byte"}))


class BPETokenizer:
    """Byte-level BPE from the `tokenizers` library, trained on the training documents."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.eos_id = tokenizer.token_to_id(EOS_TEXT)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size <= 257:
            raise ValueError(f"vocab_size: expected more than 257 for BPE (256 bytes, end token, merges), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_documents(self, texts: Iterable[str]) -> np.ndarray:
        parts = []
        for enc in self.tokenizer.encode_batch(list(texts)):
            parts.append(np.asarray(enc.ids, dtype=np.int32))
            parts.append(np.array([self.eos_id], dtype=np.int32))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: Path) -> None:
        self.tokenizer.save(str(Path(directory) / TOKENIZER_FILE))


TOKENIZER_KINDS = ("byte", "bpe")


def build_tokenizer(kind: str, texts: Iterable[str] = (), vocab_size: int = 8192):
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    raise ValueError(f"tokenizer: expected one of {TOKENIZER_KINDS}, got {kind!r}")


def load_tokenizer(directory: str | Path):
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: expected {path}, which is missing")
    data = json.loads(path.read_text())
    if data.get("wmzoo_tokenizer") == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_file(str(path)))
