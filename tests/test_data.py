"""Data: tokenizers, document sources, the deterministic split and packed batches."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from wmzoo.corpus import stdlib_documents
from wmzoo.data import PackedBatches, head_texts, prepare_data, read_documents, split_stream
from wmzoo.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

TEXT = "Beautiful is better than ugly. Explicit is better than implicit. Ünïcödé ✓\n" * 20


def test_byte_tokenizer_round_trip_and_document_separator():
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(TEXT)) == TEXT
    stream = tok.encode_documents(["ab", "é"])
    assert stream.tolist() == [97, 98, 256, 0xC3, 0xA9, 256]


def test_bpe_tokenizer_trains_round_trips_and_reloads(tmp_path):
    tok = BPETokenizer.train([TEXT], vocab_size=300)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and len(ids) < len(TEXT.encode())
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode(TEXT) == ids and again.eos_id == tok.eos_id
    ByteTokenizer().save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


def test_documents_from_file_directory_and_missing_path(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("nested")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert read_documents(tmp_path) == [("a.txt", "first"), ("b.txt", "second"), ("sub/a.md", "nested")]
    assert read_documents(tmp_path / "b.txt") == [("b.txt", "second")]
    with pytest.raises(FileNotFoundError, match="nope.txt.*does not exist"):
        read_documents(tmp_path / "nope.txt")


def test_hf_source_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as when not installed
    with pytest.raises(ImportError, match="pip install datasets"):
        read_documents("hf:wikitext:wikitext-2-raw-v1@train")


def test_embedded_corpus_is_the_standard_librarys_sources():
    docs = stdlib_documents()
    names = [n for n, _ in docs]
    assert names == sorted(names) and "os.py" in names and len(docs) > 50
    assert "def " in dict(docs)["os.py"]
    small = stdlib_documents(max_bytes=100_000)
    assert small == docs[: len(small)] and sum(len(t) for _, t in small) <= 100_000


def test_split_is_the_tail_and_deterministic(tmp_path):
    stream = np.arange(1000, dtype=np.int32)
    train, val = split_stream(stream, 0.1, min_val=50)
    assert train.tolist() == list(range(900)) and val.tolist() == list(range(900, 1000))
    assert len(split_stream(stream, 0.01, min_val=50)[1]) == 50
    with pytest.raises(ValueError, match="expected at least 1200 tokens"):
        split_stream(stream, 0.1, min_val=600)
    (tmp_path / "t.txt").write_text(TEXT)
    _, t1, v1 = prepare_data(str(tmp_path / "t.txt"), "byte", 0, 0.1, 10)
    _, t2, v2 = prepare_data(str(tmp_path / "t.txt"), "byte", 0, 0.1, 10)
    assert np.array_equal(t1, t2) and np.array_equal(v1, v2)
    assert len(t1) + len(v1) == len(TEXT.encode()) + 1  # + the end-of-document token


def test_bpe_is_trained_without_the_held_out_tail():
    docs = [("a", "x" * 90), ("b", "y" * 10), ("c", "z" * 100)]
    assert head_texts(docs, 0.5) == ["x" * 90, "y" * 10]
    assert head_texts(docs, 0.25) == ["x" * 50]


def test_packed_batches_are_shifted_windows_covering_each_epoch_once():
    stream = np.arange(1, 302, dtype=np.int32)  # 301 tokens: 10 windows of 30 (+1 target)
    b = PackedBatches(stream, batch_size=4, seq_len=30, seed=7)
    assert b.windows == 10
    starts = []
    for pos in range(5):  # 20 samples = 2 epochs
        x, y = b.batch(pos)
        assert x.shape == y.shape == (4, 30)
        assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
        assert ((x[:, 0] - 1) % 30 == 0).all()
        starts += ((x[:, 0] - 1) // 30).tolist()
    assert sorted(starts[:10]) == list(range(10)) and sorted(starts[10:]) == list(range(10))
    assert starts[:10] != starts[10:]  # a new permutation per epoch
    again = PackedBatches(stream, 4, 30, seed=7)
    assert (again.batch(3)[0] == b.batch(3)[0]).all()  # position alone fixes the batch
    assert not (PackedBatches(stream, 4, 30, seed=8).batch(0)[0] == b.batch(0)[0]).all()
    with pytest.raises(ValueError, match="seq_len: expected at most 300"):
        PackedBatches(stream, 4, 400)
