"""Which config each autotuned Triton kernel settled on in this process.

The autotuner picks by time, so two runs of the same job may take different tiles and round
differently (the likeliest reason two MQAR runs of one seed diverged, docs/experiments/
mqar-budget-16pairs.notes.md). Results that depend on it record these choices beside them."""

from __future__ import annotations

import importlib

_MODULES = ("ssd.triton_fwd", "ssd.triton_bwd", "ssd.triton_segments", "dmattn.triton_fwd", "dmattn.triton_bwd")


def autotune_choices() -> dict[str, str]:
    """``{"module.kernel key": "config"}`` for every autotune key seen so far (empty before any
    Triton launch, on CPU without the interpreter, or where Triton is missing)."""
    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:
        return {}
    choices = {}
    for name in _MODULES:
        module = importlib.import_module(f"wmzoo.kernels.{name}")
        for attr, obj in vars(module).items():
            if isinstance(obj, Autotuner):
                for key, cfg in obj.cache.items():
                    choices[f"{name}.{attr} {key}"] = str(cfg)
    return choices
