"""DMAttnCache: decoding token by token (or after a many-token prefill) equals the dmattn rows,
the window cache holds exactly the top-w keys (checked by Python sorting) and stays bounded,
and it equals an unbounded cache."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close

from wmzoo.kernels.dmattn import DMAttnCache, dmattn


def make(b, t, h, hkv, d, dtype=torch.float64, ties=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, t, n, d, generator=gen, dtype=torch.float64).to(dtype) for n in (h, hkv, hkv))
    bias = torch.randn(b, hkv, t, generator=gen, dtype=torch.float64) * 2
    return q, k, v, (torch.round(bias) if ties else bias).to(dtype)


def top_w_positions(bias_row: list[float], upto: int, w: int | None) -> set[int]:
    """The keys 0..upto a query at ``upto`` keeps: (bias, position) descending, first w."""
    order = sorted(range(upto + 1), key=lambda j: (bias_row[j], j), reverse=True)
    return set(order if w is None else order[:w])


def decode(q, k, v, bias, w, chunks=None, dtype=torch.float64):
    """Outputs at every position, feeding the cache in chunks (default: one token at a time);
    only the last query of each chunk attends. Returns the rows it produced and the cache."""
    b, t, h, d = q.shape
    cache = DMAttnCache.empty(b, k.shape[2], d, keep_window=w, dtype=dtype)
    rows, start = {}, 0
    for n in chunks or [1] * t:
        cache.update(k[:, start : start + n], v[:, start : start + n], bias[:, :, start : start + n])
        start += n
        rows[start - 1] = cache.attend(q[:, start - 1 : start])
        yield rows, cache


@pytest.mark.parametrize("w", [1, 5, 20, 64, 65, 100, None])
@pytest.mark.parametrize("h,hkv", [(4, 4), (4, 2), (4, 1)])
def test_token_by_token_equals_dmattn_rows(w, h, hkv):
    t, d = 65, 16
    q, k, v, bias = make(2, t, h, hkv, d, seed=w or 0)
    full = dmattn(q, k, v, bias, keep_window=w)
    for rows, cache in decode(q, k, v, bias, w):
        i = cache.length - 1
        assert_close(rows[i], full[:, i : i + 1], torch.float64, f"decode row {i}")
        # the cache holds exactly the keys query i keeps, and never more than w of them
        for bi in range(2):
            for n in range(hkv):
                held = set(cache.pos[bi, n][cache.valid[bi, n]].tolist())
                assert held == top_w_positions(bias[bi, n].tolist(), i, w), (bi, n, i)
        if w is not None:
            assert cache.slots == w and int(cache.valid.sum(-1).max()) <= w


@pytest.mark.parametrize("chunks", [[65], [20, 1, 1, 43], [7, 13, 1, 30, 14], [1] * 5 + [60]])
@pytest.mark.parametrize("w", [3, 16, None])
def test_prefill_in_chunks(chunks, w):
    q, k, v, bias = make(1, 65, 4, 2, 40, seed=sum(chunks))
    full = dmattn(q, k, v, bias, keep_window=w)
    for rows, cache in decode(q, k, v, bias, w, chunks=chunks):
        i = cache.length - 1
        assert_close(rows[i], full[:, i : i + 1], torch.float64, f"row {i} after a chunk")


def test_window_cache_equals_unbounded_cache_and_stays_bounded():
    q, k, v, bias = make(2, 80, 4, 2, 16, seed=3)
    w = 9
    window, unbounded = DMAttnCache.empty(2, 2, 16, keep_window=w, dtype=torch.float64), None
    full_rows = dmattn(q, k, v, bias, keep_window=w)
    sizes = set()
    for i in range(80):
        window.update(k[:, i : i + 1], v[:, i : i + 1], bias[:, :, i : i + 1])
        sizes.add(window.memory_bytes())
        o = window.attend(q[:, i : i + 1])
        # an unbounded cache over the same prefix, attending with the window applied explicitly
        unbounded = DMAttnCache.empty(2, 2, 16, keep_window=None, dtype=torch.float64)
        unbounded.update(k[:, : i + 1], v[:, : i + 1], bias[:, :, : i + 1])
        keep = torch.zeros(2, 2, unbounded.length, dtype=torch.bool)
        for bi in range(2):
            for n in range(2):
                keep[bi, n, list(top_w_positions(bias[bi, n].tolist(), i, w))] = True
        unbounded.valid[:, :, : unbounded.length] &= keep
        assert_close(o, unbounded.attend(q[:, i : i + 1]), torch.float64, f"step {i}")
        assert_close(o, full_rows[:, i : i + 1], torch.float64, f"step {i} vs dmattn")
    assert len(sizes) == 1  # preallocated at w slots: memory never grows
    # per slot, batch 2 x kv heads 2: k and v rows (16 float64) and bias (float64), pos, valid
    per_slot = 2 * 2 * (2 * 16 * 8 + 8 + 8 + 1)
    assert sizes.pop() == w * per_slot
    assert window.length == 80


def test_unbounded_cache_grows_with_the_sequence():
    q, k, v, bias = make(1, 70, 2, 1, 8, dtype=torch.float32, seed=4)
    cache = DMAttnCache.empty(1, 1, 8, dtype=torch.float32)
    full = dmattn(q, k, v, bias)
    for i in range(70):
        cache.update(k[:, i : i + 1], v[:, i : i + 1], bias[:, :, i : i + 1])
        assert_close(cache.attend(q[:, i : i + 1]), full[:, i : i + 1], torch.float32, f"row {i}")
    assert cache.slots >= 70 and int(cache.valid.sum()) == 70


def test_low_precision_cache_matches_float64_rows():
    q, k, v, bias = make(1, 40, 4, 2, 16, seed=6)
    w = 7
    ref = dmattn(q, k, v, bias, keep_window=w)
    for rows, cache in decode(q.half(), k.half(), v.half(), bias.half(), w, dtype=torch.float16):
        i = cache.length - 1
        assert rows[i].dtype == torch.float16
        assert_close(rows[i], ref[:, i : i + 1], torch.float16, f"float16 row {i}")
    assert cache.bias.dtype == torch.float32  # ranks compare the exact (upcast) bias


def test_scale_is_used():
    q, k, v, bias = make(1, 12, 2, 1, 8, seed=8)
    cache = DMAttnCache.empty(1, 1, 8, keep_window=4, dtype=torch.float64)
    cache.update(k, v, bias)
    ref = dmattn(q, k, v, bias, keep_window=4, scale=0.3)[:, -1:]
    assert_close(cache.attend(q[:, -1:], scale=0.3), ref, torch.float64, "scaled row")


def test_bad_input_errors():
    with pytest.raises(ValueError, match="keep_window: expected an integer >= 1, got 0"):
        DMAttnCache.empty(1, 2, 8, keep_window=0)
    with pytest.raises(ValueError, match="kv_heads: expected an integer >= 1, got 0"):
        DMAttnCache.empty(1, 0, 8)
    with pytest.raises(TypeError, match="dtype: expected a float dtype"):
        DMAttnCache.empty(1, 2, 8, dtype=torch.int64)
    cache = DMAttnCache.empty(2, 2, 8, keep_window=3)
    with pytest.raises(RuntimeError, match="the cache is empty"):
        cache.attend(torch.randn(2, 1, 4, 8))
    with pytest.raises(ValueError, match=r"k: expected shape \(2, \*, 2, 8\)"):
        cache.update(torch.randn(2, 1, 3, 8), torch.randn(2, 1, 3, 8), torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match=r"v: expected shape \(2, 1, 2, 8\)"):
        cache.update(torch.randn(2, 1, 2, 8), torch.randn(2, 2, 2, 8), torch.randn(2, 2, 1))
    with pytest.raises(ValueError, match=r"bias: expected shape \(2, 2, 1\)"):
        cache.update(torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8), torch.randn(2, 2, 2))
    cache.update(torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8), torch.randn(2, 2, 1))
    with pytest.raises(ValueError, match=r"q: expected shape \(2, 1, \*, 8\)"):
        cache.attend(torch.randn(2, 2, 4, 8))
    with pytest.raises(ValueError, match="q: heads 3 must be a multiple of the cache's kv heads 2"):
        cache.attend(torch.randn(2, 1, 3, 8))


def check_triton_decode_path(w, device):
    """Token by token through the Triton decode path: after every update the cache must hold
    exactly the Python-sorted top-w keys (with their k, v rows), and each output row must match
    a float64 softmax over them. Biases are rounded to integers: ties in the lowest bias."""
    q, k, v, bias = make(2, 41, 4, 2, 24, dtype=torch.float32, seed=12)
    cache = DMAttnCache.empty(2, 2, 24, keep_window=w, dtype=torch.float32, device=device)
    for i in range(41):
        cache.update(k[:, i : i + 1].to(device), v[:, i : i + 1].to(device), bias[:, :, i : i + 1].to(device))
        pos, valid, ck, cv = (z.cpu() for z in (cache.pos, cache.valid, cache.k, cache.v))
        for bi in range(2):
            for n in range(2):
                held = pos[bi, n][valid[bi, n]].tolist()
                assert set(held) == top_w_positions(bias[bi, n].tolist(), i, w), (bi, n, i)
                slots = [held.index(j) for j in sorted(held)]  # each kept key's k, v rows moved with it
                assert torch.equal(ck[bi, slots, n], k[bi, sorted(held), n])
                assert torch.equal(cv[bi, slots, n], v[bi, sorted(held), n])
        o = cache.attend(q[:, i : i + 1].to(device)).cpu()
        ref = torch.empty(2, 1, 4, 24, dtype=torch.float64)
        for bi in range(2):
            for m in range(4):
                n = m // 2
                keys = sorted(top_w_positions(bias[bi, n].tolist(), i, w))
                s = k[bi, keys, n].double() @ q[bi, i, m].double() * 24**-0.5 + bias[bi, n, keys].double()
                ref[bi, 0, m] = torch.softmax(s, 0) @ v[bi, keys, n].double()
        assert_close(o, ref, torch.float32, f"decode row {i}")


@pytest.mark.interpret
@pytest.mark.parametrize("w,scan_tile", [(6, None), (6, 2), (None, None)])
def test_triton_decode_path_matches_float64_rows(w, scan_tile, monkeypatch):
    """Under the interpreter: attend runs the Triton decode kernel over the cache's unordered,
    partly empty slots, and once the window is full each update runs the replace-lowest kernel."""
    if scan_tile:  # the lowest key found over several tiles of slots, not one
        from wmzoo.kernels.dmattn import triton_backend

        monkeypatch.setattr(triton_backend, "REPLACE_BLOCK_S", scan_tile)
    check_triton_decode_path(w, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("w", [6, None])
def test_gpu_decode_path_matches_float64_rows(w):
    check_triton_decode_path(w, "cuda")
