"""Register-capped autotune configs (``maxnreg``), offered only where they compile.

At 8 warps a kernel that uses 255 registers per thread fills an SM's register file, so one
program runs per SM. Capped at 128, two programs share an SM and can hide each other's
latency, at the cost of spills. On the H200 a spilling config that fits two programs per SM
was the fastest for DMAttn's key-major backward (docs/benchmarks/dmattn.md, run 6), so the
latency-bound kernels offer one capped config and the autotuner decides by time.

A cap can also be too tight: ptxas then refuses the kernel ("Insufficient registers"), e.g. the
SSD forward at a 128 x 256 state tile or DMAttn at head dim 256. Triton 3.7's autotuner skips
such a config; 3.6's was not checked. So each kernel prunes its capped config outside the
tiles where it is known to compile (``keep_capped_where``), and tests/test_kernel_resources.py
compiles it at the largest tiles it is kept for.
"""

from __future__ import annotations

from collections.abc import Callable

TWO_PER_SM_REGISTERS = 128


def keep_capped_where(fits: Callable[[dict], bool]):
    """An ``early_config_prune`` for ``triton.autotune``: all configs where ``fits`` holds for
    the call's arguments (kernel arguments and constexprs by name), the uncapped ones elsewhere."""

    def prune(configs, named_args, **kwargs):
        if fits({**named_args, **kwargs}):
            return configs
        return [c for c in configs if not c.maxnreg]

    return prune
