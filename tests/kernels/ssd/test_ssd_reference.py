"""The SSD op on its reference path, against independent float64 math written here: a plain
recurrent loop over time and the quadratic (dual) form, with RoPE as a complex rotation.

Inputs that go through RoPE are fp32 (the tables are fp32 by contract and the rotation runs in
fp32), so those cases are held to the fp32 tolerance; all others run in fp64 and must match to
the fp64 tolerance.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

from wmzoo.kernels.ssd import ssd, ssd_step

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # every test draws the same numbers, run alone or in the suite


# ---------------------------------------------------------------------------------------------
# Independent float64 math


def group_of_heads(h: int, g: int) -> list[int]:
    """Head i reads group i * g // h (equivalently i // (h // g))."""
    return [i * g // h for i in range(h)]


def rotate(z, cos, sin):
    """RoPE as complex multiplication: channel pair (i, i + r/2) is the number z_i + j z_{i+r/2},
    turned by the angle whose cos and sin are given. z (b,t,g,n), cos, sin (b,t,r/2)."""
    if cos is None:
        return z.to(F64)
    half = cos.shape[-1]
    z = z.to(F64)
    turned = torch.complex(z[..., :half], z[..., half : 2 * half]) * torch.complex(
        cos.to(F64), sin.to(F64)
    )[:, :, None]
    return torch.cat([turned.real, turned.imag, z[..., 2 * half :]], dim=-1)


def loop_ssd(x, dt, A, B, C, D=None, h0=None, cos=None, sin=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B~_t^T; y_t = h_t C~_t + D x_t, one step at a time."""
    b, t, h, p = x.shape
    heads = group_of_heads(h, B.shape[2])
    Bh, Ch = rotate(B, cos, sin)[:, :, heads], rotate(C, cos, sin)[:, :, heads]
    x, dt, A = x.to(F64), dt.to(F64), A.to(F64)
    state = torch.zeros(b, h, p, B.shape[-1], dtype=F64) if h0 is None else h0.to(F64)
    ys = []
    for i in range(t):
        state = torch.exp(dt[:, i] * A)[..., None, None] * state + (
            (dt[:, i, :, None] * x[:, i])[..., None] * Bh[:, i, :, None, :]
        )
        y = (state * Ch[:, i, :, None, :]).sum(-1)
        if D is not None:
            y = y + D.to(F64)[:, None] * x[:, i]
        ys.append(y)
    return torch.stack(ys, dim=1), state


def dual_ssd(x, dt, A, B, C, D=None, h0=None, cos=None, sin=None):
    """The quadratic form: y_t = sum_{s<=t} (C~_t . B~_s) exp(sum_{r=s+1..t} dt_r A) dt_s x_s
    + C~_t exp(sum_{r<=t} dt_r A) h0 (+ D x_t); the final state likewise at t = T-1."""
    b, t, h, p = x.shape
    heads = group_of_heads(h, B.shape[2])
    Bh, Ch = rotate(B, cos, sin)[:, :, heads], rotate(C, cos, sin)[:, :, heads]
    x, dt = x.to(F64), dt.to(F64)
    cum = torch.cumsum(dt * A.to(F64), dim=1)  # (b, t, h)
    diff = cum[:, :, None, :] - cum[:, None, :, :]  # [t, s] = sum_{r=s+1..t}
    causal = torch.ones(t, t, dtype=torch.bool).tril()[None, :, :, None]
    decay = torch.where(causal, diff, torch.full_like(diff, float("-inf"))).exp()
    scores = torch.einsum("bthn,bshn->btsh", Ch, Bh) * decay
    y = torch.einsum("btsh,bsh,bshp->bthp", scores, dt, x)
    final = torch.einsum("bsh,bsh,bshp,bshn->bhpn", (cum[:, -1:] - cum).exp(), dt, x, Bh)
    if h0 is not None:
        h0 = h0.to(F64)
        y = y + torch.einsum("bthn,bth,bhpn->bthp", Ch, cum.exp(), h0)
        final = final + cum[:, -1].exp()[..., None, None] * h0
    if D is not None:
        y = y + D.to(F64)[:, None] * x
    return y, final


# ---------------------------------------------------------------------------------------------
# Inputs


def make_inputs(b, t, h, p, n, g, *, dtype=F64, D=False, h0=False, rope=0, seed=0):
    """Random SSD inputs; dt in (0.01, 0.6), A in (-2, -0.2) so decays span a wide range."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=F64)  # noqa: E731
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    args = dict(
        x=randn(b, t, h, p).to(dtype),
        dt=(0.01 + 0.59 * rand(b, t, h)).to(dtype),
        A=-(0.2 + 1.8 * rand(h)).to(F64 if dtype == F64 else torch.float32),
        B=randn(b, t, g, n).to(dtype),
        C=randn(b, t, g, n).to(dtype),
    )
    extra = {}
    if D:
        extra["D"] = randn(h).to(dtype)
    if h0:
        extra["initial_state"] = randn(b, h, p, n).to(F64 if dtype == F64 else torch.float32)
    if rope:
        angles = torch.arange(t, dtype=F64)[None, :, None] * rand(b, 1, rope // 2) * 3
        extra["rope_cos"], extra["rope_sin"] = angles.cos().float(), angles.sin().float()
    return args, extra


def expected(args, extra, form=loop_ssd):
    return form(
        args["x"], args["dt"], args["A"], args["B"], args["C"], extra.get("D"),
        extra.get("initial_state"), extra.get("rope_cos"), extra.get("rope_sin"),
    )


def tol_dtype(args, extra):
    return torch.float32 if "rope_cos" in extra or args["x"].dtype != F64 else F64


# ---------------------------------------------------------------------------------------------
# Forward against the loop and the dual form


@pytest.mark.parametrize("t", [1, 63, 65, 200])
@pytest.mark.parametrize("groups", ["one", "per_head", "half"])
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("rope", [0, 4])
def test_chunked_matches_loop_and_dual(t, groups, skip, rope):
    h = 4
    g = {"one": 1, "per_head": h, "half": h // 2}[groups]
    dtype = torch.float32 if rope else F64
    args, extra = make_inputs(2, t, h, 3, 6, g, dtype=dtype, D=skip, h0=True, rope=rope, seed=t)
    tol = tol_dtype(args, extra)
    references = {form.__name__: expected(args, extra, form) for form in (loop_ssd, dual_ssd)}
    for chunk_size in (16, 64):
        y, final = ssd(**args, **extra, chunk_size=chunk_size, return_final_state=True)
        assert y.dtype == dtype and y.shape == args["x"].shape
        assert final.dtype == (F64 if dtype == F64 else torch.float32) and final.shape == (2, h, 3, 6)
        for form, (y_ref, final_ref) in references.items():
            assert_close(y, y_ref, tol, f"y vs {form}, chunk_size {chunk_size}")
            assert_close(final, final_ref, tol, f"final_state vs {form}, chunk_size {chunk_size}")


def test_loop_and_dual_agree():
    """The two independent forms check each other (so neither carries a shared mistake)."""
    args, extra = make_inputs(1, 40, 4, 2, 5, 2, D=True, h0=True)
    for a, b in zip(expected(args, extra, loop_ssd), expected(args, extra, dual_ssd)):
        assert_close(a, b, F64, "loop vs dual")


def test_zero_initial_state_equals_none():
    args, extra = make_inputs(2, 33, 2, 3, 4, 1)
    zeros = torch.zeros(2, 2, 3, 4, dtype=F64)
    a = ssd(**args, chunk_size=8, return_final_state=True)
    b = ssd(**args, chunk_size=8, initial_state=zeros, return_final_state=True)
    for u, v in zip(a, b):
        assert_close(u, v, F64)


def test_strong_decay_stays_finite_forward_and_backward():
    """dt A down to -60 per step: decays underflow to exactly 0 across chunks; nothing may turn
    into inf or NaN on the way (fp32, the dtype where it would)."""
    args, extra = make_inputs(1, 90, 4, 3, 6, 2, dtype=torch.float32, h0=True, rope=4)
    args["A"] = torch.tensor([-0.01, -1.0, -20.0, -60.0])
    args["dt"] = torch.rand(1, 90, 4) + 0.5
    leaves = {**args, "initial_state": extra.pop("initial_state")}
    weights = (torch.randn(1, 90, 4, 3, dtype=F64), torch.randn(1, 4, 3, 6, dtype=F64))
    got = grads_of(lambda **kw: ssd(**kw, **extra, chunk_size=32, return_final_state=True), leaves, weights)
    def ref(x, dt, A, B, C, initial_state):
        return loop_ssd(x, dt, A, B, C, None, initial_state, extra["rope_cos"], extra["rope_sin"])

    want = grads_of(ref, leaves, weights)
    y, final = ssd(**leaves, **extra, chunk_size=32, return_final_state=True)
    y_ref, final_ref = ref(**leaves)
    assert_close(y, y_ref, torch.float32, "y")
    assert_close(final, final_ref, torch.float32, "final_state")
    for name in leaves:
        assert_close(got[name], want[name], torch.float32, f"d{name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    """y comes back in x's dtype, computed in fp32: error of the order of the input rounding."""
    args, extra = make_inputs(1, 70, 4, 8, 8, 2, dtype=dtype, D=True, rope=8)
    args["dt"] = args["dt"].float()  # dt may be fp32 beside low-precision x
    y, final = ssd(**args, **extra, chunk_size=32, return_final_state=True)
    assert y.dtype == dtype and final.dtype == torch.float32
    y_ref, final_ref = expected(args, extra)
    assert_close(y, y_ref, dtype, "y")
    assert_close(final, final_ref, dtype, "final_state")


# ---------------------------------------------------------------------------------------------
# States: continuation, decode steps, packed varlen


@pytest.mark.parametrize("split", [1, 17, 64, 99])
def test_two_calls_carrying_state_equal_one(split):
    args, extra = make_inputs(2, 100, 4, 3, 6, 2, D=True, h0=True)
    y, final = ssd(**args, **extra, chunk_size=16, return_final_state=True)
    first = {k: v[:, :split] for k, v in args.items() if k != "A"}
    second = {k: v[:, split:] for k, v in args.items() if k != "A"}
    y1, s1 = ssd(**first, A=args["A"], D=extra["D"], initial_state=extra["initial_state"],
                 chunk_size=16, return_final_state=True)
    y2, s2 = ssd(**second, A=args["A"], D=extra["D"], initial_state=s1, chunk_size=16,
                 return_final_state=True)
    assert_close(torch.cat([y1, y2], dim=1), y, F64, "y split in two calls")
    assert_close(s2, final, F64, "final_state after two calls")
    y_ref, final_ref = expected(args, extra)
    assert_close(y, y_ref, F64, "y")
    assert_close(final, final_ref, F64, "final_state")


@pytest.mark.parametrize("rope", [0, 6])
def test_steps_equal_full_sequence(rope):
    dtype = torch.float32 if rope else F64
    args, extra = make_inputs(2, 23, 6, 3, 8, 3, dtype=dtype, D=True, h0=True, rope=rope)
    state = extra["initial_state"]
    ys = []
    for i in range(23):
        step_rope = {k: extra[k][:, i] for k in ("rope_cos", "rope_sin") if k in extra}
        y, state = ssd_step(state, args["x"][:, i], args["dt"][:, i], args["A"], args["B"][:, i],
                            args["C"][:, i], D=extra["D"], **step_rope)
        assert y.dtype == dtype and state.dtype == extra["initial_state"].dtype
        ys.append(y)
    y_ref, final_ref = expected(args, extra)
    tol = tol_dtype(args, extra)
    assert_close(torch.stack(ys, dim=1), y_ref, tol, "y of repeated steps")
    assert_close(state, final_ref, tol, "state after the steps")
    y_full, final_full = ssd(**args, **extra, chunk_size=8, return_final_state=True)
    assert_close(torch.stack(ys, dim=1), y_full, tol, "steps vs one ssd call")
    assert_close(state, final_full, tol, "step state vs ssd final_state")


def test_step_without_gradients_skips_the_op_dispatch(monkeypatch):
    """An eager step that no gradient can flow through calls the op's body directly (decode is
    host-bound: the dispatch cost more than the kernel); with a gradient it must go through the
    op, whose autograd formula gives the backward. Both give the reference's values."""
    from wmzoo.kernels.ssd import op

    args, extra = make_inputs(2, 1, 6, 3, 8, 3, dtype=F64, D=True, h0=True)
    inputs = (extra["initial_state"], args["x"][:, 0], args["dt"][:, 0], args["A"], args["B"][:, 0], args["C"][:, 0])
    calls = []
    real_op = op._ssd_step
    monkeypatch.setattr(op, "_ssd_step", lambda *a: calls.append(1) or real_op(*a))
    with torch.no_grad():
        y_direct, s_direct = ssd_step(*inputs, D=extra["D"])
    assert calls == []
    x = inputs[1].clone().requires_grad_()
    y_op, s_op = ssd_step(inputs[0], x, *inputs[2:], D=extra["D"])
    assert calls == [1]
    y_op.sum().backward()
    assert x.grad is not None
    assert_close(y_direct, y_op.detach(), F64, "y, direct vs op")
    assert_close(s_direct, s_op.detach(), F64, "state, direct vs op")


def packed_case(lengths, *, index_dtype=torch.int32, h0=True, rope=0, seed=0):
    """One packed row holding sequences of the given lengths (zero allowed)."""
    total = sum(lengths)
    dtype = torch.float32 if rope else F64
    args, extra = make_inputs(1, total, 4, 3, 6, 2, dtype=dtype, D=True, rope=rope, seed=seed)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=index_dtype)
    if h0:
        gen = torch.Generator().manual_seed(seed + 1)
        h0 = torch.randn(len(lengths), 4, 3, 6, generator=gen, dtype=F64)
        extra["initial_state"] = h0.to(F64 if dtype == F64 else torch.float32)
    return args, extra, cu


def check_packed_against_separate(args, extra, cu, y, final):
    """Every sequence alone through the loop, from its own initial state."""
    tol = tol_dtype(args, extra)
    bounds = cu.tolist()
    for k, (a, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = extra.get("initial_state")
        h0_k = torch.zeros(1, 4, 3, 6, dtype=F64) if h0 is None else h0[k : k + 1]
        if a == e:  # an empty sequence hands its initial state straight through
            assert_close(final[k], h0_k[0], tol, f"final_state of empty sequence {k}")
            continue
        part = {key: v[:, a:e] for key, v in args.items() if key != "A"}
        rope = {key: extra[key][:, a:e] for key in ("rope_cos", "rope_sin") if key in extra}
        y_ref, final_ref = loop_ssd(part["x"], part["dt"], args["A"], part["B"], part["C"],
                                    extra["D"], h0_k, rope.get("rope_cos"), rope.get("rope_sin"))
        assert_close(y[:, a:e], y_ref, tol, f"y of sequence {k}")
        assert_close(final[k], final_ref[0], tol, f"final_state of sequence {k}")


@pytest.mark.parametrize(
    "lengths",
    [[37], [5, 16, 1, 40], [0, 9, 0, 0, 30, 0], [16, 16, 32], [3, 60, 2, 1, 1, 14]],
    ids=lambda v: "-".join(map(str, v)),
)
@pytest.mark.parametrize("chunk_size", [1, 16, 64])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_varlen_equals_separate_sequences(lengths, chunk_size, index_dtype):
    args, extra, cu = packed_case(lengths, index_dtype=index_dtype, seed=len(lengths))
    y, final = ssd(**args, **extra, cu_seqlens=cu, chunk_size=chunk_size, return_final_state=True)
    assert final.shape == (len(lengths), 4, 3, 6)
    check_packed_against_separate(args, extra, cu, y, final)


@pytest.mark.parametrize("rope", [0, 6])
def test_varlen_without_initial_state_and_with_rope(rope):
    args, extra, cu = packed_case([7, 0, 50, 14], h0=False, rope=rope)
    y, final = ssd(**args, **extra, cu_seqlens=cu, chunk_size=16, return_final_state=True)
    check_packed_against_separate(args, extra, cu, y, final)


# ---------------------------------------------------------------------------------------------
# Gradients against autograd through the float64 loop

GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


def grads_of(fn, leaves, weights):
    """Gradients of sum(out_i * w_i) w.r.t. every leaf (zero for a leaf the outputs ignore)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    outs = fn(**leaves)
    loss = sum((o.to(F64) * w).sum() for o, w in zip(outs, weights))
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}


@pytest.mark.parametrize("t,chunk_size,rope", [(1, 16, 0), (45, 16, 0), (70, 64, 0), (45, 16, 4)])
def test_gradients_match_loop(t, chunk_size, rope):
    dtype = torch.float32 if rope else F64
    args, extra = make_inputs(2, t, 4, 3, 6, 2, dtype=dtype, D=True, h0=True, rope=rope)
    tables = {k: extra.pop(k) for k in ("rope_cos", "rope_sin") if k in extra}
    leaves = {**args, **extra}
    gen = torch.Generator().manual_seed(1)
    weights = (torch.randn(2, t, 4, 3, generator=gen, dtype=F64),
               torch.randn(2, 4, 3, 6, generator=gen, dtype=F64))

    def op(**kw):
        return ssd(**kw, **tables, chunk_size=chunk_size, return_final_state=True)

    def ref(x, dt, A, B, C, D, initial_state):
        return loop_ssd(x, dt, A, B, C, D, initial_state, tables.get("rope_cos"), tables.get("rope_sin"))

    got = grads_of(op, leaves, weights)
    want = grads_of(ref, leaves, weights)
    for name in GRAD_NAMES:
        assert got[name].dtype == leaves[name].dtype, name
        assert_close(got[name], want[name], tol_dtype(args, tables), f"d{name}")


def test_gradients_varlen_match_separate_loops():
    args, extra, cu = packed_case([9, 0, 30, 5])
    leaves = {**args, **extra}
    gen = torch.Generator().manual_seed(2)
    weights = (torch.randn(1, 44, 4, 3, generator=gen, dtype=F64),
               torch.randn(4, 4, 3, 6, generator=gen, dtype=F64))

    def op(**kw):
        return ssd(**kw, cu_seqlens=cu, chunk_size=16, return_final_state=True)

    def ref(x, dt, A, B, C, D, initial_state):
        ys, finals = [], []
        for k, (a, e) in enumerate(zip(cu.tolist()[:-1], cu.tolist()[1:])):
            if a == e:  # an empty sequence: no outputs, its initial state passes through
                finals.append(initial_state[k : k + 1])
                continue
            y, f = loop_ssd(x[:, a:e], dt[:, a:e], A, B[:, a:e], C[:, a:e], D, initial_state[k : k + 1])
            ys.append(y)
            finals.append(f)
        return torch.cat(ys, dim=1), torch.cat(finals, dim=0)

    got, want = grads_of(op, leaves, weights), grads_of(ref, leaves, weights)
    for name in GRAD_NAMES:
        assert_close(got[name], want[name], F64, f"d{name}")


def test_step_gradients_match_loop():
    args, extra = make_inputs(2, 1, 4, 3, 6, 2, D=True, h0=True)
    leaves = {"state": extra["initial_state"], "x": args["x"][:, 0], "dt": args["dt"][:, 0],
              "A": args["A"], "B": args["B"][:, 0], "C": args["C"][:, 0], "D": extra["D"]}
    gen = torch.Generator().manual_seed(3)
    weights = (torch.randn(2, 4, 3, generator=gen, dtype=F64), torch.randn(2, 4, 3, 6, generator=gen, dtype=F64))

    def op(state, x, dt, A, B, C, D):
        return ssd_step(state, x, dt, A, B, C, D=D)

    def ref(state, x, dt, A, B, C, D):
        y, s = loop_ssd(x[:, None], dt[:, None], A, B[:, None], C[:, None], D, state)
        return y[:, 0], s

    got, want = grads_of(op, leaves, weights), grads_of(ref, leaves, weights)
    for name in leaves:
        assert_close(got[name], want[name], F64, f"d{name}")


@pytest.mark.parametrize("used", ["y", "final_state"])
def test_gradient_when_one_output_is_unused(used):
    """Only one output feeds the loss: the other's absent gradient counts as zero."""
    args, extra = make_inputs(1, 20, 2, 2, 4, 1, h0=True)
    leaves = {**args, **extra}
    keep = 0 if used == "y" else 1
    weights = ((torch.randn(1, 20, 2, 2, dtype=F64), torch.randn(1, 2, 2, 4, dtype=F64))[keep],)
    got = grads_of(lambda **kw: ssd(**kw, chunk_size=8, return_final_state=True)[keep:keep + 1],
                   leaves, weights)
    want = grads_of(lambda **kw: loop_ssd(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], None,
                                          kw["initial_state"])[keep:keep + 1], leaves, weights)
    for name in leaves:
        assert_close(got[name], want[name], F64, f"d{name}")


# ---------------------------------------------------------------------------------------------
# torch.library and torch.compile


def op_args(full):
    """ssd_fwd's arguments: every optional input present (packed, RoPE, D, initial states) or
    every one absent."""
    args, extra = make_inputs(1, 37, 4, 3, 6, 2, dtype=torch.float32, D=full, rope=4 * full)
    if not full:
        return (*args.values(), None, None, None, None, None, 16)
    cu = torch.tensor([0, 10, 10, 37], dtype=torch.int32)
    return (*args.values(), extra["D"], torch.randn(3, 4, 3, 6), cu, extra["rope_cos"],
            extra["rope_sin"], 16)


@pytest.mark.parametrize("full", [True, False], ids=["all_inputs", "no_optional_inputs"])
def test_opcheck_fwd_and_bwd(full):
    args = op_args(full)
    grad_args = tuple(t.requires_grad_(True) if i < 7 and t is not None else t for i, t in enumerate(args))
    torch.library.opcheck(torch.ops.wmzoo.ssd_fwd.default, grad_args)
    plain = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in args)
    dy = torch.randn_like(plain[0])
    dfinal = torch.randn(3, 4, 3, 6) if full else None  # None: the final state was unused
    torch.library.opcheck(torch.ops.wmzoo.ssd_bwd.default, (dy, dfinal, *plain))


def test_opcheck_step_and_its_bwd():
    args, extra = make_inputs(3, 1, 4, 3, 6, 2, dtype=torch.float32, D=True, h0=True, rope=4)
    step = (extra["initial_state"], args["x"][:, 0], args["dt"][:, 0], args["A"], args["B"][:, 0],
            args["C"][:, 0], extra["D"], extra["rope_cos"][:, 0], extra["rope_sin"][:, 0])
    with_grad = tuple(t.clone().requires_grad_(True) for t in step[:7]) + step[7:]
    torch.library.opcheck(torch.ops.wmzoo.ssd_step.default, with_grad)
    dy, dstate = torch.randn_like(step[1]), torch.randn_like(step[0])
    torch.library.opcheck(torch.ops.wmzoo.ssd_step_bwd.default, (dy, dstate, *step))
    torch.library.opcheck(torch.ops.wmzoo.ssd_step_bwd.default, (dy, None, *step[:6], None, None, None))


def ssd_loss(x, dt, A, B, C, D, h0, cos, sin):
    y, final = ssd(x, dt, A, B, C, D=D, initial_state=h0, rope_cos=cos, rope_sin=sin,
                   chunk_size=16, return_final_state=True)
    return y, final, (y.float() ** 2).sum() + final.sum()


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_matches_eager(dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(ssd_loss, fullgraph=True, dynamic=dynamic, backend="inductor")
    for t in (37, 50):  # a second length exercises the dynamic shapes (or a recompile)
        args, extra = make_inputs(2, t, 4, 3, 6, 2, dtype=torch.float32, D=True, h0=True, rope=4)
        inputs = [args["x"], args["dt"], args["A"], args["B"], args["C"], extra["D"],
                  extra["initial_state"], extra["rope_cos"], extra["rope_sin"]]
        results = []
        for fn in (ssd_loss, compiled):
            leaves = [v.clone().requires_grad_(i < 7) for i, v in enumerate(inputs)]
            y, final, loss = fn(*leaves)
            loss.backward()
            results.append([y, final] + [v.grad for v in leaves[:7]])
        for name, a, b in zip(["y", "final", *GRAD_NAMES], *results):
            assert_close(b, a, torch.float32, f"compiled {name} (t={t}, dynamic={dynamic})")


def test_reference_traces_with_symbolic_shapes():
    """On CUDA the op body is traced (triton_op), reference fallback included: it must trace
    with symbolic shapes and no host syncs, and the one graph must serve any length and packing."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from wmzoo.kernels.ssd import ssd_reference

    def packed(lengths):
        args, extra, cu = packed_case(lengths, index_dtype=torch.int64, rope=4)
        return (*args.values(), extra["D"], extra["initial_state"], cu, extra["rope_cos"], extra["rope_sin"])

    graph = make_fx(lambda *a: ssd_reference(*a, chunk_size=16), tracing_mode="symbolic")(*packed([10, 0, 27]))
    for lengths in ([37], [10, 0, 27], [5, 40, 6, 0, 1]):
        inputs = packed(lengths)
        for got, want, name in zip(graph(*inputs), ssd_reference(*inputs, chunk_size=16), ("y", "final_state")):
            assert_close(got, want, torch.float32, f"traced reference {name}, lengths {lengths}")


def test_reference_backward_inside_a_traced_triton_op_body():
    """On CUDA ssd_bwd is a triton_op whose body (the reference fallback included) is traced by
    torch.compile; registered the same way here, its reference gradients must survive tracing."""
    from wmzoo.kernels.registry import reference_vjp
    from wmzoo.kernels.ssd import ssd_reference

    def body(dy: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grads = reference_vjp(ssd_reference, (x, dt, A, B, C), (dy, None), chunk_size=16)
        return grads[0].contiguous(), grads[2].contiguous(), grads[3].contiguous()

    op = torch.library.triton_op("wmzoo_test::ssd_reference_grads", body, mutates_args=())
    args, _ = make_inputs(1, 37, 4, 3, 6, 2, dtype=torch.float32)
    dy = torch.randn(1, 37, 4, 3)
    traced = torch.compile(op, fullgraph=True, backend="aot_eager")
    want = grads_of(lambda **kw: (ssd_reference(**kw, chunk_size=16)[0],), args, (dy.double(),))
    for name, got in zip(("x", "A", "B"), traced(dy, *args.values())):
        assert_close(got, want[name], torch.float32, f"d{name} from the traced body")


# ---------------------------------------------------------------------------------------------
# Properties over odd sizes


@st.composite
def ssd_case(draw):
    h = draw(st.sampled_from([1, 2, 3, 4, 6]))
    g = draw(st.sampled_from([d for d in range(1, h + 1) if h % d == 0]))
    n = draw(st.integers(1, 9))
    return dict(
        b=draw(st.integers(1, 2)), t=draw(st.integers(1, 70)), h=h, g=g, n=n,
        p=draw(st.integers(1, 5)), chunk_size=draw(st.sampled_from([1, 2, 4, 8, 16, 32])),
        D=draw(st.booleans()), h0=draw(st.booleans()),
        rope=2 * draw(st.integers(0, n // 2)), seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=20, deadline=None)
@given(case=ssd_case())
def test_property_matches_loop(case):
    dtype = torch.float32 if case["rope"] else F64
    args, extra = make_inputs(case["b"], case["t"], case["h"], case["p"], case["n"], case["g"],
                              dtype=dtype, D=case["D"], h0=case["h0"], rope=case["rope"], seed=case["seed"])
    y, final = ssd(**args, **extra, chunk_size=case["chunk_size"], return_final_state=True)
    y_ref, final_ref = expected(args, extra)
    assert_close(y, y_ref, tol_dtype(args, extra), f"y {case}")
    assert_close(final, final_ref, tol_dtype(args, extra), f"final_state {case}")


@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(0, 25), min_size=1, max_size=6).filter(lambda v: sum(v) > 0),
       chunk_size=st.sampled_from([1, 4, 8, 32]), seed=st.integers(0, 2**16))
def test_property_varlen_matches_separate(lengths, chunk_size, seed):
    args, extra, cu = packed_case(lengths, seed=seed)
    y, final = ssd(**args, **extra, cu_seqlens=cu, chunk_size=chunk_size, return_final_state=True)
    check_packed_against_separate(args, extra, cu, y, final)


# ---------------------------------------------------------------------------------------------
# Errors: every bad argument named, with what was expected and what came


def base_call():
    args, extra = make_inputs(2, 10, 4, 3, 6, 2, dtype=torch.float32, D=True, h0=True, rope=4)
    return {**args, **extra}


def with_(**changes):
    def build():
        kw = base_call()
        for k, v in changes.items():
            kw[k] = v(kw) if callable(v) else v
        return kw
    return build


BAD_SSD_CALLS = {
    "x rank": (with_(x=lambda k: k["x"][0]), ValueError, r"x: expected 4 dimensions"),
    "x dtype": (with_(x=lambda k: k["x"].int()), TypeError, r"x: expected dtype"),
    "x empty time": (with_(x=lambda k: k["x"][:, :0]), ValueError, r"x: expected a sequence length"),
    "dt shape": (with_(dt=lambda k: k["dt"][:, :9]), ValueError, r"dt: expected shape \(2, 10, 4\)"),
    "dt dtype": (with_(dt=lambda k: k["dt"].half()), TypeError, r"dt: expected dtype in \(float32"),
    "A shape": (with_(A=lambda k: k["A"][:3]), ValueError, r"A: expected shape \(4,\)"),
    "A dtype": (with_(A=lambda k: k["A"].half()), TypeError, r"A: expected dtype"),
    "B shape": (with_(B=lambda k: k["B"][:, :, :, None]), ValueError, r"B: expected 4 dimensions"),
    "B batch": (with_(B=lambda k: k["B"][:1]), ValueError, r"B: expected shape \(2, 10, \*, \*\), got \(1, 10, 2, 6\)"),
    "B dtype": (with_(B=lambda k: k["B"].double()), TypeError, r"B: expected dtype in \(float32\)"),
    "C shape": (with_(C=lambda k: k["C"][..., :5]), ValueError, r"C: expected shape \(2, 10, 2, 6\)"),
    "groups": (with_(B=lambda k: torch.randn(2, 10, 3, 6), C=lambda k: torch.randn(2, 10, 3, 6)),
               ValueError, r"groups g \(B.shape\[-2\]\)=3 must divide heads h \(x.shape\[-2\]\)=4"),
    "D shape": (with_(D=lambda k: k["D"][None]), ValueError, r"D: expected 1 dimensions"),
    "D size": (with_(D=torch.ones(5)), ValueError, r"D: expected shape \(4,\), got \(5,\)"),
    "initial_state shape": (with_(initial_state=torch.zeros(2, 4, 3, 5)), ValueError,
                            r"initial_state: expected shape \(2, 4, 3, 6\).*b or num_seqs"),
    "initial_state dtype": (with_(initial_state=torch.zeros(2, 4, 3, 6, dtype=torch.float16)), TypeError,
                            r"initial_state: expected dtype"),
    "rope one table": (with_(rope_sin=None), ValueError, r"pass both tables or neither, got only rope_cos"),
    "rope shape": (with_(rope_cos=lambda k: k["rope_cos"][:, :4]), ValueError, r"rope_cos: expected shape"),
    "rope sin shape": (with_(rope_sin=lambda k: k["rope_sin"][..., :1]), ValueError, r"rope_sin: expected shape"),
    "rope dtype": (with_(rope_cos=lambda k: k["rope_cos"].double(), rope_sin=lambda k: k["rope_sin"].double()),
                   TypeError, r"rope_cos: expected dtype in \(float32\)"),
    "rope too wide": (with_(rope_cos=torch.ones(2, 10, 4), rope_sin=torch.ones(2, 10, 4)), ValueError,
                      r"rope_cos: rotated dim r = 2\*4 = 8 must be in \[2, n=6\]"),
    "device": (with_(A=lambda k: k["A"].to("meta")), ValueError, r"A: expected device cpu, got meta"),
}


@pytest.mark.parametrize("case", list(BAD_SSD_CALLS), ids=list(BAD_SSD_CALLS))
def test_ssd_argument_errors(case):
    build, exc, message = BAD_SSD_CALLS[case]
    with pytest.raises(exc, match=message):
        ssd(**build(), chunk_size=16)


@pytest.mark.parametrize("chunk_size,exc,message", [
    (48, ValueError, r"chunk_size: expected a power of two, got 48"),
    (0, ValueError, r"chunk_size: expected a power of two, got 0"),
    (16.0, TypeError, r"chunk_size: expected an int, got float"),
])
def test_chunk_size_errors(chunk_size, exc, message):
    with pytest.raises(exc, match=message):
        ssd(**base_call(), chunk_size=chunk_size)


def test_varlen_errors():
    kw = base_call()
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"cu_seqlens: packed varlen inputs need batch size 1, got batch 2"):
        ssd(**kw, cu_seqlens=cu)
    one = {k: (v[:1] if k not in ("A", "D") else v) for k, v in kw.items()}
    with pytest.raises(TypeError, match=r"cu_seqlens: expected dtype in \(int32, int64\), got float32"):
        ssd(**one, cu_seqlens=cu.float())
    with pytest.raises(ValueError, match=r"cu_seqlens: expected at least 2 entries"):
        ssd(**one, cu_seqlens=cu[:1])
    with pytest.raises(ValueError, match=r"initial_state: expected shape \(2, 4, 3, 6\).*num_seqs"):
        ssd(**one, cu_seqlens=cu)  # one initial state per sequence, not per batch row


def step_call():
    kw = base_call()
    return dict(state=kw["initial_state"], x=kw["x"][:, 0], dt=kw["dt"][:, 0], A=kw["A"],
                B=kw["B"][:, 0], C=kw["C"][:, 0], D=kw["D"], rope_cos=kw["rope_cos"][:, 0],
                rope_sin=kw["rope_sin"][:, 0])


BAD_STEP_CALLS = {
    "x rank": (dict(x=lambda k: k["x"][:, None]), ValueError, r"x: expected 3 dimensions"),
    "state shape": (dict(state=lambda k: k["state"][:, :3]), ValueError, r"state: expected shape \(2, 4, 3, 6\)"),
    "state dtype": (dict(state=lambda k: k["state"].half()), TypeError, r"state: expected dtype"),
    "dt shape": (dict(dt=lambda k: k["dt"][:1]), ValueError, r"dt: expected shape \(2, 4\)"),
    "B shape": (dict(B=lambda k: k["B"][:, None]), ValueError, r"B: expected 3 dimensions"),
    "groups": (dict(B=lambda k: torch.randn(2, 3, 6), C=lambda k: torch.randn(2, 3, 6)), ValueError,
               r"must divide heads h"),
    "rope shape": (dict(rope_cos=lambda k: k["rope_cos"][None]), ValueError, r"rope_cos: expected 2 dimensions"),
}


@pytest.mark.parametrize("case", list(BAD_STEP_CALLS), ids=list(BAD_STEP_CALLS))
def test_ssd_step_argument_errors(case):
    changes, exc, message = BAD_STEP_CALLS[case]
    kw = step_call()
    for k, v in changes.items():
        kw[k] = v(kw)
    state, x, dt, A, B, C = (kw.pop(k) for k in ("state", "x", "dt", "A", "B", "C"))
    with pytest.raises(exc, match=message):
        ssd_step(state, x, dt, A, B, C, **kw)
