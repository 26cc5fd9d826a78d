"""Which launch configs (num_warps, num_stages) of the SSD kernels run correctly on this GPU.

    python benchmarks/ssd_probe_configs.py --out DIR

Triton 3.6 on Hopper can compile some configs of kernels with several small tl.dot shapes into
code that faults (an illegal memory access that poisons the CUDA context), so every (config,
case) runs in its own process. A case passes when the forward and every gradient match the
fp32 reference within bf16 tolerance. Writes probe.json: {config: all cases passed}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CONFIGS = [(4, 1), (8, 1), (4, 2), (8, 2), (4, 3)]
# (b, t, h, p, n, g, rope dim). Before tiles were padded to triton_backend.MIN_TILE_CUDA these
# gave p blocks of 16 (few programs), 16, 32 and 64 and RoPE halves of 16 and 32.
CASES = {"few_programs_rope32": (2, 1000, 8, 64, 128, 8, 32), "few_programs_n64": (2, 300, 8, 64, 64, 1, 0),
         "rope64": (4, 512, 64, 64, 128, 64, 64), "no_rope": (8, 512, 64, 64, 128, 64, 0)}


def run_one(case: str, warps: int, stages: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch
    import triton

    from wmzoo.kernels.rope.reference import rope_tables
    from wmzoo.kernels.ssd import ssd, ssd_reference
    from wmzoo.kernels.ssd import triton_bwd, triton_fwd

    for kernel in (triton_fwd._ssd_fwd_kernel, triton_bwd._ssd_bwd_forward_sweep, triton_bwd._ssd_bwd_reverse_sweep):
        kernel.tuned.configs = [triton.Config({}, num_warps=warps, num_stages=stages)]
    b, t, h, p, n, g, r = CASES[case]
    dev = "cuda"
    torch.manual_seed(0)
    x = torch.randn(b, t, h, p, device=dev).bfloat16().requires_grad_()
    dt = (torch.rand(b, t, h, device=dev) * 0.1 + 0.01).requires_grad_()
    A = (-torch.rand(h, device=dev) - 0.5).requires_grad_()
    B = (torch.randn(b, t, g, n, device=dev) * n ** -0.5).bfloat16().requires_grad_()
    C = (torch.randn(b, t, g, n, device=dev) * n ** -0.5).bfloat16().requires_grad_()
    cos, sin = rope_tables(torch.arange(t, device=dev).expand(b, t), r) if r else (None, None)
    leaves = [x, dt, A, B, C]
    y = ssd(*leaves, rope_cos=cos, rope_sin=sin)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)
    ref_leaves = [z.detach().float().requires_grad_() for z in leaves]
    yr = ssd_reference(*ref_leaves, rope_cos=cos, rope_sin=sin)[0]
    ref_grads = torch.autograd.grad(yr, ref_leaves, dy.float())
    errs = [((a.float() - e).norm() / e.norm()).item() for a, e in zip([y, *grads], [yr, *ref_grads])]
    print("errors", [f"{e:.1e}" for e in errs])
    sys.exit(0 if max(errs) < 2e-2 else 3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--one", nargs=3)
    args = ap.parse_args()
    if args.one:
        run_one(args.one[0], int(args.one[1]), int(args.one[2]))
        return
    runs = {(w, s, case): subprocess.Popen([sys.executable, __file__, "--one", case, str(w), str(s)],
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for w, s in CONFIGS for case in CASES}
    passed = {f"{w},{s}": True for w, s in CONFIGS}
    for (w, s, case), proc in runs.items():
        out, _ = proc.communicate(timeout=240)
        ok = proc.returncode == 0
        passed[f"{w},{s}"] &= ok
        tail = [line for line in out.splitlines() if "errors" in line or "Error" in line][-1:]
        print(f"probe warps={w} stages={s} {case}: {'ok' if ok else f'FAILED rc={proc.returncode}'} {tail}", flush=True)
    print("probe summary", passed, flush=True)
    with open(os.path.join(args.out, "probe.json"), "w") as fh:
        json.dump(passed, fh)


if __name__ == "__main__":
    main()
