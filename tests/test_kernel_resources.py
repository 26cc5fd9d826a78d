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
