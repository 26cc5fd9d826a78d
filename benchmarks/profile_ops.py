"""Where the time goes inside wmzoo's ops: per-kernel GPU time and the host time per call.

    python benchmarks/profile_ops.py [--sections ssd,dmattn] [--device cuda]

The benchmarks (bench_ssd.py, bench_dmattn.py) give one number per op; this script says which
kernels make it up (torch.profiler, after warm-up), e.g. the SSD backward's two sweeps vs the
RoPE transpose pass, or the DMAttn window selection's scan launches vs the attention, and
whether a call is bound by the host (host time per call far above the kernels' sum), as the
DMAttn decode path looked in run 4 (0.29 ms for ~17 MB of cache). Prints one table per case,
then on CUDA the config every autotuned kernel chose (to read beside
benchmarks/kernel_resources.py's spills per config).
On CPU it runs tiny shapes through whatever path the op takes there (a check of the script).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wmzoo.kernels.dmattn import DMAttnCache, dmattn  # noqa: E402
from wmzoo.kernels.rope.reference import rope_tables  # noqa: E402
from wmzoo.kernels.ssd import ssd  # noqa: E402

CALLS = 5


def report(name: str, fn, device: torch.device) -> None:
    """Warm up, then profile CALLS calls of fn: the top kernels by device time, and the host
    wall time per call beside the device time per call."""
    for _ in range(3):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(CALLS):
            fn()
        sync()
    wall_ms = (time.perf_counter() - start) * 1e3 / CALLS
    events = prof.key_averages()
    on_device = [e for e in events if e.device_time_total > 0 and e.device_type.name == "CUDA"]
    device_ms = sum(e.device_time_total for e in on_device) / 1e3 / CALLS
    print(f"\n== {name}: {wall_ms:.3f} ms wall per call (profiler on), {device_ms:.3f} ms of kernels per call")
    sort = "device_time_total" if on_device else "cpu_time_total"
    print(events.table(sort_by=sort, row_limit=24, max_name_column_width=60))


def ssd_cases(device: torch.device, tiny: bool):
    b, t, h, p, n = (1, 200, 4, 16, 32) if tiny else (4, 4096, 64, 64, 128)
    dtype = torch.float32 if tiny else torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(b, t, h, p, device=device, generator=gen).to(dtype).requires_grad_(True)
    dt = (torch.rand(b, t, h, device=device, generator=gen) * 0.1 + 0.01).requires_grad_(True)
    A = (-torch.rand(h, device=device, generator=gen) - 0.5).requires_grad_(True)
    B = (torch.randn(b, t, h, n, device=device, generator=gen) * n**-0.5).to(dtype).requires_grad_(True)
    C = (torch.randn(b, t, h, n, device=device, generator=gen) * n**-0.5).to(dtype).requires_grad_(True)
    cos, sin = rope_tables(torch.arange(t, device=device).expand(b, t), n // 2)
    dy = torch.randn_like(x)
    for rope in (False, True):
        rc, rs = (cos, sin) if rope else (None, None)

        def step(rc=rc, rs=rs):
            torch.autograd.grad(ssd(x, dt, A, B, C, rope_cos=rc, rope_sin=rs), (x, dt, A, B, C), dy)

        yield f"ssd fwd+bwd B{b} T{t} H{h} P{p} N{n}{' rope ' + str(n // 2) if rope else ''}", step


def dmattn_cases(device: torch.device, tiny: bool):
    b, h, t, d, w = (1, 2, 300, 32, 64) if tiny else (1, 16, 16384, 128, 1024)
    dtype = torch.float32 if tiny else torch.bfloat16
    q, k, v = (torch.randn(b, t, h, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    bias = torch.randn(b, h, t, device=device, dtype=dtype, requires_grad=True)
    do = torch.randn_like(q)

    def step():
        torch.autograd.grad(dmattn(q, k, v, bias, keep_window=w), (q, k, v, bias), do)

    yield f"dmattn fwd+bwd B{b} H{h} T{t} D{d} w{w}", step

    context, window = (512, 64) if tiny else (65536, 2048)
    cache = DMAttnCache.empty(b, h, d, keep_window=window, dtype=dtype, device=device)
    with torch.no_grad():
        for s in range(0, context, 4096):
            m = min(4096, context - s)
            cache.update(torch.randn(b, m, h, d, device=device, dtype=dtype),
                         torch.randn(b, m, h, d, device=device, dtype=dtype),
                         torch.randn(b, h, m, device=device, dtype=dtype))
        q1 = torch.randn(b, 1, h, d, device=device, dtype=dtype)
        yield f"dmattn decode attend, {context} context, w {window}", lambda: cache.attend(q1)


def chosen_configs() -> None:
    """The config each autotuned kernel settled on, per autotune key (what the profile ran)."""
    from wmzoo.kernels.autotune import autotune_choices

    print("\n== autotune choices")
    for kernel_key, cfg in autotune_choices().items():
        print(f"{kernel_key}: {cfg}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default="ssd,dmattn")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    tiny = device.type != "cuda"
    print({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__})
    cases = {"ssd": ssd_cases, "dmattn": dmattn_cases}
    for section in args.sections.split(","):
        if section not in cases:
            raise SystemExit(f"--sections: expected a comma-separated subset of {sorted(cases)}, got {section!r}")
        for name, fn in cases[section](device, tiny):
            report(name, fn, device)
    if device.type == "cuda":
        chosen_configs()


if __name__ == "__main__":
    main()
