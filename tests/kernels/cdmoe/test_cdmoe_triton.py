"""The CDMoE Triton kernels (through the public ops) against float64 brute force and loops:
under the interpreter on CPU in fp32/fp16, on the GPU in bf16."""

from __future__ import annotations

import pytest
import torch
from cdmoe_math import brute_force_topk, expert_inputs, gathered_experts, grads, loop_experts, retrieval_inputs, scores_at
from conftest import assert_close

from wmzoo.kernels.cdmoe import cdmoe_experts, op, product_key_topk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def no_reference_fallback(monkeypatch):
    """Make a silent fallback to the reference fail the test: the kernels must run."""

    def refuse(*args, **kwargs):
        raise AssertionError("the op fell back to the reference")

    for name in ["product_key_topk_reference", "cdmoe_experts_reference", "cdmoe_experts_backward_reference"]:
        monkeypatch.setattr(op, name, refuse)


def on_device(*tensors):
    return [t.to(DEVICE) for t in tensors]


def check_retrieval(n, heads, r, s, k, dtype, exact_ids=True):
    """Ids equal brute force (exact_ids) or, where fp32 rounding may swap near-ties, the ids'
    true scores equal the true top-k scores; weights and gradients against float64 math."""
    q, keys = on_device(*retrieval_inputs(n, heads, r, s, dtype, seed=n))
    w, idx = product_key_topk(q, keys, k)
    assert w.dtype == dtype and idx.dtype == torch.int64
    if exact_ids:
        w_ref, idx_ref = brute_force_topk(q, keys, k)
        assert torch.equal(idx, idx_ref), "retrieved expert ids differ from brute force"
        reference = lambda a, b: brute_force_topk(a, b, k)[0]  # noqa: E731
    else:
        w_ref, kept, best = scores_at(q, keys, idx)
        assert_close(kept, best, dtype, "scores of the retrieved ids vs the true top-k")
        assert idx.sort(-1).values.diff(dim=-1).ne(0).all(), "an expert id retrieved twice"
        reference = lambda a, b: scores_at(a, b, idx)[0]  # noqa: E731
    assert_close(w, w_ref, dtype, "weights")
    g = torch.randn(n, heads, k, dtype=torch.float64, generator=torch.Generator().manual_seed(n)).to(DEVICE)
    got = grads(lambda a, b: product_key_topk(a, b, k)[0], [q, keys], g)
    want = grads(reference, [q, keys], g)
    assert_close(got[0], want[0], dtype, "d query")
    assert_close(got[1], want[1], dtype, "d sub_keys")


def check_experts(n, d, k, n_experts, dtype, repeat=False):
    inputs = on_device(*expert_inputs(n, d, k, n_experts, dtype, seed=n, repeat=repeat))
    math = loop_experts if n * k <= 1000 else gathered_experts
    assert_close(cdmoe_experts(*inputs), math(*inputs), dtype, "output")
    # seeded like the inputs: an unseeded draw depended on which tests ran before (one draw
    # at n 1, d 7 in fp16 gave dx 5.8e-3 against the 5e-3 tolerance in a clean-clone CI run)
    g = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(n)).to(DEVICE)
    got = grads(cdmoe_experts, inputs, g)
    want = grads(math, inputs, g)
    for name, a, b in zip(["x", "indices", "weights", "down", "up"], got, want):
        if b is not None:
            assert_close(a, b, dtype, f"d {name}")


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,heads,r,s,k", [(1, 1, 2, 1, 1), (63, 3, 12, 7, 4), (65, 2, 10, 16, 16), (17, 2, 6, 33, 9)])
def test_retrieval_kernel_interpreted(no_reference_fallback, dtype, n, heads, r, s, k):
    check_retrieval(n, heads, r, s, k, dtype)


@pytest.mark.interpret
def test_retrieval_kernel_ties_go_to_the_lower_expert_id(no_reference_fallback):
    # exact small-integer scores in fp32, many ties in both halves and in the sums
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-1, 2, (33, 2, 2), generator=g).float()
    keys = torch.randint(0, 3, (2, 2, 9, 1), generator=g).float()
    w, idx = product_key_topk(q, keys, 6)
    w_ref, idx_ref = brute_force_topk(q, keys, 6)
    assert torch.equal(idx, idx_ref)
    assert_close(w, w_ref, torch.float32, "weights")


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "n,d,k,n_experts,repeat", [(1, 7, 1, 4, False), (63, 40, 5, 49, True), (65, 33, 6, 16, True), (40, 300, 9, 100, True)]
)
def test_experts_kernel_interpreted(no_reference_fallback, dtype, n, d, k, n_experts, repeat):
    check_experts(n, d, k, n_experts, dtype, repeat)


@pytest.mark.interpret
def test_kernels_under_compile_and_opcheck():
    def block(q, keys, x, down, up):
        w, idx = product_key_topk(q, keys, 3)
        return cdmoe_experts(x, idx.flatten(1), w.flatten(1), down, up)

    q, keys = retrieval_inputs(9, 2, 6, 4)
    x, _, _, down, up = expert_inputs(9, 10, 1, 16)
    inputs = [t.requires_grad_() for t in (q, keys, x, down, up)]
    eager = block(*inputs)
    compiled = torch.compile(block, fullgraph=True, dynamic=True)(*inputs)
    assert_close(compiled, eager, torch.float32, "compiled output")
    torch.library.opcheck(torch.ops.wmzoo.product_key_topk.default, (q, keys, 3))
    x, idx, w, down, up = (t.requires_grad_() if t.is_floating_point() else t for t in expert_inputs(9, 5, 3, 16))
    torch.library.opcheck(torch.ops.wmzoo.cdmoe_experts.default, (x, idx, w, down, up))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,heads,r,s,k", [(4097, 4, 256, 64, 8), (1000, 1, 256, 128, 64), (65, 2, 256, 1024, 16)])
def test_retrieval_kernel_gpu(no_reference_fallback, dtype, n, heads, r, s, k):
    check_retrieval(n, heads, r, s, k, dtype, exact_ids=False)


@pytest.mark.gpu
@pytest.mark.parametrize("n,d,k,n_experts", [(1025, 1024, 64, 16384), (333, 1000, 8, 49)])
def test_experts_kernel_gpu_bf16(no_reference_fallback, n, d, k, n_experts):
    check_experts(n, d, k, n_experts, torch.bfloat16, repeat=True)


@pytest.mark.gpu
def test_experts_gradients_repeat_bitwise():
    """The backward sums in a fixed order: two runs give identical bits (few hot experts,
    so many pairs share one table row)."""
    inputs = on_device(*expert_inputs(2049, 512, 16, 64, torch.bfloat16))
    leaves = [t.requires_grad_() if t.is_floating_point() else t for t in inputs]
    g = torch.randn(2049, 512, device=DEVICE, dtype=torch.bfloat16)
    wrt = [leaves[0], leaves[2], leaves[3], leaves[4]]
    first = torch.autograd.grad(cdmoe_experts(*leaves), wrt, g)
    second = torch.autograd.grad(cdmoe_experts(*leaves), wrt, g)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
