"""benchmarks/kernel_resources.py: registers and spills for sm_90a from a CPU-only machine."""

import os
import sys
import types

import pytest
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import kernel_resources  # noqa: E402

from wmzoo.kernels.ssd.triton_common import _unrotate_kernel  # noqa: E402


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles for the GPU; not under the interpreter")
def test_reports_registers_spills_and_shared_memory_of_a_kernel():
    """A small elementwise kernel (RoPE's transpose) compiled for sm_90a by Triton and ptxas:
    the report carries a register count and spill bytes parsed from ptxas -v, for each config."""
    configs = [triton.Config({}, num_warps=4, num_stages=1), triton.Config({}, num_warps=8, num_stages=1)]
    rows = kernel_resources.resources(types.SimpleNamespace(fn=_unrotate_kernel, configs=configs),
                                      {"BLOCK_T": 64, "HB": 32}, 90)
    assert [name for name, _ in rows] == ["warps 4 stages 1", "warps 8 stages 1"]
    for _, report in rows:
        regs = int(report.split(" regs")[0])
        assert 0 < regs <= 255, report
        assert "spills 0 / 0 B" in report, report  # an elementwise kernel needs no spills
        assert "shared" in report and "over the H200" not in report, report


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles for the GPU; not under the interpreter")
def test_ssd_kernels_have_a_config_that_fits_the_h200_at_the_largest_tiles():
    """The autotuner drops configs that need more shared memory than the GPU has, but needs
    one that fits: at the largest tiles the op takes (p 128, n 256, RoPE on) the first config
    of the SSD chunk kernels (one pipeline stage) must fit the H200's 227 KB. An earlier RoPE
    load form failed this at n 128 on the H200 in every config (docs/benchmarks/ssd.md run 8).
    The forward and the two sweeps (also with split rotated / plain tiles and with paired halves)
    and the backward's chunk-local kernel (first configs measured at 128, 112, 144
    and 112 KB); the segment kernels' first configs need 64 KB and are left out to keep this
    test to about four minutes (2 cores, no Triton cache)."""
    from wmzoo.kernels.ssd.triton_backend import MAX_N, MAX_P
    from wmzoo.kernels.ssd.triton_bwd import _ssd_bwd_chunk_local, _ssd_bwd_forward_sweep, _ssd_bwd_reverse_sweep
    from wmzoo.kernels.ssd.triton_fwd import _ssd_fwd_kernel

    tiles = {"Q": 64, "BLOCK_P": MAX_P, "NB": MAX_N, "DOT": 1, "HAS_CU": False, "ROPE": True}
    fwd = {**tiles, "HAS_D": True, "HAS_H0": True, "WRITE_FINAL": True, "PLAIN": False, "PB": 64, "PAIRED": False}
    split = {"NB": MAX_N // 2, "PLAIN": True, "PB": MAX_N // 2}  # RoPE on half the channels: two tiles
    sweep = {**tiles, "HAS_DFINAL": True, "HAS_H0": True, "PAIRED": False}
    reverse = {**tiles, "HAS_DFINAL": True, "HAS_D": True, "LOCAL": False, "PAIRED": False}
    cases = [(_ssd_fwd_kernel, fwd),
             (_ssd_fwd_kernel, {**fwd, **split}),
             (_ssd_fwd_kernel, {**fwd, **split, "PAIRED": True}),  # RoPE on every channel: paired halves
             (_ssd_bwd_forward_sweep, {**sweep, "PLAIN": False, "PB": 64}),
             (_ssd_bwd_reverse_sweep, {**reverse, "PLAIN": False, "PB": 64}),
             (_ssd_bwd_forward_sweep, {**sweep, **split}),
             (_ssd_bwd_reverse_sweep, {**reverse, **split}),
             (_ssd_bwd_forward_sweep, {**sweep, **split, "PAIRED": True}),
             (_ssd_bwd_reverse_sweep, {**reverse, **split, "PAIRED": True}),
             # launched only without RoPE
             (_ssd_bwd_chunk_local, {k: v for k, v in tiles.items() if k != "ROPE"})]
    for kernel, consts in cases:
        first = types.SimpleNamespace(fn=kernel.fn, configs=kernel.configs[:1])
        [(name, report)] = kernel_resources.resources(first, consts, 90)
        assert "over the H200" not in report, f"{kernel.fn.__name__} ({name}): {report}"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles for the GPU; not under the interpreter")
def test_dmattn_first_configs_fit_the_h200_at_the_largest_head_dim():
    """Deterministic mode pins each kernel to its first config (kernels/autotune), with no
    autotuner to drop one that does not fit: at head dim 256 (the largest the backend takes)
    the first configs of the forward, dq and both dk / dv / dbias kernels must fit the H200's
    shared memory (measured at 97, 192, 96 and 128 KB; about 50 s on 2 cores)."""
    import importlib

    from wmzoo.kernels.dmattn.triton_backend import MAX_HEAD_DIM

    fwd = importlib.import_module("wmzoo.kernels.dmattn.triton_fwd")
    bwd = importlib.import_module("wmzoo.kernels.dmattn.triton_bwd")
    flags = dict(VARLEN=False, BLOCK_D=MAX_HEAD_DIM, UPCAST=False, IEEE=False, EVEN=True)
    cases = [(fwd.fwd_kernel, dict(flags, WINDOW=True, BLOCK_M=128)),
             (bwd.bwd_q_kernel, dict(flags, WINDOW=False, BLOCK_M=128)),
             (bwd.bwd_kv_kernel, flags),
             (bwd.bwd_kv_window_kernel, dict(BLOCK_D=MAX_HEAD_DIM, UPCAST=False, IEEE=False))]
    for kernel, const in cases:
        first = types.SimpleNamespace(fn=kernel.fn, configs=kernel.configs[:1])
        [(name, report)] = kernel_resources.resources(first, const, 90)
        assert "over the H200" not in report, f"{kernel.fn.__name__} ({name}): {report}"
