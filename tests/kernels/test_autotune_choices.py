"""autotune_choices reports what each autotuner settled on (the GPU fills the caches; here one
is filled by hand, since the interpreter runs a single config and never caches)."""

import importlib

import triton

from wmzoo.kernels.autotune_choices import autotune_choices


def test_reports_each_cached_choice_by_module_kernel_and_key(monkeypatch):
    bwd = importlib.import_module("wmzoo.kernels.ssd.triton_bwd")
    cfg = triton.Config({}, num_warps=4, num_stages=1)
    monkeypatch.setattr(bwd._ssd_bwd_reverse_sweep, "cache", {(64, 128): cfg})
    choices = autotune_choices()
    assert choices["ssd.triton_bwd._ssd_bwd_reverse_sweep (64, 128)"] == str(cfg)
    assert not any(k.startswith("ssd.triton_bwd._ssd_bwd_forward_sweep") for k in choices)
