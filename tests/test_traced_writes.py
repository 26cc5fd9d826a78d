"""What torch.compile believes each Triton kernel writes, checked on a CPU-only machine.

On CUDA the ops are ``triton_op``s: when torch.compile traces one, functionalization keeps
only the tensors that torch's analysis of the kernel's TTIR reports as written
(``identify_accessed_tensors``); an output it missed would reach the graph as the untouched
``torch.empty`` buffer. These tests record the launches of one backend call (nothing runs),
have torch analyse each kernel for sm_90, and compare with the outputs each kernel is
documented to write. The TTIR needs a GPU target only, not a GPU: a stand-in driver names one.
"""

import importlib
import os

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.autotuner import Autotuner

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="builds GPU TTIR; not under the interpreter")


class _Hopper:
    """Just enough of a Triton driver for TTIR generation: the target."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


@pytest.fixture
def hopper(monkeypatch):
    monkeypatch.setattr(triton.runtime.driver, "_active", _Hopper())


def jit_function(kernel):
    """The @triton.jit function behind a launched kernel (an Autotuner wraps one)."""
    return kernel.fn if isinstance(kernel, Autotuner) else kernel


def record_launches(monkeypatch, module):
    """Replace ``module.launch`` so that kernel[grid](...) records (kernel, args, kwargs)."""
    calls = []

    class Recorder:
        def __init__(self, kernel):
            pick = getattr(kernel, "pick", None)  # what registry.launch hands to wrap_triton
            self.kernel = pick() if pick else kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((self.kernel, args, kwargs))

    monkeypatch.setattr(module, "launch", Recorder)
    return calls


def written(kernel, args, kwargs) -> set[str]:
    """The pointer arguments torch's TTIR analysis reports as written by this launch."""
    from torch._higher_order_ops.triton_kernel_wrap import identify_accessed_tensors

    bound = dict(zip(jit_function(kernel).arg_names, args)) | kwargs
    accesses = identify_accessed_tensors(kernel, bound, {})
    return {dep.name for dep in accesses.read_writes.writes}


def check(calls, expected, read_only):
    """Every documented output is reported written, and no read-only input is: the analysis
    ran (on failure torch assumes that every tensor is written, which would pass the first)."""
    for kern, args, kwargs in calls:
        name = jit_function(kern).__name__
        writes = written(kern, args, kwargs)
        assert expected[name] <= writes, (name, writes)
        assert not writes & read_only, (name, writes & read_only)


def not_writing_delta(calls):
    """The launches other than the dq kernel, which writes D = rowsum(dO * O) for the others."""
    return [c for c in calls if jit_function(c[0]).__name__ != "_bwd_q_kernel"]


@pytest.mark.parametrize("varlen", [False, True])
def test_dmattn_kernels_are_seen_writing_their_outputs(hopper, monkeypatch, varlen):
    backend = importlib.import_module("wmzoo.kernels.dmattn.triton_backend")
    calls = record_launches(monkeypatch, backend)
    t, h, hkv, d = 300, 4, 2, 64
    q = torch.randn(1, t, h, d, dtype=torch.bfloat16)
    k, v = (torch.randn(1, t, hkv, d, dtype=torch.bfloat16) for _ in range(2))
    bias, lse = torch.randn(1, hkv, t), torch.randn(1, h, t)
    cu = torch.tensor([0, 120, t], dtype=torch.int32) if varlen else None
    none = torch.empty(0)
    backend.forward(q, k, v, bias, cu, 0, d ** -0.5)
    backend.backward(torch.randn_like(q), q, k, v, bias, torch.randn_like(q), lse, none, none, none, none, cu, 0, d ** -0.5)
    expected = {"_fwd_kernel": {"o_ptr", "lse_ptr"}, "_bwd_q_kernel": {"dq_ptr", "delta_ptr"},
                "_bwd_kv_kernel": {"dk_ptr", "dv_ptr", "db_ptr"}}
    assert sorted(jit_function(kern).__name__ for kern, _, _ in calls) == sorted(expected)
    check(calls, expected, read_only={"q_ptr", "k_ptr", "v_ptr", "b_ptr", "do_ptr"})
    check(not_writing_delta(calls), expected, read_only={"delta_ptr"})  # D: the dq kernel's only


@pytest.mark.parametrize("varlen", [False, True])
def test_dmattn_windowed_backward_kernels_are_seen_writing_their_outputs(hopper, monkeypatch, varlen):
    """The windowed backward: dq and D, each key's last keeping query, and the key-major kernel's
    dk, dv, dbias stored at gathered key rows. (The key order is reported written too: the
    stores' addresses come from values loaded from it.)"""
    backend = importlib.import_module("wmzoo.kernels.dmattn.triton_backend")
    calls = record_launches(monkeypatch, backend)
    order_calls = record_launches(monkeypatch, importlib.import_module("wmzoo.kernels.dmattn.triton_key_order"))
    t, h, hkv, d, w = 300, 4, 2, 64, 50
    q = torch.randn(1, t, h, d, dtype=torch.bfloat16)
    k, v = (torch.randn(1, t, hkv, d, dtype=torch.bfloat16) for _ in range(2))
    bias, lse = torch.randn(1, hkv, t), torch.randn(1, h, t)
    cu = torch.tensor([0, 120, t], dtype=torch.int32) if varlen else None
    blocks = backend.block_layout(t, cu, backend.BLOCK_M, q.device).n_blocks
    kept = torch.zeros(1, hkv, blocks, w, dtype=torch.int32)
    theta = torch.full((1, hkv, t), -1, dtype=torch.int32)
    backend.backward(torch.randn_like(q), q, k, v, bias, torch.randn_like(q), lse, kept, kept.float(), theta,
                     torch.zeros_like(theta), cu, w, d ** -0.5)
    calls += order_calls
    expected = {"_bwd_q_kernel": {"dq_ptr", "delta_ptr"}, "_last_query_kernel": {"last_ptr"},
                "_bwd_kv_window_kernel": {"dk_ptr", "dv_ptr", "db_ptr"}}
    assert sorted(jit_function(kern).__name__ for kern, _, _ in calls) == sorted(expected)
    check(calls, expected, read_only={"q_ptr", "k_ptr", "v_ptr", "b_ptr", "do_ptr", "theta_ptr", "count_ptr"})
    check(not_writing_delta(calls), expected, read_only={"delta_ptr"})


@pytest.mark.parametrize("varlen", [False, True])
def test_dmattn_window_selection_kernels_are_seen_writing_their_outputs(hopper, monkeypatch, varlen):
    """The selection writes its lists in place into buffers made by torch.full, and its scan
    steps read one buffer and write the other: traced, a missed write would leave them at -1.
    Also a guard on compile time: with its binary search unrolled (tl.static_range) torch
    2.13's analysis of the merge kernels ran for minutes, exponential in the search's depth
    (pytorch#193703), so the search is a loop; were it unrolled again, this test would hang."""
    select = importlib.import_module("wmzoo.kernels.dmattn.triton_select")
    layout_of = importlib.import_module("wmzoo.kernels.dmattn.triton_layout").block_layout
    calls = record_launches(monkeypatch, select)
    t = 700
    bias = torch.randn(1, 2, t)
    cu = torch.tensor([0, 300, t], dtype=torch.int32) if varlen else None
    layout = layout_of(t, cu, 128, bias.device)
    select.select_window(bias, 100, 128, layout)
    expected = {"_block_sort_kernel": {"out_ptr", "outb_ptr"}, "_scan_kernel": {"out_ptr", "outb_ptr"},
                "_theta_kernel": {"theta_ptr", "count_ptr"}}
    names = [jit_function(kern).__name__ for kern, _, _ in calls]
    assert names == ["_block_sort_kernel"] + ["_scan_kernel"] * select.scan_steps(t, 128) + ["_theta_kernel"], names
    # (the scan step's input lists are reported written too: torch counts an argument as written
    # when a store's address depends on values loaded from it, as a merge's scatter does)
    check(calls, expected, read_only={"bias_ptr", "kept_ptr", "keptb_ptr"})


def test_ssd_kernels_are_seen_writing_their_outputs(hopper, monkeypatch):
    backend = importlib.import_module("wmzoo.kernels.ssd.triton_backend")
    calls = record_launches(monkeypatch, backend)
    b, t, h, p, g, n = 1, 100, 4, 32, 2, 32
    x, dy = torch.randn(b, t, h, p, dtype=torch.bfloat16), torch.randn(b, t, h, p, dtype=torch.bfloat16)
    dt, A, D = torch.rand(b, t, h), -torch.rand(h), torch.randn(h)
    B, C = (torch.randn(b, t, g, n, dtype=torch.bfloat16) for _ in range(2))
    cos, sin = torch.rand(b, t, n // 4), torch.rand(b, t, n // 4)
    h0, dfinal = torch.randn(b, h, p, n), torch.randn(b, h, p, n)
    backend.forward(x, dt, A, B, C, D, h0, None, cos, sin, 64)
    backend.backward(dy, dfinal, x, dt, A, B, C, D, h0, None, cos, sin, 64)
    # without RoPE the backward's in-chunk terms come from a kernel of their own
    backend.backward(dy, dfinal, x, dt, A, B, C, D, h0, None, None, None, 64)
    expected = {
        "_ssd_fwd_kernel": {"y_ptr", "final_ptr"},
        "_ssd_bwd_forward_sweep": {"dC_ptr", "cdc_ptr", "dff_ptr"},
        "_ssd_bwd_chunk_local": {"dBl_ptr", "dxdl_ptr", "dgl_ptr"},
        "_ssd_bwd_reverse_sweep": {"dx_ptr", "ddt_ptr", "dB_ptr", "dA_ptr", "dD_ptr", "dh0_ptr"},
        "_unrotate_kernel": {"d_ptr"},  # RoPE's transpose, in place on the summed dB~ and dC~
    }
    names = [jit_function(kern).__name__ for kern, _, _ in calls]
    assert set(names) == set(expected), names
    check(calls, expected, read_only={"x_ptr", "dy_ptr", "B_ptr", "C_ptr", "cos_ptr", "sin_ptr"})


def test_cdmoe_kernels_are_seen_writing_their_outputs(hopper, monkeypatch):
    retrieval = importlib.import_module("wmzoo.kernels.cdmoe.retrieval_kernel")
    experts = importlib.import_module("wmzoo.kernels.cdmoe.experts_kernel")
    calls, expert_calls = record_launches(monkeypatch, retrieval), record_launches(monkeypatch, experts)
    n, heads, r, s, k, d = 50, 2, 32, 16, 8, 64
    retrieval.product_key_topk_triton(torch.randn(n, heads, r), torch.randn(heads, 2, s, r // 2), k)
    x, weights = torch.randn(n, d), torch.randn(n, k)
    indices = torch.randint(0, s * s, (n, k))
    down, up = torch.randn(s * s, d), torch.randn(s * s, d)
    experts.cdmoe_experts_triton(x, indices, weights, down, up)
    experts.cdmoe_experts_backward_triton(torch.randn(n, d), x, indices, weights, down, up)
    calls += expert_calls
    expected = {"_retrieval_fwd_kernel": {"w_ptr", "idx_ptr"}, "_experts_fwd_kernel": {"out_ptr"},
                "_experts_bwd_by_expert_kernel": {"dw_ptr", "dh_ptr", "d_down_ptr", "d_up_ptr"},
                "_experts_dx_kernel": {"dx_ptr"}}
    assert sorted(jit_function(kern).__name__ for kern, _, _ in calls) == sorted(expected)
    check(calls, expected, read_only={"q_ptr", "keys_ptr", "x_ptr", "down_ptr", "up_ptr", "grad_ptr"})


@pytest.mark.parametrize("varlen", [False, True])
def test_triton_bodies_trace_with_symbolic_shapes(hopper, varlen):
    """On CUDA torch.compile traces the Triton bodies with symbolic shapes (they are their own
    fakes): no host sync, no data-dependent shape. Traced here, launches and all, the launches
    recorded as graph nodes (nothing runs): DMAttn's windowed forward (selection included) and
    backward, and SSD's forward and backward with RoPE."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch.fx.experimental.proxy_tensor import make_fx

    dm = importlib.import_module("wmzoo.kernels.dmattn.triton_backend")
    ssd = importlib.import_module("wmzoo.kernels.ssd.triton_backend")
    t = 300
    cu = torch.tensor([0, 100, t], dtype=torch.int32) if varlen else None
    q, do = torch.randn(1, t, 4, 16), torch.randn(1, t, 4, 16)
    k, v, bias = torch.randn(1, t, 2, 16), torch.randn(1, t, 2, 16), torch.randn(1, 2, t)

    def dmattn_step(q, k, v, bias, do, *cu):
        cu = cu[0] if cu else None
        o, lse, lists = dm.forward_with_window(q, k, v, bias, cu, 40, 0.25)
        return dm.backward(do, q, k, v, bias, o, lse, *lists, cu, 40, 0.25)

    x, dy = torch.randn(1, t, 4, 32), torch.randn(1, t, 4, 32)
    dt, A, D = torch.rand(1, t, 4), -torch.rand(4), torch.randn(4)
    B, C = torch.randn(1, t, 2, 32), torch.randn(1, t, 2, 32)
    cos, sin = torch.rand(1, t, 8), torch.rand(1, t, 8)

    def ssd_step(x, dt, A, B, C, D, cos, sin, dy, *cu):
        cu = cu[0] if cu else None
        y, final = ssd.forward(x, dt, A, B, C, D, None, cu, cos, sin, 64)
        return ssd.backward(dy, final, x, dt, A, B, C, D, None, cu, cos, sin, 64)

    tail = () if cu is None else (cu,)  # traced as an input, as torch.compile sees it
    for fn, args, first in ((dmattn_step, (q, k, v, bias, do), "_block_sort_kernel"),
                            (ssd_step, (x, dt, A, B, C, D, cos, sin, dy), None)):
        graph = make_fx(fn, tracing_mode="symbolic")(*args, *tail).graph
        launched = [jit_function(kernel_side_table.get_kernel(n.kwargs["kernel_idx"])).__name__
                    for n in graph.nodes if n.target is torch.ops.higher_order.triton_kernel_wrapper_mutation]
        assert len(launched) >= 3, launched
        assert first is None or launched[0] == first, launched


def test_window_selection_buffers_survive_cse(hopper):
    """The selection's scan ping-pongs between two buffers that start as empty lists. Made by two
    identical torch.full calls, AOT autograd's CSE merged them into one node, so Inductor cloned
    the buffer before the first kernel wrote it, and torch 2.11 crashed on that clone
    (pytorch#181735; dmattn.md run 12). Traced with symbolic shapes, no fill may merge."""
    from torch._functorch.compile_utils import fx_graph_cse
    from torch.fx.experimental.proxy_tensor import make_fx

    select = importlib.import_module("wmzoo.kernels.dmattn.triton_select")
    layout_of = importlib.import_module("wmzoo.kernels.dmattn.triton_layout").block_layout
    bias = torch.randn(1, 2, 700)
    graph = make_fx(lambda b: select.select_window(b, 100, 128, layout_of(b.shape[-1], None, 128, b.device)),
                    tracing_mode="symbolic")(bias).graph

    def fills(g):
        return sum(n.target is torch.ops.aten.full.default for n in g.nodes)

    assert fills(graph) >= 4
    assert fills(fx_graph_cse(graph)) == fills(graph)
