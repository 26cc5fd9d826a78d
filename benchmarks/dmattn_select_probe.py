"""Where the DMAttn window selection's time goes: its kernels timed with a piece of the theta
kernel taken away.

    python benchmarks/dmattn_select_probe.py                   (every variant, one process each)
    python benchmarks/dmattn_select_probe.py --variant NAME    (one variant)

Two changes aimed at the theta kernel (no K binary search; tensor-core running counts) were
timed slower than predicted and reverted (dmattn.md runs 13 and 14), so this splits its time
before a third. Each variant is a copy of ``triton_select`` with one piece replaced, written
beside it (its relative imports resolve) and removed once imported; ``base`` and ``search4``
are correct (their printed sums of theta, count and the kept lists agree), the others not:

- ``base``: the library's selection;
- ``no_search``: theta's binary search of K (each block key's count of K entries above it)
  replaced by zeros;
- ``no_scans``: theta's two M x M running counts (tl.cumsum) replaced by the flags themselves;
- ``search4``: every sorted-list search (theta's and the scan's merges) 4-ary: three probes
  loaded together per step, half the dependent steps of the binary search (not yet timed;
  ``no_search`` bounds what theta's part can save).

At B1 H16 T16384 w 1024 on the GPU (dmattn.md run 14, an H100): base 0.260 ms of theta,
no_search 0.191, no_scans 0.153; the selection's kernels 0.594 ms in all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wmzoo.kernels.dmattn import triton_select  # noqa: E402
from wmzoo.kernels.dmattn.triton_layout import block_layout  # noqa: E402
from wmzoo.kernels.registry import direct_launches  # noqa: E402

from patched_module import patched_copy  # noqa: E402  (benchmarks/, the script's own folder)

VARIANTS = {
    "base": [],
    "no_search": [("n_k_above = _count_above(yb, yi, cur, cur_b, W, LOG)",
                   "n_k_above = tl.zeros([BLOCK_M], dtype=tl.int32)")],
    "no_scans": [("tl.cumsum(A.to(tl.int32), axis=1)", "A.to(tl.int32)"),
                 ("tl.cumsum(y_over_c.to(tl.int32), axis=1)", "y_over_c.to(tl.int32)")],
    # the library's search renamed away; the 4-ary one appended under its name (SEARCH4)
    "search4": [("def _count_above(", "def _count_above_binary(")],
}
# appended to the search4 copy (Triton resolves a kernel's globals when it compiles it)
SEARCH4 = """

@triton.jit
def _above_at(lst, lst_b, pos, live, x_b, x_i):
    m_i = tl.load(lst + pos, mask=live, other=-1)
    m_b = tl.load(lst_b + pos, mask=live & (m_i >= 0), other=0.0)
    return (m_i >= 0) & ranks_above(m_b, m_i, x_b, x_i)


@triton.jit
def _count_above(x_b, x_i, lst, lst_b, n, steps):
    # 4-ary: [lo, hi) shrinks to at most a quarter per step, so ceil(bit_length(n) / 2) steps
    lo = tl.zeros(x_i.shape, dtype=tl.int32)
    hi = tl.zeros(x_i.shape, dtype=tl.int32) + n
    for _ in range((steps + 1) // 2):
        live = lo < hi
        span = hi - lo
        p1 = lo + span // 4
        p2 = lo + span // 2
        p3 = lo + (3 * span) // 4
        a1 = _above_at(lst, lst_b, p1, live, x_b, x_i)
        a2 = _above_at(lst, lst_b, p2, live, x_b, x_i)
        a3 = _above_at(lst, lst_b, p3, live, x_b, x_i)
        new_lo = tl.where(a3, p3 + 1, tl.where(a2, p2 + 1, tl.where(a1, p1 + 1, lo)))
        new_hi = tl.where(a3, hi, tl.where(a2, p3, tl.where(a1, p2, p1)))
        lo = tl.where(live, new_lo, lo)
        hi = tl.where(live, new_hi, hi)
    return lo
"""
SHAPE = (1, 16, 16384, 1024)  # b, kv heads, t, keep_window: bench_dmattn's long shape, w 1024
BLOCK_M = 128  # the GPU's query block (triton_backend.BLOCK_M)


def patched_select(name: str):
    """select_window from a copy of triton_select with the variant's replacements."""
    extra = SEARCH4 if name == "search4" else ""
    return patched_copy(triton_select, VARIANTS[name], extra, tag=f"probe_{name}").select_window


def run_variant(name: str) -> dict:
    select = patched_select(name)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    b, h, t, w = SHAPE if dev == "cuda" else (1, 2, 256, 64)
    block_m = BLOCK_M if dev == "cuda" else 32
    bias = torch.randn(b, h, t, device=dev, generator=torch.Generator(device=dev).manual_seed(0))
    layout = block_layout(t, None, block_m, bias.device)
    with direct_launches():
        kept, _, theta, count = select(bias, w, block_m, layout)
        # kept lists weighted by slot, so that an entry in the wrong slot changes the sum
        slots = torch.arange(1, w + 1, device=dev)
        result = {"theta_sum": int(theta.sum()), "count_sum": int(count.sum()),
                  "kept_sum": int((kept.long() * slots).sum())}
        if dev != "cuda":
            return result
        for _ in range(3):
            select(bias, w, block_m, layout)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                select(bias, w, block_m, layout)
            torch.cuda.synchronize()
    events = prof.key_averages()
    theta_ev = next(e for e in events if e.key == "_theta_kernel")
    result["theta_ms"] = round(theta_ev.self_device_time_total / theta_ev.count / 1000, 4)
    result["selection_ms"] = round(sum(e.self_device_time_total for e in events) / 10 / 1000, 4)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=list(VARIANTS))
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant)), flush=True)
        return
    for name in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--variant", name], capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        print(name, lines[-1] if proc.returncode == 0 and lines else proc.stderr[-300:], flush=True)


if __name__ == "__main__":
    main()
