"""The SSD Triton kernels (the op's path under TRITON_INTERPRET=1 on CPU, and on CUDA) against
independent float64 math written here: a plain recurrent loop over time, differentiated by
autograd in float64, with RoPE as a complex rotation. Every test checks that the Triton backend
actually ran (no silent fallback to the reference), except the test of an input it refuses.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close

from wmzoo.kernels.autotune import Autotuned
from wmzoo.kernels.ssd import op as ssd_op
from wmzoo.kernels.ssd import ssd, ssd_reference, ssd_step, triton_bwd, triton_fwd, triton_segments

F64 = torch.float64
GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


# ---------------------------------------------------------------------------------------------
# Independent float64 math


def rotate(z, cos, sin):
    """Channel pair (i, i + r/2) as the complex number z_i + j z_{i+r/2}, turned by the angle.
    z (b,t,g,n); cos, sin (b,t,r/2)."""
    z = z.to(F64)
    if cos is None:
        return z
    half = cos.shape[-1]
    turned = torch.complex(z[..., :half], z[..., half : 2 * half]) * torch.complex(
        cos.to(F64), sin.to(F64))[:, :, None]
    return torch.cat([turned.real, turned.imag, z[..., 2 * half :]], dim=-1)


def loop_ssd(x, dt, A, B, C, D=None, h0=None, cos=None, sin=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B~_t^T; y_t = h_t C~_t + D x_t; float64, step by step."""
    b, t, h, p = x.shape
    heads = [i // (h // B.shape[2]) for i in range(h)]
    Bh, Ch = rotate(B, cos, sin)[:, :, heads], rotate(C, cos, sin)[:, :, heads]
    x, dt, A = x.to(F64), dt.to(F64), A.to(F64)
    state = torch.zeros(b, h, p, B.shape[-1], dtype=F64) if h0 is None else h0.to(F64)
    ys = []
    for s in range(t):
        decay = torch.exp(dt[:, s] * A)[..., None, None]
        state = decay * state + (dt[:, s, :, None] * x[:, s])[..., None] * Bh[:, s, :, None, :]
        y = (state * Ch[:, s, :, None, :]).sum(-1)
        if D is not None:
            y = y + D.to(F64)[:, None] * x[:, s]
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    return y, state


def rope_angles(positions, r, theta=100.0):
    """cos, sin (..., r/2) fp32 for integer positions (a small theta: large angles get tested)."""
    inv = theta ** (-torch.arange(0, r, 2, dtype=F64) / r)
    ang = positions.to(F64)[..., None] * inv
    return ang.cos().float(), ang.sin().float()


def make_inputs(b, t, h, g, p, n, *, dtype=torch.float32, rope=0, D=True, h0=True, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=F64) * scale).to(device)

    x = rnd(b, t, h, p).to(dtype)
    dt = (torch.rand(b, t, h, generator=gen, dtype=F64) * 0.4 + 0.02).float().to(device)
    A = (-torch.rand(h, generator=gen, dtype=F64) * 2 - 0.05).float().to(device)
    B = rnd(b, t, g, n, scale=n ** -0.5).to(dtype)
    C = rnd(b, t, g, n, scale=n ** -0.5).to(dtype)
    args = dict(x=x, dt=dt, A=A, B=B, C=C,
                D=rnd(h).float() if D else None,
                initial_state=rnd(b, h, p, n).float() if h0 else None)
    if rope:
        pos = torch.arange(t, device=device).expand(b, t)
        args["rope_cos"], args["rope_sin"] = (z.to(device) for z in rope_angles(pos.cpu(), rope))
    return args


@pytest.fixture
def triton_calls(monkeypatch):
    """Counts the calls that reach the Triton backend's functions through the op bodies."""
    backend = ssd_op.triton_backend
    assert backend is not None, "the Triton backend did not import"
    calls = {"forward": 0, "backward": 0, "step": 0}

    def counting(name):
        fn = getattr(backend, name)

        def wrapped(*args):
            out = fn(*args)
            calls[name] += 1
            return out

        return wrapped

    for name in calls:
        monkeypatch.setattr(backend, name, counting(name))
    return calls


def run_op(args, chunk_size, weights, cu_seqlens=None):
    """y, final and the gradients of <wy, y> + <wf, final> w.r.t. every float input."""
    leaves = {k: v.detach().clone().requires_grad_(True) if k in GRAD_NAMES and v is not None else v
              for k, v in args.items()}
    y, final = ssd(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"],
                   D=leaves["D"], initial_state=leaves["initial_state"], chunk_size=chunk_size,
                   return_final_state=True, cu_seqlens=cu_seqlens,
                   rope_cos=leaves.get("rope_cos"), rope_sin=leaves.get("rope_sin"))
    wy, wf = weights
    loss = (y.double() * wy).sum() + (final.double() * wf).sum()
    wrt = [leaves[k] for k in GRAD_NAMES if leaves[k] is not None]
    grads = iter(torch.autograd.grad(loss, wrt))
    return y, final, {k: next(grads) for k in GRAD_NAMES if leaves[k] is not None}


def run_loop(args, weights):
    leaves = {k: v.detach().to(F64).requires_grad_(True) if k in GRAD_NAMES and v is not None else v
              for k, v in args.items()}
    y, final = loop_ssd(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"],
                        leaves["D"], leaves["initial_state"], leaves.get("rope_cos"), leaves.get("rope_sin"))
    wy, wf = weights
    loss = (y * wy).sum() + (final * wf).sum()
    wrt = [leaves[k] for k in GRAD_NAMES if leaves[k] is not None]
    # allow_unused: an empty sequence's inputs have no elements and take no part.
    grads = iter(torch.autograd.grad(loss, wrt, allow_unused=True))
    grads = {k: next(grads) for k in GRAD_NAMES if leaves[k] is not None}
    return y, final, {k: torch.zeros_like(leaves[k]) if g is None else g for k, g in grads.items()}


def loss_weights(args, seed=1):
    gen = torch.Generator().manual_seed(seed)
    b, t, h, p = args["x"].shape
    n = args["B"].shape[-1]
    return torch.randn(b, t, h, p, generator=gen, dtype=F64), torch.randn(b, h, p, n, generator=gen, dtype=F64)


def check_against_loop(args, chunk_size, triton_calls, dtype):
    """One forward and one backward through the Triton backend against the float64 loop."""
    weights = loss_weights(args)
    got = run_op(args, chunk_size, weights)
    assert triton_calls["forward"] == 1 and triton_calls["backward"] == 1
    assert_all_close(got, run_loop(args, weights), dtype)


def assert_all_close(got, want, dtype, factor=1.0):
    y, final, grads = got
    y_ref, final_ref, grads_ref = want
    assert_close(y, y_ref, dtype, "y", factor)
    assert_close(final, final_ref, dtype, "final_state", factor)
    for name, g in grads.items():
        assert g.dtype == (torch.float32 if name in ("dt", "A", "D", "initial_state") else dtype), name
        assert_close(g, grads_ref[name], dtype, f"d{name}", factor)


# ---------------------------------------------------------------------------------------------
# Forward and every gradient against the float64 loop


CASES = [(t, dtype, rope) for t in (1, 63, 65) for dtype in (torch.float32, torch.float16) for rope in (0, 12)]
# The longest length, 5 chunks, in two of the four combinations (the interpreter is slow).
CASES += [(257, torch.float32, 12), (257, torch.float16, 0)]


@pytest.mark.interpret
@pytest.mark.parametrize("t,dtype,rope", CASES)
def test_forward_and_gradients_match_loop(t, dtype, rope, triton_calls):
    # p and n not powers of two; two heads per group; chunks of 32 (t = 257: 64, 5 chunks).
    h, g = (4, 2) if t < 257 else (2, 1)
    args = make_inputs(2 if t < 257 else 1, t, h, g, 24, 20, dtype=dtype, rope=rope, seed=t + rope)
    check_against_loop(args, 32 if t < 257 else 64, triton_calls, dtype)


@pytest.mark.interpret
@pytest.mark.parametrize("split", [True, False])
def test_rope_split_tiles_match_loop(monkeypatch, split, triton_calls):
    """The kernels' two RoPE forms at r 12 of n 20, forward and backward: rotated and plain
    channels as two tiles (PLAIN, the default where it fits) and one tile over all n."""
    from wmzoo.kernels.ssd import triton_backend

    monkeypatch.setattr(triton_backend, "SPLIT_ROPE_FORWARD", split)
    monkeypatch.setattr(triton_backend, "SPLIT_ROPE_BACKWARD", split)
    tiles = triton_backend._rope_tiles({"NB": 32}, 20, 6, triton_backend.MIN_TILE_CPU, split)
    assert tiles["PLAIN"] == split and tiles["NR"] == (12 if split else 20)
    args = make_inputs(2, 65, 4, 2, 24, 20, dtype=torch.float16, rope=12, seed=11)
    check_against_loop(args, 32, triton_calls, torch.float16)


@pytest.mark.interpret
@pytest.mark.parametrize("fwd,bwd", [(True, True), (False, False), (True, False)])
def test_rope_on_every_channel_forms_match_loop(monkeypatch, fwd, bwd, triton_calls):
    """RoPE on every channel (r = n = 32): the kernels cut at r / 2 into the two halves that
    turn against each other (PAIRED, the default) or one gathered tile, in the forward and in
    the backward's sweeps; forward and every gradient."""
    from wmzoo.kernels.ssd import triton_backend

    monkeypatch.setattr(triton_backend, "PAIRED_ROPE_FORWARD", fwd)
    monkeypatch.setattr(triton_backend, "PAIRED_ROPE_BACKWARD", bwd)
    for paired in (fwd, bwd):
        tiles = triton_backend._column_tiles({"NB": 32}, 32, 16, triton_backend.MIN_TILE_CPU, True, paired)
        assert tiles["PAIRED"] == paired and tiles["NR"] == (16 if paired else 32)
    args = make_inputs(2, 65, 4, 2, 24, 32, dtype=torch.float16, rope=32, seed=12)
    check_against_loop(args, 32, triton_calls, torch.float16)


@pytest.mark.interpret
@pytest.mark.parametrize("segs", [1, 3])
def test_gpu_tile_padding_is_exact(monkeypatch, segs, triton_calls):
    """On CUDA every tile side is padded up to 64 (a Triton 3.6 Hopper miscompile, see
    triton_backend.MIN_TILE_CUDA): run that padding here, p = 24 and the RoPE halves of 6 and
    the rest of 8 channels all in 64-wide masked tiles; also with segments (small grids on CUDA)."""
    from wmzoo.kernels.ssd import triton_backend

    monkeypatch.setattr(triton_backend, "MIN_TILE_CPU", triton_backend.MIN_TILE_CUDA)
    monkeypatch.setattr(triton_backend, "FORCE_SEGMENTS", segs)
    args = make_inputs(1, 70, 2, 1, 24, 20, rope=12, seed=9)
    check_against_loop(args, 64, triton_calls, torch.float32)


@pytest.mark.interpret
@pytest.mark.parametrize("groups,rope", [(1, 0), (4, 32)])
def test_matches_chunked_reference_without_optional_inputs(groups, rope, triton_calls):
    """No D, no initial state, no dfinal; g = 1, and g = h with all n = 32 channels rotated;
    against the op's chunked reference in float64."""
    args = make_inputs(2, 70, 4, groups, 16, 32, D=False, h0=False, rope=rope, seed=5)
    leaves = [args[k].clone().requires_grad_(True) for k in ("x", "dt", "A", "B", "C")]
    cos, sin = args.get("rope_cos"), args.get("rope_sin")
    y = ssd(*leaves, chunk_size=16, rope_cos=cos, rope_sin=sin)
    grads = torch.autograd.grad((y * y).sum(), leaves)
    ref_leaves = [z.detach().to(F64).requires_grad_(True) for z in leaves]
    y_ref = ssd_reference(*ref_leaves, chunk_size=16, rope_cos=cos, rope_sin=sin)[0]
    grads_ref = torch.autograd.grad((y_ref * y_ref).sum(), ref_leaves)
    assert triton_calls["forward"] == 1 and triton_calls["backward"] == 1
    assert_close(y, y_ref, torch.float32, "y")
    for name, g, r in zip("x dt A B C".split(), grads, grads_ref):
        assert_close(g, r, torch.float32, f"d{name}")


# ---------------------------------------------------------------------------------------------
# Varlen and states across calls


@pytest.mark.interpret
@pytest.mark.parametrize("t,dtype,rope,segs", [(65, torch.float16, 12, 3), (257, torch.float32, 12, 5),
                                               (257, torch.float32, 0, 16)])
def test_segmented_sequences_match_loop(monkeypatch, t, dtype, rope, segs, triton_calls):
    """Each sequence cut into segments run in parallel (start states chained first; used on the
    GPU when (sequence, head) programs are fewer than the SMs): forward and every gradient,
    initial and final states included, against the float64 loop. 257 tokens in chunks of 16 make
    17 chunks, so the segments are uneven and, at 16 segments, some are empty."""
    from wmzoo.kernels.ssd import triton_backend

    monkeypatch.setattr(triton_backend, "FORCE_SEGMENTS", segs)
    args = make_inputs(2, t, 4, 2, 24, 20, dtype=dtype, rope=rope, seed=t + segs)
    check_against_loop(args, 16, triton_calls, dtype)


@pytest.mark.interpret
@pytest.mark.parametrize("pieces,segs", [(16, 1), (5, 3)])
def test_chunk_local_pieces_match_loop(monkeypatch, pieces, segs, triton_calls):
    """The backward's chunk-local kernel splits each sequence into pieces independently of the
    sweeps' segments (16 on the GPU, with one segment at most shapes): 257 tokens in chunks of
    16 are 17 chunks, so 16 pieces leave some empty and 5 are uneven; every gradient against
    the float64 loop. (With RoPE the reverse sweep computes these terms itself.)"""
    from wmzoo.kernels.ssd import triton_backend

    monkeypatch.setattr(triton_backend, "FORCE_LOCAL_PIECES", pieces)
    monkeypatch.setattr(triton_backend, "FORCE_SEGMENTS", segs)
    split_runs = []  # local_pieces is asked only when the local kernel is launched
    real_pieces = triton_backend.local_pieces
    monkeypatch.setattr(triton_backend, "local_pieces", lambda dev: split_runs.append(dev) or real_pieces(dev))
    args = make_inputs(2, 257, 2, 1, 24, 20, seed=pieces)
    check_against_loop(args, 16, triton_calls, torch.float32)
    assert split_runs, "the backward did not launch the chunk-local kernel"


@pytest.mark.interpret
@pytest.mark.parametrize("rope,segs", [(0, 1), (8, 1), (8, 3)])
def test_varlen_equals_separate_sequences(monkeypatch, rope, segs, triton_calls):
    from wmzoo.kernels.ssd import triton_backend

    monkeypatch.setattr(triton_backend, "FORCE_SEGMENTS", segs)
    lengths = [5, 0, 70, 1, 33]
    h, g, p, n = 4, 2, 24, 20
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    seqs = [make_inputs(1, max(L, 1), h, g, p, n, rope=0, seed=10 + i) for i, L in enumerate(lengths)]
    for s, L in zip(seqs, lengths):  # cut to length (an empty sequence keeps only its state)
        for k in ("x", "dt", "B", "C"):
            s[k] = s[k][:, :L]
    packed = {k: torch.cat([s[k] for s in seqs], dim=1) for k in ("x", "dt", "B", "C")}
    packed["A"], packed["D"] = seqs[0]["A"], seqs[0]["D"]
    packed["initial_state"] = torch.cat([s["initial_state"] for s in seqs])
    for s in seqs:
        s["A"], s["D"] = packed["A"], packed["D"]
    if rope:  # positions restart at every sequence
        cos, sin = rope_angles(torch.cat([torch.arange(L) for L in lengths])[None], rope)
        packed["rope_cos"], packed["rope_sin"] = cos, sin
        for s, (a, e) in zip(seqs, zip(cu[:-1].tolist(), cu[1:].tolist())):
            s["rope_cos"], s["rope_sin"] = cos[:, a:e], sin[:, a:e]
    wy, _ = loss_weights(packed)
    weights = (wy, torch.randn(len(lengths), h, p, n, dtype=F64))  # one final state per sequence
    y, final, grads = run_op(packed, 16, weights, cu_seqlens=cu)
    assert triton_calls["forward"] == 1 and triton_calls["backward"] == 1
    dA = torch.zeros_like(packed["A"], dtype=F64)
    dD = torch.zeros_like(dA)
    for i, (s, a, e) in enumerate(zip(seqs, cu[:-1].tolist(), cu[1:].tolist())):
        w = (weights[0][:, a:e], weights[1][i : i + 1])
        y_ref, final_ref, g_ref = run_loop(s, w)
        if e > a:
            assert_close(y[:, a:e], y_ref, torch.float32, f"y of sequence {i}")
            for k in ("x", "dt", "B", "C"):
                assert_close(grads[k][:, a:e], g_ref[k], torch.float32, f"d{k} of sequence {i}")
        assert_close(final[i], final_ref[0], torch.float32, f"final state of sequence {i}")
        assert_close(grads["initial_state"][i], g_ref["initial_state"][0], torch.float32, f"dh0 of {i}")
        dA, dD = dA + g_ref["A"], dD + g_ref["D"]
    assert_close(grads["A"], dA, torch.float32, "dA")
    assert_close(grads["D"], dD, torch.float32, "dD")


@pytest.mark.interpret
@pytest.mark.parametrize("split", [17, 64])
def test_two_calls_carrying_state_equal_one(split, triton_calls):
    args = make_inputs(2, 100, 4, 4, 16, 16, rope=6, seed=split)
    whole, final = ssd(**{k: v for k, v in args.items()}, chunk_size=32, return_final_state=True)
    parts = []
    state = args["initial_state"]
    for a, e in ((0, split), (split, 100)):
        piece = {k: v[:, a:e] for k, v in args.items() if k in ("x", "dt", "B", "C", "rope_cos", "rope_sin")}
        y, state = ssd(**piece, A=args["A"], D=args["D"], initial_state=state, chunk_size=32,
                       return_final_state=True)
        parts.append(y)
    assert triton_calls["forward"] == 3
    assert_close(torch.cat(parts, dim=1), whole, torch.float32, "y")
    assert_close(state, final, torch.float32, "final_state")


@pytest.mark.interpret
@pytest.mark.parametrize("rope", [0, 10])
def test_decode_steps_equal_loop(rope, triton_calls):
    b, t, h, g, p, n = 3, 6, 4, 2, 24, 20
    args = make_inputs(b, t, h, g, p, n, dtype=torch.float16, seed=7)
    offset = 1000  # decode at absolute positions far from 0
    cos, sin = rope_angles(torch.arange(offset, offset + t).expand(b, t), rope) if rope else (None, None)
    y_ref, final_ref = loop_ssd(args["x"], args["dt"], args["A"], args["B"], args["C"], args["D"],
                                args["initial_state"], cos, sin)
    state = args["initial_state"]
    for s in range(t):
        rc, rs = (None, None) if cos is None else (cos[:, s], sin[:, s])
        y, state = ssd_step(state, args["x"][:, s], args["dt"][:, s], args["A"], args["B"][:, s],
                            args["C"][:, s], D=args["D"], rope_cos=rc, rope_sin=rs)
        assert y.dtype == torch.float16 and state.dtype == torch.float32
        assert_close(y, y_ref[:, s], torch.float16, f"y at step {s}")
    assert triton_calls["step"] == t
    assert_close(state, final_ref, torch.float32, "state")


# ---------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, inputs the kernels refuse


@pytest.mark.interpret
def test_opcheck(triton_calls):
    args = make_inputs(1, 19, 2, 1, 16, 16, rope=4, seed=3)
    cu = torch.tensor([0, 7, 19], dtype=torch.int32)
    h0 = torch.randn(2, 2, 16, 16)
    fwd_args = (args["x"], args["dt"], args["A"], args["B"], args["C"], args["D"], h0, cu,
                args["rope_cos"], args["rope_sin"], 16)
    torch.library.opcheck(torch.ops.wmzoo.ssd_fwd.default, fwd_args,
                          test_utils=("test_schema", "test_faketensor"))
    y, final = torch.ops.wmzoo.ssd_fwd(*fwd_args)
    torch.library.opcheck(torch.ops.wmzoo.ssd_bwd.default,
                          (torch.randn_like(y), torch.randn_like(final), *fwd_args),
                          test_utils=("test_schema", "test_faketensor"))
    step_args = (h0, args["x"][:, 0].expand(2, -1, -1).contiguous(), args["dt"][:, 0].expand(2, -1).contiguous(),
                 args["A"], args["B"][:, 0].expand(2, -1, -1).contiguous(),
                 args["C"][:, 0].expand(2, -1, -1).contiguous(), args["D"], None, None)
    torch.library.opcheck(torch.ops.wmzoo.ssd_step.default, step_args,
                          test_utils=("test_schema", "test_faketensor"))
    assert triton_calls["forward"] > 0 and triton_calls["backward"] > 0 and triton_calls["step"] > 0


@pytest.mark.interpret
def test_compile_fullgraph_dynamic_matches_eager(triton_calls):
    torch._dynamo.reset()

    def fn(x, dt, A, B, C, D, cos, sin):
        return ssd(x, dt, A, B, C, D=D, chunk_size=16, rope_cos=cos, rope_sin=sin).square().sum()

    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for t in (19, 34):  # a second length reuses the dynamic graph
        args = make_inputs(1, t, 2, 1, 16, 16, rope=4, h0=False, seed=t)
        leaves = [args[k].requires_grad_(True) for k in ("x", "dt", "A", "B", "C", "D")]
        extra = (args["rope_cos"], args["rope_sin"])
        eager = fn(*leaves, *extra)
        eager_grads = torch.autograd.grad(eager, leaves)
        out = compiled(*leaves, *extra)
        grads = torch.autograd.grad(out, leaves)
        assert_close(out, eager, torch.float32, "compiled output")
        for name, g, e in zip("x dt A B C D".split(), grads, eager_grads):
            assert_close(g, e, torch.float32, f"compiled d{name}")
    assert triton_calls["forward"] >= 4 and triton_calls["backward"] >= 4


@pytest.mark.interpret
def test_unsupported_inputs_say_why_and_fall_back():
    from wmzoo.kernels.registry import Unsupported
    from wmzoo.kernels.ssd import triton_backend

    args = make_inputs(1, 20, 2, 1, 16, 16, seed=4)
    positional = (args["x"], args["dt"], args["A"], args["B"], args["C"], None, None, None, None, None)
    with pytest.raises(Unsupported, match="chunk_size = 8"):
        triton_backend.forward(*positional, 8)
    with pytest.raises(Unsupported, match="float64"):
        triton_backend.forward(args["x"].double(), *positional[1:], 16)
    # The op still answers, from the reference.
    y = ssd(args["x"], args["dt"], args["A"], args["B"], args["C"], chunk_size=8)
    assert_close(y, loop_ssd(args["x"], args["dt"], args["A"], args["B"], args["C"])[0], torch.float32, "y")


# ---------------------------------------------------------------------------------------------
# GPU: bf16


@pytest.mark.interpret
@pytest.mark.parametrize("segs", [1, 3])
def test_deterministic_mode_stays_on_the_kernels(monkeypatch, deterministic, segs, triton_calls):
    """torch.use_deterministic_algorithms(True) pins the configs (kernels/autotune) and fills
    torch.empty with NaN: every buffer a kernel is meant to fill must be written in full."""
    from wmzoo.kernels.ssd import triton_backend

    monkeypatch.setattr(triton_backend, "FORCE_SEGMENTS", segs)
    args = make_inputs(2, 100, 4, 2, 24, 20, rope=12, seed=8)
    check_against_loop(args, 32, triton_calls, torch.float32)


def check_gpu_against_loop(args, triton_calls):
    """bf16 on CUDA, one forward and one backward through the kernels, against the float64 loop
    on CPU."""
    weights = tuple(w.cuda() for w in loss_weights(args))
    got = run_op(args, 64, weights)
    want = run_loop({k: v.cpu() if v is not None else None for k, v in args.items()},
                    tuple(w.cpu() for w in weights))
    assert triton_calls["forward"] == 1 and triton_calls["backward"] == 1
    assert_all_close(got, want, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("groups", [1, 8])
@pytest.mark.parametrize("rope", [0, 32])
def test_gpu_bf16_matches_loop(groups, rope, triton_calls):
    args = make_inputs(2, 300, 8, groups, 64, 64, dtype=torch.bfloat16, rope=rope, seed=groups + rope,
                       device="cuda")
    check_gpu_against_loop(args, triton_calls)


@pytest.mark.gpu
@pytest.mark.parametrize("segs", [1, 4])
@pytest.mark.parametrize("rope", [64, 128])
def test_gpu_bf16_benchmark_tiles(monkeypatch, segs, rope, triton_calls):
    """The benchmark's tiles (p 64, n 128, r 64, chunk 64): shared memory grows with the tile,
    not with T, so a short sequence runs the same kernels the benchmark does (at n 128 with RoPE
    the two-stage forward once needed 270 KB of shared memory, over the H200's limit). r 64
    runs the forward's rotated / plain tiles, r 128 its paired halves."""
    from wmzoo.kernels.ssd import triton_backend

    monkeypatch.setattr(triton_backend, "FORCE_SEGMENTS", segs)
    args = make_inputs(2, 200, 4, 4, 64, 128, dtype=torch.bfloat16, rope=rope, seed=3, device="cuda")
    check_gpu_against_loop(args, triton_calls)


@pytest.mark.gpu
def test_gpu_deterministic_mode_repeats_bit_for_bit_without_autotuning(monkeypatch, deterministic, triton_calls):
    """Deterministic mode runs each kernel's first config: the autotuner is never consulted (its
    caches stay empty) and two forward+backward passes give the same bits."""
    from wmzoo.kernels.autotune import autotune_choices

    for module in (triton_fwd, triton_bwd, triton_segments):
        for kernel in vars(module).values():
            if isinstance(kernel, Autotuned):
                monkeypatch.setattr(kernel.tuned, "cache", {})
    args = make_inputs(2, 300, 8, 2, 64, 64, dtype=torch.bfloat16, rope=32, seed=4, device="cuda")
    weights = tuple(w.cuda() for w in loss_weights(args))
    first, second = run_op(args, 64, weights), run_op(args, 64, weights)
    assert not [k for k in autotune_choices() if k.startswith("ssd.")]
    for a, b in zip((first[0], first[1], *first[2].values()), (second[0], second[1], *second[2].values())):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_compile_fullgraph_dynamic():
    torch._dynamo.reset()
    args = make_inputs(1, 200, 8, 8, 64, 64, dtype=torch.bfloat16, rope=16, h0=False, device="cuda")

    def fn(x, dt, A, B, C, D, cos, sin):
        return ssd(x, dt, A, B, C, D=D, chunk_size=64, rope_cos=cos, rope_sin=sin).float().square().sum()

    leaves = [args[k].requires_grad_(True) for k in ("x", "dt", "A", "B", "C", "D")]
    extra = (args["rope_cos"], args["rope_sin"])
    out = torch.compile(fn, fullgraph=True, dynamic=True)(*leaves, *extra)
    grads = torch.autograd.grad(out, leaves)
    eager = fn(*leaves, *extra)
    eager_grads = torch.autograd.grad(eager, leaves)
    assert_close(out, eager, torch.bfloat16, "compiled output")
    for name, g, e in zip("x dt A B C D".split(), grads, eager_grads):
        assert_close(g, e, torch.bfloat16, f"compiled d{name}")


@pytest.mark.interpret
@pytest.mark.parametrize("rope", [0, 16])
@pytest.mark.parametrize("seed", [1, 2])
def test_half_precision_dot_path_keeps_da_accurate(monkeypatch, triton_calls, rope, seed):
    """On the GPU the kernels multiply in bf16 / fp16 on tensor cores. dA sums per-token terms
    that cancel pairwise over the whole sequence, so rounding them differently on the two sides
    (states rounded to the half type) put dA 1e-2 .. 3e-2 off on the H200. Here the fp16 product
    path runs under the interpreter (its bf16 tl.dot is not usable): dA must stay at fp32-like
    accuracy against the float64 loop (fp16-rounded states gave 2e-3, the kernels now ~4e-6).
    With RoPE, the rotated B~ / C~ are rounded to the half type once (as a bf16 rotated copy
    would be) and the gradients must be those of the loop on exactly those rounded values."""
    from wmzoo.kernels.ssd import triton_backend
    from wmzoo.kernels.ssd.triton_common import DOT_FP16

    monkeypatch.setattr(triton_backend, "_dot", lambda x: DOT_FP16)
    args = make_inputs(1, 300, 2, 2, 16, 32, D=False, h0=False, rope=rope, seed=seed)
    for k in ("x", "B", "C"):  # exact in fp16, as bf16 / fp16 inputs are on the GPU
        args[k] = args[k].half().float()
    leaves = [args[k].clone().requires_grad_(True) for k in ("x", "dt", "A", "B", "C")]
    cos, sin = args.get("rope_cos"), args.get("rope_sin")
    y = ssd(*leaves, chunk_size=16, rope_cos=cos, rope_sin=sin)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).half().float()
    grads = torch.autograd.grad((y * dy).sum(), leaves)
    assert triton_calls["forward"] == 1 and triton_calls["backward"] == 1
    ref = [z.detach().to(F64).requires_grad_(True) for z in leaves]
    if rope:  # the loop on the rounded rotated operands (the kernels' dB, dC are unrotated: not compared)
        ref[3], ref[4] = (rotate(z, cos, sin).half().to(F64).requires_grad_(True) for z in (args["B"], args["C"]))
    y_ref, _ = loop_ssd(*ref)
    grads_ref = torch.autograd.grad((y_ref * dy.to(F64)).sum(), ref)
    names = "x dt A B C".split()[: 3 if rope else 5]
    rel = {n: ((g.to(F64) - r).norm() / r.norm()).item() for n, g, r in zip(names, grads, grads_ref)}
    assert rel["A"] < 5e-5, rel
    assert max(rel.values()) < 2e-3, rel
