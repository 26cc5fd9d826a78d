"""The CDMoE ops on their reference path against float64 brute force and explicit loops:
values, gradients, ties, opcheck, torch.compile and bad input."""

from __future__ import annotations

import pytest
import torch
from cdmoe_math import brute_force_topk, expert_inputs, grads, loop_experts, retrieval_inputs
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

from wmzoo.kernels.cdmoe import cdmoe_experts, product_key_topk, sqrt_experts


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,heads,r,s,k", [(1, 1, 2, 1, 1), (63, 3, 12, 7, 4), (65, 2, 10, 16, 16), (17, 4, 6, 32, 8)])
def test_product_key_topk_equals_brute_force(dtype, n, heads, r, s, k):
    q, keys = retrieval_inputs(n, heads, r, s, dtype)
    w, idx = product_key_topk(q, keys, k)
    w_ref, idx_ref = brute_force_topk(q, keys, k)
    assert idx.dtype == torch.int64 and w.dtype == dtype
    assert torch.equal(idx, idx_ref)
    assert_close(w, w_ref, dtype, "weights")


def test_product_key_ties_go_to_the_lower_expert_id():
    # Integer scores with many exact ties: s1 and s2 take values in {0, 1, 2}.
    g = torch.Generator().manual_seed(1)
    s, k = 9, 6
    q = torch.ones(40, 2, 2, dtype=torch.float64)
    keys = torch.randint(0, 3, (2, 2, s, 1), generator=g).double()
    q[::2] = torch.randint(-1, 2, (20, 2, 2), generator=g).double()
    w, idx = product_key_topk(q, keys, k)
    w_ref, idx_ref = brute_force_topk(q, keys, k)
    assert torch.equal(idx, idx_ref)
    assert_close(w, w_ref, torch.float64, "weights")
    # All-equal keys: every score ties, so the first k ids win, in id order.
    w, idx = product_key_topk(q, torch.zeros_like(keys), k)
    assert torch.equal(idx, torch.arange(k).expand(40, 2, k))
    assert torch.allclose(w, torch.full_like(w, 1 / k))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_product_key_topk_gradients(dtype):
    q, keys = retrieval_inputs(33, 3, 10, 9, dtype, seed=2)
    g = torch.randn(33, 3, 5, dtype=torch.float64)
    dq, dk = grads(lambda a, b: product_key_topk(a, b, 5)[0], [q, keys], g)
    dq_ref, dk_ref = grads(lambda a, b: brute_force_topk(a, b, 5)[0], [q, keys], g)
    assert_close(dq, dq_ref, dtype, "d query")
    assert_close(dk, dk_ref, dtype, "d sub_keys")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,d,k,experts,repeat", [(1, 7, 1, 4, False), (63, 24, 5, 49, False), (65, 33, 6, 16, True)])
def test_cdmoe_experts_values_and_gradients(dtype, n, d, k, experts, repeat):
    inputs = expert_inputs(n, d, k, experts, dtype, repeat=repeat)
    out = cdmoe_experts(*inputs)
    assert out.dtype == dtype
    assert_close(out, loop_experts(*inputs), dtype)
    g = torch.randn(n, d, dtype=torch.float64)
    got, want = grads(cdmoe_experts, inputs, g), grads(loop_experts, inputs, g)
    for name, a, b in zip(["x", "indices", "weights", "down", "up"], got, want):
        if b is not None:
            assert_close(a, b, dtype, f"d {name}")


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    n=st.sampled_from([1, 63, 65]),
    d=st.sampled_from([3, 24, 40]),
    heads=st.integers(1, 3),
    s=st.integers(2, 9),
    data=st.data(),
)
def test_retrieval_then_experts_property(n, d, heads, s, data):
    """The two ops chained as the block uses them, fwd and bwd, over odd sizes."""
    k = data.draw(st.integers(1, s))
    q, keys = retrieval_inputs(n, heads, 4, s, seed=n + d)
    x, _, _, down, up = expert_inputs(n, d, 1, s * s, seed=s)

    def chain(q, keys, x, down, up, ref=False):
        w, idx = (brute_force_topk if ref else product_key_topk)(q, keys, k)
        mix = loop_experts if ref else cdmoe_experts
        return mix(x, idx.reshape(n, -1), w.reshape(n, -1).to(x.dtype), down, up)

    inputs = [q, keys, x, down, up]
    assert_close(chain(*inputs), chain(*inputs, ref=True), torch.float32)
    g = torch.randn(n, d, dtype=torch.float64)
    got = grads(chain, inputs, g)
    want = grads(lambda *a: chain(*a, ref=True), inputs, g)
    for name, a, b in zip(["query", "sub_keys", "x", "down", "up"], got, want):
        assert_close(a, b, torch.float32, f"d {name}")


def test_opcheck():
    q, keys = retrieval_inputs(7, 2, 6, 5, seed=3)
    torch.library.opcheck(torch.ops.wmzoo.product_key_topk.default, (q.requires_grad_(), keys.requires_grad_(), 3))
    x, idx, w, down, up = (t.requires_grad_() if t.is_floating_point() else t for t in expert_inputs(9, 5, 3, 16))
    torch.library.opcheck(torch.ops.wmzoo.cdmoe_experts.default, (x, idx, w, down, up))


def test_compile_fullgraph_dynamic_matches_eager():
    def block(q, keys, x, down, up):
        w, idx = product_key_topk(q, keys, 3)
        return cdmoe_experts(x, idx.flatten(1), w.flatten(1), down, up)

    compiled = torch.compile(block, fullgraph=True, dynamic=True)
    for n in (5, 11):
        q, keys = retrieval_inputs(n, 2, 6, 4, seed=n)
        x, _, _, down, up = expert_inputs(n, 10, 1, 16, seed=n)
        inputs = [t.requires_grad_() for t in (q, keys, x, down, up)]
        eager_out = block(*inputs)
        eager_grads = torch.autograd.grad(eager_out.square().sum(), inputs)
        out = compiled(*inputs)
        got_grads = torch.autograd.grad(out.square().sum(), inputs)
        assert_close(out, eager_out, torch.float32, "compiled output")
        for a, b in zip(got_grads, eager_grads):
            assert_close(a, b, torch.float32, "compiled gradient")


def test_bad_input_errors_name_the_argument():
    q, keys = retrieval_inputs(4, 2, 6, 5)
    with pytest.raises(ValueError, match=r"topk: expected <= S=5"):
        product_key_topk(q, keys, 6)
    with pytest.raises(ValueError, match=r"even retrieval dim R.*R=5"):
        product_key_topk(q[..., :5], keys, 2)
    with pytest.raises(ValueError, match=r"sub_keys: expected shape \(2, 2, \*, 3\)"):
        product_key_topk(q, keys[:, :, :, :2], 2)
    with pytest.raises(TypeError, match=r"sub_keys: expected dtype in \(float32\), got float64"):
        product_key_topk(q, keys.double(), 2)
    x, idx, w, down, up = expert_inputs(4, 5, 3, 16)
    with pytest.raises(TypeError, match=r"indices: expected dtype in \(int64\), got int32"):
        cdmoe_experts(x, idx.int(), w, down, up)
    with pytest.raises(ValueError, match=r"weights: expected shape \(4, 3\)"):
        cdmoe_experts(x, idx, w[:, :2], down, up)
    with pytest.raises(ValueError, match=r"up: expected shape \(16, 5\)"):
        cdmoe_experts(x, idx, w, down, up[:9])
    with pytest.raises(TypeError, match=r"down: expected dtype in \(float32\), got float16"):
        cdmoe_experts(x, idx, w, down.half(), up)
    with pytest.raises(ValueError, match=r"N=1000; nearest squares 961 and 1024"):
        sqrt_experts(1000)
    assert sqrt_experts(4096) == 64
