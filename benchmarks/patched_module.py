"""A patched copy of a wmzoo module, for the probes that time a kernel with a piece taken away
(ssd_rope_probe.py, dmattn_select_probe.py): the library keeps no switches for diagnostics."""

from __future__ import annotations

import importlib
import inspect
import os


def patched_copy(module, replacements, extra_source: str = "", tag: str = "probe"):
    """Import a copy of ``module`` with each (old, new) text of ``replacements`` replaced (each
    must occur) and ``extra_source`` appended. The copy is written beside the module, so its
    relative imports resolve, and removed once imported (Triton has read the kernels' source)."""
    src = inspect.getsource(module)
    for old, new in replacements:
        assert old in src, old
        src = src.replace(old, new)
    name = f"_{tag}_{module.__name__.rsplit('.', 1)[-1]}"
    path = os.path.join(os.path.dirname(module.__file__), name + ".py")
    with open(path, "w") as fh:
        fh.write(src + extra_source)
    try:
        return importlib.import_module(f"{module.__package__}.{name}")
    finally:
        os.remove(path)
