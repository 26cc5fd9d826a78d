"""DMAttn op (reference path) against an independent float64 brute force: values, lse, the
keep_window selection with its tie rule, gradients, varlen, opcheck, torch.compile, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

from wmzoo.kernels.dmattn import dmattn, dmattn_reference

FWD = torch.ops.wmzoo.dmattn_fwd.default
BWD = torch.ops.wmzoo.dmattn_bwd.default


def kept_keys(bias_row: list[float], start: int, i: int, w: int | None) -> list[int]:
    """Keys kept by query i of a sequence starting at ``start``: the w causal keys of highest
    (bias, index), i.e. bias descending and, on equal bias, the more recent key first."""
    causal = list(range(start, i + 1))
    if w is None:
        return causal
    return sorted(causal, key=lambda j: (bias_row[j], j), reverse=True)[:w]


def brute_force(q, k, v, bias, w=None, scale=None, cu_seqlens=None):
    """float64 o (b, t, h, d) and lse (b, h, t): the kept set of every query built one query at
    a time with Python sorting, then a masked softmax over exactly those keys."""
    b, t, h, d = q.shape
    hkv = k.shape[2]
    scale = d**-0.5 if scale is None else scale
    q, k, v, bias = q.double(), k.double(), v.double(), bias.double()
    starts = [0] * t
    if cu_seqlens is not None:
        bounds = [int(x) for x in cu_seqlens]
        for s, e in zip(bounds[:-1], bounds[1:]):
            starts[s:e] = [s] * (e - s)
    keep = torch.zeros(b, hkv, t, t, dtype=torch.bool)
    for bi in range(b):
        for n in range(hkv):
            row = bias[bi, n].tolist()
            for i in range(t):
                keep[bi, n, i, kept_keys(row, starts[i], i, w)] = True
    g = h // hkv
    keep = keep.repeat_interleave(g, dim=1)  # query head m reads kv head m // g
    kh, vh = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, kh) * scale + bias.repeat_interleave(g, dim=1)[:, :, None, :]
    s = s.masked_fill(~keep, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", torch.softmax(s, -1), vh), torch.logsumexp(s, -1)


def make(b, t, h, hkv, d, dtype=torch.float64, ties=False, seed=0, bias_scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, d, generator=gen, dtype=torch.float64).to(dtype)
    k = torch.randn(b, t, hkv, d, generator=gen, dtype=torch.float64).to(dtype)
    v = torch.randn(b, t, hkv, d, generator=gen, dtype=torch.float64).to(dtype)
    bias = torch.randn(b, hkv, t, generator=gen, dtype=torch.float64) * bias_scale
    if ties:  # few distinct values: the tie rule decides most selections
        bias = torch.round(bias)
    return q, k, v, bias.to(dtype)


CASES = [  # (t, h, hkv, d, window)
    (1, 2, 2, 16, None),
    (1, 4, 1, 40, 1),
    (63, 2, 2, 16, 7),
    (63, 4, 2, 40, 63),
    (63, 4, 1, 64, None),
    (65, 4, 4, 40, 1),
    (65, 4, 1, 16, 64),
    (65, 2, 1, 64, 100),
    (200, 4, 2, 16, 33),
    (200, 2, 2, 40, 200),
    (200, 4, 1, 64, 257),
]


@pytest.mark.parametrize("t,h,hkv,d,w", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_forward_matches_brute_force(t, h, hkv, d, w, ties):
    q, k, v, bias = make(2 if t < 200 else 1, t, h, hkv, d, ties=ties, seed=t + d)
    o_ref, lse_ref = brute_force(q, k, v, bias, w)
    o, lse, *_ = FWD(q, k, v, bias, None, w or 0, d**-0.5)
    assert_close(o, o_ref, torch.float64, "o")
    assert lse.dtype == torch.float32
    assert_close(lse, lse_ref, torch.float32, "lse")
    o32 = dmattn(*(x.float() for x in (q, k, v, bias)), keep_window=w)
    assert o32.dtype == torch.float32
    assert_close(o32, o_ref, torch.float32, "o (float32)")


def test_float16_output_dtype_and_accuracy():
    q, k, v, bias = make(1, 65, 4, 2, 40, seed=3)
    o_ref, _ = brute_force(q.half(), k.half(), v.half(), bias.half(), 9)
    o = dmattn(q.half(), k.half(), v.half(), bias.half(), keep_window=9)
    assert o.dtype == torch.float16
    assert_close(o, o_ref, torch.float16, "o (float16)")


def test_all_equal_bias_keeps_the_most_recent_keys():
    """With one bias value everywhere the tie rule makes the window a sliding window of w."""
    q, k, v, _ = make(1, 40, 2, 1, 16, seed=5)
    bias = torch.full((1, 1, 40), 0.25, dtype=torch.float64)
    w = 6
    o = dmattn(q, k, v, bias, keep_window=w)
    pos = torch.arange(40)
    sliding = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - w)
    s = torch.einsum("ihd,jhd->hij", q[0], k[0].expand(-1, 2, -1)) * 16**-0.5 + 0.25
    p = torch.softmax(s.masked_fill(~sliding, -math.inf), -1)
    ref = torch.einsum("hij,jd->ihd", p, v[0, :, 0])
    assert_close(o[0], ref, torch.float64, "sliding-window o")


def test_scale_is_used():
    q, k, v, bias = make(1, 30, 2, 2, 16, seed=7)
    o_ref, _ = brute_force(q, k, v, bias, 5, scale=0.7)
    assert_close(dmattn(q, k, v, bias, keep_window=5, scale=0.7), o_ref, torch.float64, "o")


@pytest.mark.parametrize("t,h,hkv,d,w,ties", [(65, 4, 2, 16, 7, True), (63, 2, 1, 40, None, False),
                                              (33, 4, 4, 16, 33, False), (40, 4, 1, 16, 1, True)])
def test_gradients_match_brute_force(t, h, hkv, d, w, ties):
    inputs = [x.requires_grad_() for x in make(1, t, h, hkv, d, ties=ties, seed=11)]
    do = torch.randn(1, t, h, d, dtype=torch.float64)
    o = dmattn(*inputs, keep_window=w)
    grads = torch.autograd.grad(o, inputs, do)
    ref_inputs = [x.detach().clone().requires_grad_() for x in inputs]
    o_ref, _ = brute_force(*ref_inputs, w)
    ref_grads = torch.autograd.grad(o_ref, ref_inputs, do)
    for name, g, r in zip("q k v bias".split(), grads, ref_grads):
        assert g.dtype == torch.float64
        assert_close(g, r, torch.float64, f"d{name}")


def test_gradient_of_sum_has_stride_zero_grad():
    inputs = [x.float().requires_grad_() for x in make(1, 17, 2, 1, 16, seed=2)]
    dmattn(*inputs, keep_window=4).sum().backward()  # grad of .sum() is an expanded (stride 0) tensor
    ref_inputs = [x.detach().double().requires_grad_() for x in inputs]
    brute_force(*ref_inputs, 4)[0].sum().backward()
    for x, r in zip(inputs, ref_inputs):
        assert_close(x.grad, r.grad, torch.float32, "grad of sum")


CU = [0, 20, 21, 63, 90]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("w", [None, 1, 5, 30])
def test_varlen_matches_separate_sequences(dtype, w):
    q, k, v, bias = [x.requires_grad_() for x in make(1, 90, 4, 2, 16, ties=True, seed=13)]
    cu = torch.tensor(CU, dtype=dtype)
    o = dmattn(q, k, v, bias, keep_window=w, cu_seqlens=cu)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v, bias), do)
    for s, e in zip(CU[:-1], CU[1:]):
        part = [x.detach()[:, s:e].clone().requires_grad_() for x in (q, k, v)]
        part.append(bias.detach()[:, :, s:e].clone().requires_grad_())
        o_ref, _ = brute_force(*part, w)
        assert_close(o[:, s:e], o_ref, torch.float64, f"o of sequence {s}:{e}")
        ref_grads = torch.autograd.grad(o_ref, part, do[:, s:e])
        for name, g, r in zip("q k v".split(), grads[:3], ref_grads[:3]):
            assert_close(g[:, s:e], r, torch.float64, f"d{name} of sequence {s}:{e}")
        assert_close(grads[3][:, :, s:e], ref_grads[3], torch.float64, f"dbias of sequence {s}:{e}")


def test_varlen_lse_matches_brute_force():
    q, k, v, bias = make(1, 90, 2, 1, 16, seed=17)
    cu = torch.tensor(CU)
    o, lse, *_ = FWD(q, k, v, bias, cu, 4, 0.25)
    o_ref, lse_ref = brute_force(q, k, v, bias, 4, scale=0.25, cu_seqlens=cu)
    assert_close(o, o_ref, torch.float64, "varlen o")
    assert_close(lse, lse_ref, torch.float32, "varlen lse")


def test_reference_builds_nothing_larger_than_the_score_matrix():
    """The selection is O(b*hkv*t*t): compare peak tensor sizes through a dispatch hook."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for x in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(x, torch.Tensor):
                    Largest.numel = max(Largest.numel, x.numel())
            return out

    b, t, h, hkv = 2, 50, 4, 2
    q, k, v, bias = make(b, t, h, hkv, 16, seed=19)
    with Largest():
        dmattn_reference(q, k, v, bias, keep_window=7)
    assert Largest.numel <= b * h * t * t


def test_opcheck():
    q, k, v, bias = make(1, 21, 4, 2, 16, seed=23)
    for cu, w in ((None, 5), (None, 0), (torch.tensor([0, 8, 21]), 3)):
        args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), bias.requires_grad_(), cu, w, 0.25)
        torch.library.opcheck(FWD, args)
        o, lse, *lists = FWD(*(x.detach() if isinstance(x, torch.Tensor) else x for x in args))
        # the reference makes no window selection: its list outputs are empty stand-ins
        assert [(x.numel(), x.dtype) for x in lists] == [(0, torch.int32), (0, torch.float32), (0, torch.int32), (0, torch.int32)]
        do = torch.randn_like(o)
        torch.library.opcheck(BWD, (do, q.detach(), k.detach(), v.detach(), bias.detach(), o, lse, *lists, cu, w, 0.25))


def test_op_bodies_trace_with_symbolic_shapes():
    """On CUDA the op bodies are their own fakes: tracing them with symbolic shapes fails on any
    host sync or data-dependent shape. The windowed varlen path uses every op the others use."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from wmzoo.kernels.dmattn.op import _bwd_body, _fwd_body

    q, k, v, bias = make(1, 21, 4, 2, 16, dtype=torch.float32, seed=31)
    cu = torch.tensor([0, 8, 21])
    make_fx(lambda *a: _fwd_body(*a, 5, 0.25), tracing_mode="symbolic")(q, k, v, bias, cu)
    o, lse, *lists = _fwd_body(q, k, v, bias, cu, 5, 0.25)
    make_fx(lambda *a: _bwd_body(*a, 5, 0.25), tracing_mode="symbolic")(o, q, k, v, bias, o, lse, *lists, cu)


@pytest.mark.parametrize("varlen", [False, True])
def test_compile_fullgraph_dynamic_matches_eager(varlen):
    torch._dynamo.reset()

    def fn(q, k, v, bias, cu):
        return dmattn(q, k, v, bias, keep_window=6, cu_seqlens=cu).square().sum()

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for t in (19, 34):  # a second length reuses the dynamic graph
        inputs = [x.float().requires_grad_() for x in make(1, t, 4, 2, 16, seed=t)]
        cu = torch.tensor([0, t // 3, t], dtype=torch.int32) if varlen else None
        eager = fn(*inputs, cu)
        eager_grads = torch.autograd.grad(eager, inputs)
        out = compiled(*inputs, cu)
        grads = torch.autograd.grad(out, inputs)
        assert_close(out, eager, torch.float32, "compiled output")
        for name, g, e in zip("q k v bias".split(), grads, eager_grads):
            assert_close(g, e, torch.float32, f"compiled d{name}")


@settings(max_examples=12, deadline=None)
@given(
    t=st.integers(1, 37),
    hkv=st.integers(1, 3),
    group=st.sampled_from([1, 2, 3]),
    d=st.integers(1, 24),
    w=st.one_of(st.none(), st.integers(1, 40)),
    ties=st.booleans(),
    cuts=st.one_of(st.none(), st.lists(st.integers(0, 37), max_size=4)),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_odd_sizes(t, hkv, group, d, w, ties, cuts, seed):
    """Random sizes, windows, ties and (batch 1) packings, empty sequences included."""
    # boundaries may repeat (empty sequences) or sit at 0 and t
    cu = None if cuts is None else torch.tensor([0, *sorted(min(c, t) for c in cuts), t])
    inputs = [x.requires_grad_() for x in make(1 if cuts is not None else 2, t, hkv * group, hkv, d,
                                               ties=ties, seed=seed)]
    o = dmattn(*inputs, keep_window=w, cu_seqlens=cu)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, inputs, do)
    ref_inputs = [x.detach().clone().requires_grad_() for x in inputs]
    o_ref, _ = brute_force(*ref_inputs, w, cu_seqlens=cu)
    assert_close(o, o_ref, torch.float64, "o")
    for name, g, r in zip("q k v bias".split(), grads, torch.autograd.grad(o_ref, ref_inputs, do)):
        assert_close(g, r, torch.float64, f"d{name}")


def test_no_window_and_window_at_least_t_are_plain_causal():
    q, k, v, bias = make(1, 23, 2, 1, 16, seed=29)
    full = dmattn(q, k, v, bias)
    for w in (23, 24, 1000):
        assert_close(dmattn(q, k, v, bias, keep_window=w), full, torch.float64, f"w={w}")


# ------------------------------------------------------------------------------ bad input


def _good():
    return make(2, 10, 4, 2, 8, dtype=torch.float32)


@pytest.mark.parametrize(
    "mutate,exc,words",
    [
        (lambda a, kw: a.__setitem__(0, a[0][0]), ValueError, "q: expected 4 dimensions"),
        (lambda a, kw: a.__setitem__(0, a[0].long()), TypeError, "q: expected dtype"),
        (lambda a, kw: a.__setitem__(1, a[1][:, :9]), ValueError, "k: expected shape"),
        (lambda a, kw: a.__setitem__(1, a[1][..., :7]), ValueError, "k: expected shape"),
        (lambda a, kw: a.__setitem__(1, a[1].double()), TypeError, "k: expected dtype"),
        (lambda a, kw: (a.__setitem__(1, torch.randn(2, 10, 3, 8)), a.__setitem__(2, torch.randn(2, 10, 3, 8))),
         ValueError, "must divide q heads (h)=4"),
        (lambda a, kw: a.__setitem__(2, a[2][:, :, :1]), ValueError, "v: expected shape"),
        (lambda a, kw: a.__setitem__(2, a[2].half()), TypeError, "v: expected dtype"),
        (lambda a, kw: a.__setitem__(3, a[3][:, :1]), ValueError, "bias: expected shape"),
        (lambda a, kw: a.__setitem__(3, a[3][..., :9]), ValueError, "bias: expected shape"),
        (lambda a, kw: a.__setitem__(3, a[3].long()), TypeError, "bias: expected dtype"),
        (lambda a, kw: a.__setitem__(3, a[3].to("meta")), ValueError, "bias: expected device"),
        (lambda a, kw: kw.update(keep_window=0), ValueError, "keep_window: expected an integer >= 1, got 0"),
        (lambda a, kw: kw.update(keep_window=-3), ValueError, "keep_window: expected an integer >= 1, got -3"),
        (lambda a, kw: kw.update(keep_window=2.5), TypeError, "keep_window: expected an int"),
        (lambda a, kw: kw.update(keep_window=True), TypeError, "keep_window: expected an int"),
        (lambda a, kw: kw.update(scale=0.0), ValueError, "scale: expected a number > 0, got 0.0"),
        (lambda a, kw: kw.update(scale=-1), ValueError, "scale: expected a number > 0"),
        (lambda a, kw: kw.update(scale=float("nan")), ValueError, "scale: expected a number > 0"),
        (lambda a, kw: kw.update(cu_seqlens=torch.tensor([0, 4, 10])), ValueError, "batch size 1, got batch 2"),
        (lambda a, kw: kw.update(cu_seqlens=torch.tensor([0.0, 10.0])), TypeError, "cu_seqlens: expected dtype"),
        (lambda a, kw: kw.update(cu_seqlens=torch.tensor([10])), ValueError, "cu_seqlens: expected at least 2"),
        (lambda a, kw: kw.update(cu_seqlens=torch.tensor([[0, 10]])), ValueError, "cu_seqlens: expected 1 dimensions"),
    ],
)
def test_bad_input_errors(mutate, exc, words):
    args, kwargs = list(_good()), {}
    mutate(args, kwargs)
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)")):
        dmattn(*args, **kwargs)


def test_not_a_tensor():
    q, k, v, bias = _good()
    with pytest.raises(TypeError, match="bias: expected a torch.Tensor, got list"):
        dmattn(q, k, v, [0.0])
