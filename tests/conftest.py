"""Shared test settings: tolerances per dtype (stated once), markers, and the interpreter split.

The suite runs twice (README, "Tests"): once plainly (the reference path on CPU) and once with
TRITON_INTERPRET=1 for tests marked ``interpret`` (the Triton kernels run on CPU). Tests
marked ``gpu`` need CUDA and skip on CPU, saying so.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch._functorch.config as functorch_config

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# AOTAutograd's disk cache keys on the forward graph and can replay a backward compiled
# against an older schema of an op whose signature changed since (seen on torch 2.13 while
# developing): every compile test here compiles afresh.
functorch_config.enable_autograd_cache = False

# Max relative error ||out - ref|| / ||ref|| against a float64 reference, per input dtype.
REL_TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 2e-2,
}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are zero); NaN never passes."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff if denom == 0 else diff / denom


def assert_close(out, ref, dtype, name="output", factor=1.0):
    err = rel_err(out, ref)
    tol = REL_TOL[dtype] * factor
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e} ({dtype})"


def pytest_configure(config):
    config.addinivalue_line("markers", "interpret: runs Triton kernels on CPU; needs TRITON_INTERPRET=1")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    no_interp = pytest.mark.skip(reason="Triton-on-CPU test: runs in the TRITON_INTERPRET=1 pass of the suite")
    only_interp = pytest.mark.skip(reason="TRITON_INTERPRET=1 pass runs only tests marked interpret")
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none here (CPU machine)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        elif "interpret" in item.keywords and not INTERPRET:
            item.add_marker(no_interp)
        elif INTERPRET and "interpret" not in item.keywords:
            item.add_marker(only_interp)


@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms(True) (strict: a nondeterministic op raises) for one
    test, restored after it."""
    from wmzoo.kernels.autotune import deterministic_mode

    with deterministic_mode(warn_only=False):
        yield
