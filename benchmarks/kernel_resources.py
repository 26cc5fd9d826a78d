"""Registers, spills and shared memory of wmzoo's Triton kernels on Hopper, computed on any machine.

    python benchmarks/kernel_resources.py [--kernels ssd,dmattn] [--arch 90]

Each kernel is compiled for sm_90a by Triton (no GPU needed) with every config of its autotune
list, then ``ptxas -v`` (the one shipped with Triton) reports registers per thread, spill
stores / loads and the stack frame; Triton's metadata gives the shared memory. Shapes are the
benchmarks' tiles (SSD p 64, n 128, chunk 64, bf16; DMAttn d 128, bf16 q / k / v, fp32 bias).
A config whose shared memory exceeds the H200's 227 KB is marked: the autotuner drops it, and
when every config is dropped the op fails (as the SSD forward did with RoPE at n 128, ssd.md
run 8).

Why this exists: a kernel's time on the GPU moved in ways the loads alone did not predict (three
RoPE load forms, ssd.md run 8); spills are the first thing to check, and checking them costs no
device time. What it cannot do: rank configs by speed. On the H200 DMAttn's key-major backward
runs fastest at a 4-warp config that spills 2.3 KB per thread; the spill-free 8-warp configs
were 1.37-1.53x slower (dmattn.md run 6). Use it to catch configs that cannot run (shared
memory) or spill grossly, and time the rest on the GPU.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

H200_SHARED = 232448  # bytes of shared memory per block (opt-in maximum)
# DMAttn's bias (b_ptr) and its gradient buffer (db_ptr) stay fp32, as bench_dmattn passes them
# (the H200's autotune keys of run 6 show a float32 bias).
BF16_PTRS = {"x_ptr", "B_ptr", "C_ptr", "dy_ptr", "y_ptr", "dx_ptr", "dB_ptr", "dC_ptr",
             "q_ptr", "k_ptr", "v_ptr", "o_ptr", "do_ptr", "dq_ptr", "dk_ptr", "dv_ptr"}
INT_PTRS = {"cu_ptr", "info_ptr", "kept_ptr", "theta_ptr", "count_ptr", "order_ptr", "last_ptr"}


def ptxas() -> str:
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    path = bundled if os.path.exists(bundled) else shutil.which("ptxas")
    if path is None:
        raise SystemExit("ptxas: not found (neither in the triton package nor on PATH)")
    return path


def signature(fn, const: dict) -> dict:
    """Argument types by name: bf16 tensors for the activations, int32 for index tables and
    lengths, fp32 for everything else (states, tables, statistics, scales)."""
    sig = {}
    for name in fn.arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*bf16" if name in BF16_PTRS else "*i32" if name in INT_PTRS else "*fp32"
        else:
            sig[name] = "fp32" if "scale" in name else "i32"
    return sig


def resources(autotuned, const: dict, arch: int) -> list[tuple[str, str]]:
    """(config, report) per autotune config of ``autotuned`` with the constexprs ``const``."""
    fn = autotuned.fn
    rows = []
    for cfg in autotuned.configs:
        full = {**const, **cfg.kwargs}
        src = ASTSource(fn, signature(fn, full), constexprs={(fn.arg_names.index(k),): v for k, v in full.items()})
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        with tempfile.TemporaryDirectory() as tmp:
            ptx = os.path.join(tmp, "k.ptx")
            with open(ptx, "w") as f:
                f.write(kernel.asm["ptx"])
            out = subprocess.run([ptxas(), f"-arch=sm_{arch}a", "-v", ptx, "-o", os.path.join(tmp, "k.cubin")],
                                 check=False, capture_output=True, text=True).stderr
        regs = re.search(r"Used (\d+) registers", out)
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
        shared = kernel.metadata.shared
        name = f"{cfg.kwargs or ''} warps {cfg.num_warps} stages {cfg.num_stages}".strip()
        report = (f"{regs.group(1) if regs else '?'} regs, spills {spill.group(1)} / {spill.group(2)} B"
                  if spill else out.strip()[-200:])
        report += f", shared {shared / 1024:.0f} KB" + (" (over the H200's limit)" if shared > H200_SHARED else "")
        # Static counts (a loop body counts once): layout conversions in the TTGIR and CTA
        # barriers in the PTX, since run 10's profile showed barrier stalls second only to
        # loads. Not a speed proxy by themselves: run 11's faster reverse sweep has 19
        # conversions against 17 and 68 barriers against 70; its spills fell by a quarter.
        conversions = len(re.findall(r"ttg\.convert_layout", kernel.asm["ttgir"]))
        barriers = len(re.findall(r"\bbar(?:rier)?\.sync", kernel.asm["ptx"]))
        report += f", {conversions} layout conversions, {barriers} barriers"
        rows.append((name, report))
    return rows


def ssd_cases():
    from wmzoo.kernels.ssd.triton_bwd import (
        _ssd_bwd_chunk_local,
        _ssd_bwd_forward_sweep,
        _ssd_bwd_reverse_sweep,
    )
    from wmzoo.kernels.ssd.triton_fwd import _ssd_fwd_kernel

    tiles = dict(Q=64, BLOCK_P=64, NB=128, DOT=1, HAS_CU=False, PLAIN=False, PB=64)
    split = dict(NB=64, PLAIN=True)  # the library's tiles at r 64 of n 128: rotated and plain channels
    for rope in (False, True):
        tag = "RoPE" if rope else "no RoPE"
        fwd = dict(tiles, ROPE=rope, HAS_D=True, HAS_H0=False, WRITE_FINAL=True, PAIRED=False)
        sweep = dict(tiles, ROPE=rope, HAS_DFINAL=False, HAS_H0=False, PAIRED=False)
        reverse = dict(tiles, ROPE=rope, LOCAL=not rope, HAS_DFINAL=False, HAS_D=True, PAIRED=False)
        yield f"SSD forward, {tag}", _ssd_fwd_kernel, fwd
        yield f"SSD backward forward sweep, {tag}", _ssd_bwd_forward_sweep, sweep
        if not rope:  # with RoPE the reverse sweep computes the in-chunk terms itself
            yield f"SSD backward chunk-local terms, {tag}", _ssd_bwd_chunk_local, dict(
                {k: v for k, v in tiles.items() if k not in ("PLAIN", "PB")})
        yield f"SSD backward reverse sweep, {tag}", _ssd_bwd_reverse_sweep, reverse
        if rope:
            yield "SSD forward, RoPE 64 of 128, split tiles", _ssd_fwd_kernel, dict(fwd, **split)
            yield "SSD forward, RoPE 128 of 128, paired halves", _ssd_fwd_kernel, dict(fwd, **split, PAIRED=True)
            yield "SSD backward forward sweep, RoPE 64 of 128, split tiles", _ssd_bwd_forward_sweep, dict(sweep, **split)
            yield "SSD backward reverse sweep, RoPE 64 of 128, split tiles", _ssd_bwd_reverse_sweep, dict(reverse, **split)
            yield ("SSD backward forward sweep, RoPE 128 of 128, paired halves", _ssd_bwd_forward_sweep,
                   dict(sweep, **split, PAIRED=True))
            yield ("SSD backward reverse sweep, RoPE 128 of 128, paired halves", _ssd_bwd_reverse_sweep,
                   dict(reverse, **split, PAIRED=True))


def dmattn_cases():
    import importlib

    fwd = importlib.import_module("wmzoo.kernels.dmattn.triton_fwd")
    bwd = importlib.import_module("wmzoo.kernels.dmattn.triton_bwd")
    flags = dict(VARLEN=False, BLOCK_D=128, UPCAST=False, IEEE=False, EVEN=True)
    for window in (False, True):
        yield f"DMAttn forward, window {window}", fwd.fwd_kernel, dict(flags, WINDOW=window, BLOCK_M=128)
    yield "DMAttn backward dq, no window", bwd.bwd_q_kernel, dict(flags, WINDOW=False, BLOCK_M=128)
    yield "DMAttn backward dk dv dbias (key-major), no window", bwd.bwd_kv_kernel, flags
    yield ("DMAttn backward dk dv dbias (key-major, sorted key tiles), window", bwd.bwd_kv_window_kernel,
           dict(BLOCK_D=128, UPCAST=False, IEEE=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", default="ssd,dmattn")
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("TRITON_INTERPRET=1: unset it; this compiles for the GPU (no GPU needed)")
    print({"triton": triton.__version__, "arch": f"sm_{args.arch}a", "ptxas": ptxas()})
    cases = {"ssd": ssd_cases, "dmattn": dmattn_cases}
    for group in args.kernels.split(","):
        if group not in cases:
            raise SystemExit(f"--kernels: expected a comma-separated subset of {sorted(cases)}, got {group!r}")
        for title, kernel, const in cases[group]():
            print(f"\n{title}")
            for name, report in resources(kernel, const, args.arch):
                print(f"  {name:<40} {report}", flush=True)


if __name__ == "__main__":
    main()
