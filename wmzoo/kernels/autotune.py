"""Autotuned Triton kernels: tuned by time, or pinned to one config for repeatable runs.

The autotuner picks a config by timing them, so two runs of one job may take different tiles
(or warps) and round differently: two MQAR runs of one seed diverged that way
(docs/experiments/mqar-budget-16pairs.notes.md). Every autotuned wmzoo kernel is therefore an
:class:`Autotuned`, which holds the kernel twice: autotuned over its configs, and pinned to its
first config. ``registry.launch`` runs the pinned one while
``torch.use_deterministic_algorithms(True)`` is on, so "deterministic" means what it means for
torch's own ops: the same inputs give the same bits on the same GPU and software.

Each kernel lists first a config that fits every input its backend accepts (one pipeline stage
where shared memory is tight; tests/test_kernel_resources.py checks the largest tiles), so the
pinned kernel never meets a config the autotuner would have dropped. It may be slower than the
tuned one. Under torch.compile Inductor tunes a user kernel's configs itself; the pinned
kernel has one, so there is nothing for it to choose.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import torch
import triton

_MODULES = ("ssd.triton_fwd", "ssd.triton_bwd", "ssd.triton_segments", "dmattn.triton_fwd", "dmattn.triton_bwd")


class Autotuned:
    """A ``@triton.jit`` kernel autotuned over ``configs`` by ``key``, and pinned to ``configs[0]``."""

    def __init__(self, kernel, configs: list[triton.Config], key: list[str]):
        self.tuned = triton.autotune(configs, key=key)(kernel)
        self.pinned = triton.autotune(configs[:1], key=key)(kernel)

    @property
    def fn(self):
        """The ``@triton.jit`` function (what tools that compile kernels without a GPU take)."""
        return self.tuned.fn

    @property
    def configs(self) -> list[triton.Config]:
        return self.tuned.configs

    def pick(self):
        """The kernel to launch now: pinned while torch's deterministic mode is on."""
        return self.pinned if torch.are_deterministic_algorithms_enabled() else self.tuned


def autotuned(configs: list[triton.Config], key: list[str]):
    """Decorator form of :class:`Autotuned`, in place of ``@triton.autotune``."""
    return lambda kernel: Autotuned(kernel, configs, key)


def autotune_choices() -> dict[str, str]:
    """``{"module.kernel key": "config"}`` for every autotune key the tuned kernels have seen so
    far (empty before any Triton launch, on CPU without the interpreter, and while only pinned
    kernels ran: those run their first config)."""
    choices = {}
    for name in _MODULES:
        module = importlib.import_module(f"wmzoo.kernels.{name}")
        for attr, obj in vars(module).items():
            if isinstance(obj, Autotuned):
                for key, cfg in obj.tuned.cache.items():
                    choices[f"{name}.{attr} {key}"] = str(cfg)
    return choices


@contextlib.contextmanager
def deterministic_mode(on: bool = True, warn_only: bool = True):
    """Repeatable runs (``--deterministic``): inside, torch's deterministic mode is on, by
    default warn-only (an op without a deterministic implementation warns instead of stopping a
    long run; tests pass False), with the cuBLAS workspace setting torch asks for (cuBLAS reads
    it when it starts: enter before any CUDA work). Every wmzoo kernel runs pinned to its first
    config (module docstring). The previous mode is restored on exit; ``on=False`` changes
    nothing."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def kernel_record() -> dict:
    """What a result carries about how its kernels ran: deterministic mode on or off, and the
    autotuner's choices when it made any (two runs of one seed differ when these do)."""
    record = {"deterministic": torch.are_deterministic_algorithms_enabled()}
    tuned = autotune_choices()
    if tuned:
        record["autotune"] = tuned
    return record
