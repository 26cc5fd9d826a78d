"""Per-kernel GPU time of the SSD kernels under every launch config, at the benchmark's shape.

    python benchmarks/ssd_kernel_configs.py --out DIR [--rope 0,64]

The autotuner keeps the fastest config of each kernel, and bench_ssd.py reports one number per
op; neither says how much each kernel takes, nor how far its configs are apart. This forces one
(num_warps, num_stages) at a time on every SSD kernel, runs forward+backward at B4 T4096 H64
P64 N128 (g = h, bf16), and sums each kernel's device time over a few calls (torch.profiler).
Read it beside benchmarks/kernel_resources.py's registers and spills per config: the sweeps
are chains of dependent chunk steps, and whether their time follows spills or occupancy (how
many programs fit an SM) decides the backward's next form (docs/benchmarks/NOTES.md).
Writes kernel_configs.json: {rope: {config: {kernel: ms per call}}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wmzoo.kernels.rope.reference import rope_tables  # noqa: E402
from wmzoo.kernels.ssd import ssd  # noqa: E402
from wmzoo.kernels.ssd import triton_bwd, triton_fwd  # noqa: E402

CONFIGS = [(4, 1), (8, 1), (4, 2), (8, 2)]
KERNELS = {"fwd": triton_fwd._ssd_fwd_kernel, "bwd_forward_sweep": triton_bwd._ssd_bwd_forward_sweep,
           "bwd_chunk_local": triton_bwd._ssd_bwd_chunk_local, "bwd_reverse_sweep": triton_bwd._ssd_bwd_reverse_sweep}
CALLS = 5


def kernel_times(step) -> dict:
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            step()
        torch.cuda.synchronize()
    times = {}
    for e in prof.key_averages():
        if e.device_time_total > 0:
            times[e.key[:60]] = round(e.device_time_total / 1e3 / CALLS, 4)
    return dict(sorted(times.items(), key=lambda kv: -kv[1])[:8])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--rope", default="0,64", help="comma-separated RoPE dims (0: none)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    b, t, h, p, n = 4, 4096, 64, 64, 128
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, t, h, p, device="cuda", generator=gen).bfloat16().requires_grad_(True)
    dt = (torch.rand(b, t, h, device="cuda", generator=gen) * 0.1 + 0.01).requires_grad_(True)
    A = (-torch.rand(h, device="cuda", generator=gen) - 0.5).requires_grad_(True)
    B = (torch.randn(b, t, h, n, device="cuda", generator=gen) * n**-0.5).bfloat16().requires_grad_(True)
    C = (torch.randn(b, t, h, n, device="cuda", generator=gen) * n**-0.5).bfloat16().requires_grad_(True)
    dy = torch.randn_like(x)
    results = {"env": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}}
    print(results["env"], flush=True)
    originals = {name: k.tuned.configs for name, k in KERNELS.items()}
    for r in (int(v) for v in args.rope.split(",")):
        cos, sin = rope_tables(torch.arange(t, device="cuda").expand(b, t), r) if r else (None, None)

        def step(cos=cos, sin=sin):
            torch.autograd.grad(ssd(x, dt, A, B, C, rope_cos=cos, rope_sin=sin), (x, dt, A, B, C), dy)

        per_config = results.setdefault(f"rope{r}", {})
        for warps, stages in CONFIGS:
            for k in KERNELS.values():
                k.tuned.configs = [triton.Config({}, num_warps=warps, num_stages=stages)]
                k.tuned.cache.clear()
            try:
                per_config[f"{warps},{stages}"] = kernel_times(step)
            except Exception as e:  # e.g. out of shared memory at this config: reported, not fatal
                per_config[f"{warps},{stages}"] = {"error": repr(e)[:200]}
            print(f"rope {r} config ({warps}, {stages}):", per_config[f"{warps},{stages}"], flush=True)
            with open(os.path.join(args.out, "kernel_configs.json"), "w") as fh:
                json.dump(results, fh, indent=1)
    for name, k in KERNELS.items():
        k.tuned.configs = originals[name]


if __name__ == "__main__":
    main()
