"""DMAttn Triton kernels against a float64 brute force written here (TRITON_INTERPRET=1 on CPU,
bf16 on a GPU). The brute force materializes the T x T logits and builds the keep_window mask
from explicit rank counts, so it shares nothing with the kernels' block-merge selection."""

from __future__ import annotations

import pytest
import torch

from conftest import REL_TOL, assert_close, rel_err
from wmzoo.kernels.dmattn import DMAttnCache, dmattn, dmattn_bwd, dmattn_fwd, triton_backend, triton_select
from wmzoo.kernels.registry import Unsupported


def keep_mask(bias: torch.Tensor, w: int | None) -> torch.Tensor:
    """bias (t,) -> (t, t): query i keeps the w causal keys of highest rank (bias, then recency)."""
    t = bias.shape[0]
    j = torch.arange(t)
    causal = j[None, :] <= j[:, None]
    if w is None:
        return causal
    above = (bias[:, None] > bias[None, :]) | ((bias[:, None] == bias[None, :]) & (j[:, None] > j[None, :]))
    count = torch.cumsum(above.long(), 0)  # count[i, j] = #{j' <= i ranking above j}
    return causal & (count < w)


def brute_force(q, k, v, bias, w, scale, cu=None):
    """float64 o (b,t,h,d) and lse (b,h,t); cu: python list of sequence boundaries."""
    q, k, v, bias = (x.double() for x in (q, k, v, bias))
    b, t, h, _ = q.shape
    g = h // k.shape[2]
    kh, vh, bh = k.repeat_interleave(g, 2), v.repeat_interleave(g, 2), bias.repeat_interleave(g, 1)
    s = torch.einsum("bihd,bjhd->bhij", q, kh) * scale + bh[:, :, None, :]
    mask = torch.zeros(b, h, t, t, dtype=torch.bool)
    bounds = [(0, t)] if cu is None else list(zip(cu[:-1], cu[1:]))
    for x in range(b):
        for y in range(h):
            for s0, s1 in bounds:
                mask[x, y, s0:s1, s0:s1] = keep_mask(bh[x, y, s0:s1].detach(), w)
    s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", torch.softmax(s, -1), vh), torch.logsumexp(s, -1)


def make_bias(kind: str, shape, gen):
    t = shape[-1]
    if kind == "normal":
        return torch.randn(shape, generator=gen)
    if kind == "ties":  # few distinct values: the tie rule decides most of the window
        return torch.randint(-2, 2, shape, generator=gen).float()
    ramp = torch.arange(t, dtype=torch.float32) / t
    return (ramp if kind == "rising" else -ramp).expand(shape).contiguous()  # every new key on top / at bottom


def run_case(b, t, h, hkv, d, w, dtype, bias_kind="normal", cu=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, d, generator=gen).to(dtype)
    k = torch.randn(b, t, hkv, d, generator=gen).to(dtype)
    v = torch.randn(b, t, hkv, d, generator=gen).to(dtype)
    bias = make_bias(bias_kind, (b, hkv, t), gen)
    do = torch.randn(b, t, h, d, generator=gen).to(dtype)
    scale = 0.8 * d**-0.5
    cut = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    o, lse, lists = triton_backend.forward_with_window(q, k, v, bias, cut, w or 0, scale)
    assert (lists is None) == (w is None or w >= t)
    grads = triton_backend.backward(do, q, k, v, bias, o, lse, *(lists or (None,) * 4), cut, w or 0, scale)
    leaves = [x.double().requires_grad_() for x in (q, k, v, bias)]
    o_ref, lse_ref = brute_force(*leaves, w, scale, cu)
    ref_grads = torch.autograd.grad(o_ref, leaves, do.double())
    assert o.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (b, h, t)
    assert_close(o, o_ref, dtype, "o")
    assert_close(lse, lse_ref, torch.float32, "lse")
    for name, got, want in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
        assert got.shape == want.shape
        # a single kept key per query gives exactly zero logit gradients: compare absolutely then
        if want.norm() == 0:
            assert got.abs().max() <= REL_TOL[dtype], name
        else:
            assert_close(got, want, dtype, name, factor=2.0)


CASES = [
    # b, t, h, hkv, d, keep_window, dtype, bias
    (1, 1, 2, 1, 16, None, torch.float32, "normal"),
    (1, 1, 2, 2, 32, 1, torch.float16, "normal"),
    (2, 63, 4, 2, 32, None, torch.float32, "normal"),
    (2, 65, 4, 4, 64, None, torch.float16, "normal"),
    (1, 257, 4, 1, 16, None, torch.float32, "normal"),
    (1, 65, 2, 2, 128, 17, torch.float32, "normal"),
    (2, 63, 4, 1, 48, 7, torch.float16, "ties"),
    (1, 65, 2, 1, 48, None, torch.float16, "normal"),  # d < BLOCK_D: the masked forward tiles
    (1, 257, 2, 1, 64, 40, torch.float32, "ties"),
    (1, 257, 2, 2, 32, 40, torch.float32, "rising"),
    (1, 257, 2, 1, 32, 33, torch.float16, "falling"),
    (1, 257, 4, 2, 16, 1, torch.float32, "normal"),
    (1, 257, 2, 1, 32, 100, torch.float32, "normal"),
    (1, 65, 2, 1, 32, 65, torch.float32, "ties"),  # window == t
    (1, 63, 2, 1, 32, 500, torch.float16, "normal"),  # window > t
    (2, 200, 2, 2, 16, 45, torch.float32, "normal"),  # batch rows, several selection scan steps
]


@pytest.mark.interpret
@pytest.mark.parametrize("b,t,h,hkv,d,w,dtype,bias_kind", CASES)
def test_matches_brute_force(b, t, h, hkv, d, w, dtype, bias_kind):
    run_case(b, t, h, hkv, d, w, dtype, bias_kind)


@pytest.mark.interpret
@pytest.mark.parametrize("w", [None, 9, 40])
def test_varlen_equals_separate_sequences(w):
    # sequences shorter than, equal to and longer than a block, one of length 1, one spanning
    # several selection scan steps
    run_case(1, 200, 4, 2, 32, w, torch.float32, "ties", cu=[0, 30, 31, 95, 200])


@pytest.mark.interpret
def test_varlen_matches_unpacked_kernel_output():
    gen = torch.Generator().manual_seed(3)
    lens = [37, 64, 5]
    q = torch.randn(1, sum(lens), 2, 32, generator=gen)
    k, v = torch.randn(2, 1, sum(lens), 1, 32, generator=gen)
    bias = torch.randn(1, 1, sum(lens), generator=gen)
    cu = torch.tensor([0, 37, 101, 106])
    o, _ = triton_backend.forward(q, k, v, bias, cu, 20, 0.2)
    for s0, s1 in zip(cu[:-1].tolist(), cu[1:].tolist()):
        o_s, _ = triton_backend.forward(q[:, s0:s1], k[:, s0:s1], v[:, s0:s1], bias[..., s0:s1], None, 20, 0.2)
        assert_close(o[:, s0:s1], o_s, torch.float32, "varlen slice")


def ranked(bias: torch.Tensor, keys: range) -> list[int]:
    """Positions of ``keys`` best first (bias desc, ties to the more recent key)."""
    return sorted(keys, key=lambda j: (bias[j].item(), j), reverse=True)


@pytest.mark.interpret
@pytest.mark.parametrize("t,w,cu,kind,chunk", [(257, 40, None, "normal", 128), (300, 70, None, "ties", 16),
                                               (257, 1, None, "normal", 128),
                                               (200, 9, [0, 30, 31, 95, 200], "ties", 4),
                                               (260, 33, [0, 200, 260], "rising", 128)])
def test_window_selection_lists_and_thresholds(monkeypatch, t, w, cu, kind, chunk):
    """The selection itself, against sorting written here: block m's list holds the top-w keys
    of its sequence before the block, best first, -1 after; theta[i] is the w-th best key of
    i's causal prefix in its sequence, -1 while that prefix has fewer than w keys; count[i] is
    how many of its block's list i keeps (a prefix of the list). Batch rows and
    heads (b 2, hkv 2) have their own biases; up to 10 blocks per sequence: 4 scan steps; a
    small chunk splits each merge over several scan programs."""
    monkeypatch.setattr(triton_select, "SCAN_CHUNK", chunk)
    gen = torch.Generator().manual_seed(t + w)
    bias = make_bias(kind, (2, 2, t), gen)
    cut = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    layout = triton_backend.block_layout(t, cut, triton_backend.BLOCK_M, bias.device)
    kept, kept_bias, theta, count = triton_backend.select_window(bias, w, triton_backend.BLOCK_M, layout)
    m = triton_backend.BLOCK_M
    bounds = [0, t] if cu is None else cu
    for x in range(2):
        for y in range(2):
            row = bias[x, y]
            blk = 0
            for s0, s1 in zip(bounds[:-1], bounds[1:]):
                for i in range(s0, s1):
                    best = ranked(row, range(s0, i + 1))
                    assert theta[x, y, i].item() == (best[w - 1] if len(best) >= w else -1), (x, y, i)
                    # count: the slots of i's block list that i keeps, which are a prefix of it
                    block_list = ranked(row, range(s0, s0 + (i - s0) // m * m))[:w]
                    kept_slots = [s for s, key in enumerate(block_list) if key in best[:w]]
                    assert kept_slots == list(range(len(kept_slots))), (x, y, i)
                    assert count[x, y, i].item() == len(kept_slots), (x, y, i)
                for b0 in range(s0, s1, m):
                    want = ranked(row, range(s0, b0))[:w]
                    got = kept[x, y, blk].tolist()
                    assert got == want + [-1] * (w - len(want)), (x, y, blk)
                    assert kept_bias[x, y, blk, :len(want)].tolist() == row[want].tolist()
                    blk += 1


@pytest.mark.interpret
@pytest.mark.parametrize("t,w,cu,kind", [(300, 70, None, "ties"), (257, 1, None, "falling"),
                                         (200, 9, [0, 30, 31, 95, 200], "ties")])
def test_key_order_last_query(t, w, cu, kind):
    """Each key's last keeping query against the explicit rank-count mask (keep_mask): the last
    i of its sequence whose window holds j, -1 when none does; the order is a permutation of
    every position of the row (each key in exactly one key-major tile)."""
    gen = torch.Generator().manual_seed(t * w)
    bias = make_bias(kind, (2, 2, t), gen)
    cut = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    layout = triton_backend.block_layout(t, cut, triton_backend.BLOCK_M, bias.device)
    _, _, theta, _ = triton_backend.select_window(bias, w, triton_backend.BLOCK_M, layout)
    order, last = triton_backend.key_order(bias, theta, w, layout)
    bounds = [0, t] if cu is None else cu
    for x in range(2):
        for y in range(2):
            assert sorted(order[x, y].tolist()) == list(range(t))
            for s0, s1 in zip(bounds[:-1], bounds[1:]):
                mask = keep_mask(bias[x, y, s0:s1], w)  # [i, j]
                rows = torch.arange(s0, s1)[:, None].expand_as(mask)
                want = torch.where(mask, rows, -1).amax(0)
                assert last[x, y, s0:s1].tolist() == want.tolist(), (x, y, s0)


@pytest.mark.interpret
def test_key_order_tiles_stay_near_the_kept_pairs():
    """The point of the key order: tiles of 32 keys in that order span query ranges covering
    few pairs beyond those the window keeps (1.61x here with i.i.d. biases, the simulation's
    1.57x; tiles of consecutive keys: 4.37x). Counted per query, against keep_mask."""
    t, w, tile = 1024, 128, 32
    bias = torch.randn(1, 1, t, generator=torch.Generator().manual_seed(0))
    layout = triton_backend.block_layout(t, None, triton_backend.BLOCK_M, bias.device)
    _, _, theta, _ = triton_backend.select_window(bias, w, triton_backend.BLOCK_M, layout)
    order, last = (x[0, 0] for x in triton_backend.key_order(bias, theta, w, layout))

    def visited(keys):
        live = keys[last[keys] >= 0]
        return 0 if live.numel() == 0 else tile * (int(last[live].max()) + 1 - int(live.min()))

    kept = int(keep_mask(bias[0, 0], w).sum())
    sorted_pairs = sum(visited(order[i:i + tile].long()) for i in range(0, t, tile))
    positional = sum(visited(torch.arange(i, min(t, i + tile))) for i in range(0, t, tile))
    assert sorted_pairs <= 2.0 * kept < positional, (sorted_pairs / kept, positional / kept)


@pytest.mark.interpret
@pytest.mark.parametrize("s,h,hkv,d,dtype", [(1, 2, 1, 16, torch.float32), (300, 4, 2, 64, torch.float16), (77, 8, 2, 128, torch.float32)])
def test_decode_matches_brute_force(s, h, hkv, d, dtype):
    gen = torch.Generator().manual_seed(1)
    b = 2
    q = torch.randn(b, 1, h, d, generator=gen).to(dtype)
    # the first s of s + 5 slots, as DMAttnCache.attend passes them: strided views
    kc, vc = torch.randn(2, b, s + 5, hkv, d, generator=gen).to(dtype)[:, :, :s]
    bc = torch.randn(b, hkv, s + 5, generator=gen)[..., :s]
    valid = (torch.rand(b, hkv, s + 5, generator=gen) > 0.3)[..., :s]
    valid[..., 0] = True
    o = triton_backend.decode(q, kc, vc, bc, valid, d**-0.5)
    g = h // hkv
    logits = torch.einsum("bqhd,bshd->bhqs", q.double(), kc.double().repeat_interleave(g, 2)) * d**-0.5
    logits = logits + bc.double().repeat_interleave(g, 1)[:, :, None]
    logits = logits.masked_fill(~valid.repeat_interleave(g, 1)[:, :, None], float("-inf"))
    ref = torch.einsum("bhqs,bshd->bqhd", logits.softmax(-1), vc.double().repeat_interleave(g, 2))
    assert o.shape == q.shape and o.dtype == dtype
    assert_close(o, ref, dtype, "decode")


@pytest.mark.interpret
def test_refuses_float64_with_reason():
    x = torch.randn(1, 4, 1, 16, dtype=torch.float64)
    with pytest.raises(Unsupported, match="float64"):
        triton_backend.forward(x, x, x, torch.zeros(1, 1, 4), None, 0, 0.25)


def small_inputs(t, seed, dtype=torch.float32, h=4, hkv=2, d=16):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, t, h, d, generator=gen).to(dtype)
    k, v = torch.randn(2, 1, t, hkv, d, generator=gen).to(dtype)
    bias = torch.randint(-2, 2, (1, hkv, t), generator=gen).float()
    return [q, k, v, bias]


@pytest.mark.interpret
@pytest.mark.parametrize("w", [None, 5])
def test_public_op_autograd_through_triton(w):
    # the grad of .sum() arrives with stride 0: the op must make it contiguous
    inputs = [x.requires_grad_() for x in small_inputs(70, seed=5)]
    out = dmattn(*inputs, keep_window=w)
    grads = torch.autograd.grad(out.sum(), inputs)
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    ref, _ = brute_force(*leaves, w, 16**-0.5)
    ref_grads = torch.autograd.grad(ref.sum(), leaves)
    assert_close(out, ref, torch.float32, "o")
    for name, g, r in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
        assert_close(g, r, torch.float32, name, factor=2.0)


@pytest.mark.interpret
def test_opcheck_on_triton_path():
    q, k, v, bias = small_inputs(21, seed=23)
    # schema, fake and autograd registration: one dense call without window, one varlen with
    for cu, w in ((None, 0), (torch.tensor([0, 8, 21], dtype=torch.int32), 3)):
        args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), bias.requires_grad_(), cu, w, 0.25)
        torch.library.opcheck(dmattn_fwd, args)
        o, lse, *lists = dmattn_fwd(*(x.detach() if isinstance(x, torch.Tensor) else x for x in args))
        if w:  # the selection, shaped from input shapes and w alone (n_blocks: 21/32 -> 1, + 2 seqs)
            assert [tuple(x.shape) for x in lists] == [(1, 2, 3, w), (1, 2, 3, w), (1, 2, 21), (1, 2, 21)]
        do = torch.randn_like(o)
        torch.library.opcheck(dmattn_bwd, (do, q.detach(), k.detach(), v.detach(), bias.detach(), o, lse, *lists, cu, w, 0.25))


@pytest.mark.interpret
def test_opcheck_with_strided_inputs():
    """The ops are opaque to Inductor, which plans with the fakes' strides: q, k, v as views
    of head-major storage (dense, not contiguous) must still give outputs whose strides the
    fakes predict (opcheck's fake test compares them)."""
    q, k, v, bias = small_inputs(21, seed=29)
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not q.is_contiguous()
    for w in (0, 3):
        args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), bias.requires_grad_(), None, w, 0.25)
        torch.library.opcheck(dmattn_fwd, args)
        o, lse, *lists = dmattn_fwd(*(x.detach() if isinstance(x, torch.Tensor) else x for x in args))
        do = torch.randn_like(o).transpose(1, 2).contiguous().transpose(1, 2)
        torch.library.opcheck(dmattn_bwd, (do, q.detach(), k.detach(), v.detach(), bias.detach(), o, lse, *lists, None, w, 0.25))


@pytest.mark.interpret
def test_training_step_selects_once(monkeypatch):
    """The backward reuses the forward's window selection (saved as op outputs): one selection
    per forward+backward, and the gradients still match the brute force."""
    calls = []
    select = triton_backend.select_window
    monkeypatch.setattr(triton_backend, "select_window", lambda *a: calls.append(1) or select(*a))
    inputs = [x.requires_grad_() for x in small_inputs(45, seed=5)]
    grads = torch.autograd.grad(dmattn(*inputs, keep_window=7).square().sum(), inputs)
    assert len(calls) == 1
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    ref, _ = brute_force(*leaves, 7, 16**-0.5)
    for name, g, r in zip(("dq", "dk", "dv", "dbias"), grads, torch.autograd.grad(ref.square().sum(), leaves)):
        assert_close(g, r, torch.float32, name, factor=2.0)


@pytest.mark.interpret
@pytest.mark.parametrize("w,cu", [(None, None), (7, None), (9, [0, 30, 31, 95, 140])])
def test_deterministic_mode(deterministic, w, cu):
    """With torch.use_deterministic_algorithms(True) everything stays on the Triton kernels
    (pinned configs, kernels/autotune), and gradients stay exact. (Deterministic mode also
    fills torch.empty with NaN: a kernel that leaves part of an output unwritten fails here.)"""
    t = 140 if cu else 45
    inputs = [x.requires_grad_() for x in small_inputs(t, seed=5)]
    cut = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    out = dmattn(*inputs, keep_window=w, cu_seqlens=cut)
    grads = torch.autograd.grad(out.square().sum(), inputs)
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    ref, _ = brute_force(*leaves, w, 16**-0.5, cu)
    assert_close(out, ref, torch.float32, "o")
    for name, g, r in zip(("dq", "dk", "dv", "dbias"), grads, torch.autograd.grad(ref.square().sum(), leaves)):
        assert_close(g, r, torch.float32, name, factor=2.0)


@pytest.mark.interpret
def test_compile_fullgraph_dynamic_on_triton_path():
    torch._dynamo.reset()

    def fn(q, k, v, bias, cu):
        return dmattn(q, k, v, bias, keep_window=6, cu_seqlens=cu).square().sum()

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for t in (19, 40):  # the second length reuses the dynamic graph
        inputs = [x.requires_grad_() for x in small_inputs(t, seed=t)]
        cu = torch.tensor([0, t // 3, t], dtype=torch.int32)
        out = compiled(*inputs, cu)
        grads = torch.autograd.grad(out, inputs)
        leaves = [x.detach().double().requires_grad_() for x in inputs]
        ref, _ = brute_force(*leaves, 6, 16**-0.5, cu.tolist())
        ref_grads = torch.autograd.grad(ref.square().sum(), leaves)
        assert_close(out, ref.square().sum(), torch.float32, "compiled output")
        for name, g, r in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
            assert_close(g, r, torch.float32, f"compiled {name}", factor=2.0)


@pytest.mark.interpret
@pytest.mark.parametrize("w", [3, None])
def test_cache_attend_through_triton_decode_matches_brute_force_rows(w):
    t, h, hkv, d = 40, 4, 2, 16
    q, k, v, bias = small_inputs(t, seed=8, h=h, hkv=hkv, d=d)
    ref, _ = brute_force(q, k, v, bias, w, d**-0.5)
    cache = DMAttnCache.empty(1, hkv, d, keep_window=w, dtype=torch.float32, device="cpu")
    for i in range(t):
        cache.update(k[:, i : i + 1], v[:, i : i + 1], bias[..., i : i + 1])
        assert_close(cache.attend(q[:, i : i + 1]), ref[:, i : i + 1], torch.float32, f"row {i}")
    if w is not None:
        assert cache.slots <= w


@pytest.mark.interpret
def test_cache_attend_launches_the_decode_kernel_directly(monkeypatch):
    """Decode runs eagerly on real tensors: its launches skip the traceable wrapper (~1 ms of
    higher-order-op dispatch per launch on CUDA, which dominated the measured decode latency)."""
    from torch._library.triton import is_wrap_triton_enabled

    seen = []
    decode = triton_backend.decode
    monkeypatch.setattr(triton_backend, "decode", lambda *a: seen.append(is_wrap_triton_enabled()) or decode(*a))
    q, k, v, bias = small_inputs(5, seed=3, h=2, hkv=2, d=16)
    cache = DMAttnCache.empty(1, 2, 16, keep_window=3, dtype=torch.float32, device="cpu")
    cache.update(k, v, bias)
    cache.attend(q[:, -1:])
    assert seen == [False] and is_wrap_triton_enabled()


@pytest.mark.gpu
@pytest.mark.parametrize("t,w,det", [(1000, None, False), (1000, 100, False), (2100, 300, False), (777, 1, False),
                                     (1000, None, True), (2100, 300, True)])
def test_gpu_bf16_matches_brute_force(t, w, det, request):
    """det: in torch's deterministic mode (pinned configs; with a window, the key-major dk / dv /
    dbias), where the backward must also repeat bit for bit."""
    if det:
        request.getfixturevalue("deterministic")
    gen = torch.Generator(device="cuda").manual_seed(0)
    b, h, hkv, d = 2, 8, 4, 128
    q = torch.randn(b, t, h, d, device="cuda", generator=gen).bfloat16()
    k, v = torch.randn(2, b, t, hkv, d, device="cuda", generator=gen).bfloat16()
    bias = (torch.randn(b, hkv, t, device="cuda", generator=gen) * 2).round()
    do = torch.randn(b, t, h, d, device="cuda", generator=gen).bfloat16()
    o, lse, lists = triton_backend.forward_with_window(q, k, v, bias, None, w or 0, d**-0.5)
    grads = triton_backend.backward(do, q, k, v, bias, o, lse, *(lists or (None,) * 4), None, w or 0, d**-0.5)
    leaves = [x.cpu().double().requires_grad_() for x in (q, k, v, bias)]
    o_ref, _ = brute_force(*leaves, w, d**-0.5)
    ref_grads = torch.autograd.grad(o_ref, leaves, do.cpu().double())
    assert_close(o, o_ref, torch.bfloat16, "o")
    for name, got, want in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
        if want.norm() == 0:
            assert got.abs().max() <= REL_TOL[torch.bfloat16], name
        else:
            assert_close(got, want, torch.bfloat16, name, factor=2.0)
    if det:
        again = triton_backend.backward(do, q, k, v, bias, o, lse, *(lists or (None,) * 4), None, w or 0, d**-0.5)
        assert all(torch.equal(a, b) for a, b in zip(grads, again))


@pytest.mark.gpu
@pytest.mark.parametrize("w", [None, 100])
def test_gpu_compile_fullgraph_dynamic_matches_eager(w):
    # on CUDA the op is a triton_op: Inductor traces the body, block tables and autotuned
    # launches included
    torch._dynamo.reset()

    def fn(q, k, v, bias, cu):
        return dmattn(q, k, v, bias, keep_window=w, cu_seqlens=cu).float().square().sum()

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for t in (700, 1300):
        gen = torch.Generator(device="cuda").manual_seed(t)
        q = torch.randn(1, t, 8, 64, device="cuda", generator=gen).bfloat16().requires_grad_()
        k, v = (torch.randn(1, t, 4, 64, device="cuda", generator=gen).bfloat16().requires_grad_() for _ in range(2))
        bias = torch.randn(1, 4, t, device="cuda", generator=gen).requires_grad_()
        cu = torch.tensor([0, t // 3, t], device="cuda", dtype=torch.int32)
        inputs = [q, k, v, bias]
        eager_loss, compiled_loss = fn(*inputs, cu), compiled(*inputs, cu)
        eager_grads = torch.autograd.grad(eager_loss, inputs)
        grads = torch.autograd.grad(compiled_loss, inputs)
        # every error first, then one assert: a failure says which outputs went wrong
        errs = {"loss": rel_err(compiled_loss, eager_loss)}
        errs.update({n: rel_err(g, e) for n, g, e in zip(("dq", "dk", "dv", "dbias"), grads, eager_grads)})
        assert max(errs.values()) <= REL_TOL[torch.bfloat16], f"t {t}, compiled vs eager: {errs}"
