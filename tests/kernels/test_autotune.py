"""kernels/autotune: every autotuned kernel runs tuned, or pinned to its first config while
torch's deterministic mode is on; autotune_choices reports what the tuned ones settled on (the
GPU fills the caches; here one is filled by hand, since the interpreter runs one config)."""

import importlib

import pytest
import torch
import triton

from wmzoo.kernels import registry
from wmzoo.kernels.autotune import _MODULES, Autotuned, autotune_choices


def every_autotuned_kernel():
    for name in _MODULES:
        for attr, obj in vars(importlib.import_module(f"wmzoo.kernels.{name}")).items():
            if isinstance(obj, Autotuned):
                yield f"{name}.{attr}", obj


def test_every_kernel_module_holds_autotuned_kernels():
    names = [name for name, _ in every_autotuned_kernel()]
    for module in _MODULES:  # a module listed here but holding none would report nothing
        assert any(n.startswith(module + ".") for n in names), module


def test_pinned_kernel_is_the_first_config_alone():
    for name, kernel in every_autotuned_kernel():
        assert [str(c) for c in kernel.pinned.configs] == [str(kernel.configs[0])], name
        assert kernel.pinned.fn is kernel.tuned.fn is kernel.fn, name


def test_launch_picks_tuned_normally_and_pinned_in_deterministic_mode(monkeypatch, deterministic):
    monkeypatch.setattr(torch.library, "wrap_triton", lambda k: k)  # see which kernel launch hands on
    for name, kernel in every_autotuned_kernel():
        assert registry.launch(kernel) is kernel.pinned, name
    torch.use_deterministic_algorithms(False)
    for name, kernel in every_autotuned_kernel():
        assert registry.launch(kernel) is kernel.tuned, name


def test_reports_each_cached_choice_by_module_kernel_and_key(monkeypatch):
    bwd = importlib.import_module("wmzoo.kernels.ssd.triton_bwd")
    cfg = triton.Config({}, num_warps=4, num_stages=1)
    monkeypatch.setattr(bwd._ssd_bwd_reverse_sweep.tuned, "cache", {(64, 128): cfg})
    choices = autotune_choices()
    assert choices["ssd.triton_bwd._ssd_bwd_reverse_sweep (64, 128)"] == str(cfg)
    assert not any(k.startswith("ssd.triton_bwd._ssd_bwd_forward_sweep") for k in choices)
