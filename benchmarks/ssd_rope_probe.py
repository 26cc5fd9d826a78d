"""Where the SSD forward's RoPE time goes: the forward kernel timed with diagnostic load forms.

    python benchmarks/ssd_rope_probe.py --out DIR            (every variant, one process each)
    python benchmarks/ssd_rope_probe.py --variant NAME       (one variant, prints its time)
    python benchmarks/ssd_rope_probe.py --train [--variant]  (forward and backward)

RoPE r 64 takes the forward at B4 T4096 H64 P64 N128 from 0.43 to 1.22 ms (ssd.md run 12), and
the three load forms timed in run 8 did not say why (their predictions were off by up to 5x).
``rope``, ``rope_single`` and ``prerotate`` compute one function (r 64), and the
``rope_full*`` variants another (r = n): their printed sums agree; the diagnostics replace
``load_rotated`` in the forward kernel's module before its first compile, so one piece of the
rotation is taken away at a time (timed, never used):

- ``rope``: the library's form: at r 64 of n 128 the rotated and the plain channels as two
  tiles (triton_fwd, PLAIN; the backward's sweeps too), the rotated ones gathered as below;
- ``rope_full_paired`` / ``rope_full``: RoPE on every channel (r = n = 128, the SSD block's
  default), the kernels cut into the two halves that turn against each other (the library's
  form, triton_backend.PAIRED_ROPE_FORWARD / _BACKWARD) / gathered in one tile as in
  ``rope_single``; ``rope_full_paired_fwd`` (with ``--train``): paired in the forward only;
- ``rope_single``: one tile over all n, rotated where channel < r (triton_fwd, the library's
  form at r 64 until the fifteenth session), forward and backward, partner channels and
  cos / sin rows gathered per operand; every diagnostic below patches this kernel;
- ``none``: no rotation (the RoPE-free kernel);
- ``const_tables``: partner channels loaded, cos / sin constants: what the table loads cost;
- ``no_partner``: tables loaded, the partner channel replaced by the channel itself: what the
  second load of B / C costs;
- ``fma_only``: no load beyond the plain one, the rotation's arithmetic on the loaded tile with
  constants: what putting any elementwise step between the loads and the dots costs;
- ``fma_b_only`` / ``fma_c_only``: the same on B alone / C alone, the other loaded plain. In the
  forward C~ is only ever the left operand of its products and B~ the right one (which the
  tensor cores read from shared memory), so these say which side of a product to rotate.
  (Their outputs are equal: constant arithmetic scales channels, and a channel scale gives the
  same products on either side.)
- ``prerotate``: not a diagnostic but the design issue 4 rules out, for comparison: B and C
  rotated by one compiled elementwise pass each (rotated copies in memory), then the RoPE-free
  forward. Its output equals ``rope``'s up to the order of roundings.
(The rotation's offsets in int32, a fifth form that compiled with far fewer spills on triton
3.6, became the library's in the tenth session and was reverted after ssd.md run 13 measured it
slower.)
Measured (ssd.md run 14, an H100): none 0.433 ms, rope 1.213, const_tables 0.887, no_partner
1.030, fma_only 0.746 (run 14's second call, beside none 0.432 and rope 1.239); run 15 (an
H100, before the split tiles): none 0.423, rope 1.228, fma_only 0.742, fma_b_only 0.533,
fma_c_only 0.540, prerotate 0.936; run 16 (an H100): forward rope 0.702 (split tiles),
rope_single 1.218, rope_full 1.270, rope_full_paired 0.794 (none 0.423); with --train rope
with the sweeps split 5.90 ms, with them joined 8.00, rope_single 8.50; in a second call none
4.345, rope 5.909, rope_full 8.743, rope_full_paired_fwd 8.282, rope_full_paired 6.778.
Each runs in a process of its own: Triton resolves a kernel's helpers when it first compiles
it. The output's sum is printed too: a diagnostic whose sum equals ``rope``'s was not patched in.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wmzoo.kernels.rope.reference import rope_reference, rope_tables  # noqa: E402
from wmzoo.kernels.ssd import ssd  # noqa: E402
from wmzoo.kernels.ssd import triton_backend, triton_fwd  # noqa: E402
from wmzoo.kernels.ssd.triton_common import load_cols  # noqa: E402

from patched_module import patched_copy  # noqa: E402  (benchmarks/, the script's own folder)

VARIANTS = ("none", "rope", "rope_single", "const_tables", "no_partner", "fma_only", "fma_b_only", "fma_c_only",
            "prerotate", "rope_full", "rope_full_paired")
# --train: the others patch the forward kernel alone
TRAIN_VARIANTS = ("none", "rope", "rope_single", "prerotate", "rope_full", "rope_full_paired", "rope_full_paired_fwd")
SHAPE = (4, 4096, 64, 64, 128, 64)  # B, T, H, P, N, G: bench_ssd's main shape
ROPE_DIM = 64


@triton.jit
def _const_tables(ptr, row_stride, rows, row_mask, cos_ptr, sin_ptr, N, HALF,
                  NB: tl.constexpr, ROPE: tl.constexpr):
    z = load_cols(ptr, row_stride, rows, row_mask, 0, N, NB)
    cols = tl.arange(0, NB)
    first = cols < HALF
    rotated = row_mask[:, None] & (cols[None, :] < 2 * HALF)
    partner = tl.where(first, cols + HALF, cols - HALF)
    zp = tl.load(ptr + rows[:, None] * row_stride + partner[None, :], mask=rotated, other=0.0).to(tl.float32)
    # not a rotation (0.9^2 + 0.3^2 != 1): a constant rotation would leave y unchanged, and the
    # sum check could not tell the patch took
    return tl.where(rotated, z * 0.9 + tl.where(first, -1.0, 1.0)[None, :] * zp * 0.3, z)


@triton.jit
def _no_partner(ptr, row_stride, rows, row_mask, cos_ptr, sin_ptr, N, HALF,
                NB: tl.constexpr, ROPE: tl.constexpr):
    z = load_cols(ptr, row_stride, rows, row_mask, 0, N, NB)
    cols = tl.arange(0, NB)
    first = cols < HALF
    rotated = row_mask[:, None] & (cols[None, :] < 2 * HALF)
    freq = tl.where(first, cols, cols - HALF)
    table = rows[:, None] * HALF + freq[None, :]
    cos = tl.load(cos_ptr + table, mask=rotated, other=1.0)
    sin = tl.load(sin_ptr + table, mask=rotated, other=0.0)
    return z * cos + tl.where(first, -1.0, 1.0)[None, :] * z * sin


@triton.jit
def _fma_only(ptr, row_stride, rows, row_mask, cos_ptr, sin_ptr, N, HALF,
              NB: tl.constexpr, ROPE: tl.constexpr):
    z = load_cols(ptr, row_stride, rows, row_mask, 0, N, NB)
    cols = tl.arange(0, NB)
    rotated = row_mask[:, None] & (cols[None, :] < 2 * HALF)
    return tl.where(rotated, z * 0.9 + tl.where(cols < HALF, -1.0, 1.0)[None, :] * z * 0.3, z)


@triton.jit
def _plain(ptr, row_stride, rows, row_mask, cos_ptr, sin_ptr, N, HALF,
           NB: tl.constexpr, ROPE: tl.constexpr):
    return load_cols(ptr, row_stride, rows, row_mask, 0, N, NB)


def _forward_with(b_fn: str, c_fn: str):
    """The forward kernel from a copy of triton_fwd whose B and C loads call ``b_fn`` and
    ``c_fn`` (this module's diagnostics, appended to the copy)."""
    extra = "".join("\n\n" + inspect.getsource(f.fn) for f in (_fma_only, _plain))
    return patched_copy(triton_fwd, [("b = load_rotated(Bg,", f"b = {b_fn}(Bg,"),
                                     ("c_t = load_rotated(Cg,", f"c_t = {c_fn}(Cg,")], extra)._ssd_fwd_kernel


def run_variant(name: str, train: bool = False) -> dict:
    if name == "rope_full":
        triton_backend.PAIRED_ROPE_FORWARD = triton_backend.PAIRED_ROPE_BACKWARD = False
    elif name == "rope_full_paired_fwd":
        triton_backend.PAIRED_ROPE_BACKWARD = False
    elif name not in ("none", "rope", "prerotate", "rope_full_paired"):
        # single tiles, and the diagnostics
        triton_backend.SPLIT_ROPE_FORWARD = triton_backend.SPLIT_ROPE_BACKWARD = False
        triton_backend.PAIRED_ROPE_FORWARD = triton_backend.PAIRED_ROPE_BACKWARD = False
    if name in ("fma_b_only", "fma_c_only"):
        b_fn, c_fn = ("_fma_only", "_plain") if name == "fma_b_only" else ("_plain", "_fma_only")
        triton_backend._ssd_fwd_kernel = _forward_with(b_fn, c_fn)
    if name == "const_tables":
        triton_fwd.load_rotated = _const_tables
    elif name == "no_partner":
        triton_fwd.load_rotated = _no_partner
    elif name == "fma_only":
        triton_fwd.load_rotated = _fma_only
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    b, t, h, p, n, g = SHAPE if dev == "cuda" else (1, 130, 2, 16, 32, 1)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(b, t, h, p, device=dev, generator=gen).bfloat16()
    dt = torch.rand(b, t, h, device=dev, generator=gen) * 0.1 + 0.01
    A = -torch.rand(h, device=dev, generator=gen) - 0.5
    B, C = ((torch.randn(b, t, g, n, device=dev, generator=gen) * n ** -0.5).bfloat16() for _ in range(2))
    cos = sin = None
    if name != "none":
        r = n if name.startswith("rope_full") else ROPE_DIM if dev == "cuda" else 16
        cos, sin = rope_tables(torch.arange(t, device=dev).expand(b, t), r)

    chunk = 64 if dev == "cuda" else 16
    rotate = torch.compile(rope_reference) if dev == "cuda" else rope_reference
    if train:  # forward and backward: gradients w.r.t. x, dt, B, C
        for z in (x, dt, B, C):
            z.requires_grad_(True)
        dy = torch.randn(x.shape, device=dev, generator=gen).to(x.dtype)

    def call():
        if name == "prerotate":
            return ssd(x, dt, A, rotate(B, cos, sin), rotate(C, cos, sin), chunk_size=chunk)
        return ssd(x, dt, A, B, C, chunk_size=chunk, rope_cos=cos, rope_sin=sin)

    grads = []

    def fwd():
        if train:
            y = call()
            grads[:] = torch.autograd.grad(y, (x, dt, B, C), dy)
            return y
        with torch.no_grad():
            return call()

    y = fwd()
    result = {"sum": round(float(y.detach().float().sum()), 4)}
    if train:  # the gradients' sums too: variants of one function must agree on them
        result["grad_sums"] = [round(float(g.float().sum()), 3) for g in grads]
    if dev == "cuda":
        result["ms"] = round(triton.testing.do_bench(fwd, warmup=25, rep=100, return_mode="median"), 4)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=VARIANTS + ("rope_full_paired_fwd",))
    ap.add_argument("--out", help="directory for rope_probe.json (with --variant unset: every variant)")
    ap.add_argument("--train", action="store_true", help=f"time forward and backward ({', '.join(TRAIN_VARIANTS)}), "
                    "not the forward alone")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.train)), flush=True)
        return
    results = {"env": {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                       "torch": torch.__version__, "triton": triton.__version__}}
    names = TRAIN_VARIANTS if args.train else VARIANTS
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--variant", name] + ["--train"] * args.train,
                              capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        results[name] = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"error": proc.stderr[-300:]}
        print(name, results[name], flush=True)
    base = results["none"].get("ms")
    for name in names:
        ms = results[name].get("ms")
        if base and ms:
            print(f"{name:14s} {ms:8.4f} ms  {ms / base:5.2f}x the RoPE-free forward")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "rope_probe_train.json" if args.train else "rope_probe.json"), "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
