"""CDMoE expert retrieval benchmark (issue 6): per-expert-loop top-k MoE, PEER-style einsum
and wmzoo CDMoE, forward and forward+backward, time and memory, in one run with the anchors.

    python benchmarks/bench_cdmoe.py --out results_dir        # on the GPU (bf16)
    python benchmarks/bench_cdmoe.py --smoke --out /tmp/x      # tiny sizes, any device
    python benchmarks/bench_cdmoe.py --plot results_dir/cdmoe.json --png docs/benchmarks/cdmoe.png

Every variant uses the same tables: N single-neuron experts (down, up: (N, d)), k active per
token. The loop MoE routes with a linear d -> N router and loops over experts (Qwen2-MoE
style, host sync included, as such code does); PEER and CDMoE route with the same product
keys (1 head, retrieval dim 256, unless stated). Times are medians (triton do_bench).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F

from wmzoo.kernels.cdmoe import cdmoe_experts, product_key_topk
from wmzoo.kernels.cdmoe.reference import product_key_topk_backward_reference

RATIOS = (0.25, 0.5, 0.75, 1.0)


def timer(fn, leaves=(), quick=False):
    """Median ms of fn(); gradients of ``leaves`` reset between calls."""
    if torch.cuda.is_available():
        from triton.testing import do_bench

        warm, rep = (5, 20) if quick else (25, 100)
        return do_bench(fn, warmup=warm, rep=rep, grad_to_none=list(leaves), return_mode="median")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[1]


def slow_timer(fn, reps=3):
    """For the per-expert loop (tens to hundreds of ms): one warm-up, median of ``reps``."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_mib(fn):
    """Extra device memory at the peak of one call, MiB (None on CPU)."""
    if not torch.cuda.is_available():
        return None
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)


# ---------------------------------------------------------------- the three implementations


def loop_moe(x, router, w1, w2, k):
    """Top-k MoE, one matmul pair per expert: w1[e] (d, h), w2[e] (h, d)."""
    n, E = x.shape[0], router.shape[1]
    w, idx = (x @ router).topk(k, dim=-1)
    w = w.softmax(-1)
    flat = idx.flatten()
    order = flat.argsort()
    tok = (torch.arange(n * k, device=x.device) // k)[order]
    w_sorted = w.flatten()[order]
    counts = torch.bincount(flat, minlength=E).tolist()
    out = torch.zeros_like(x)
    start = 0
    for e, c in enumerate(counts):
        if c:
            t = tok[start : start + c]
            h = F.silu(x[t] @ w1[e]) @ w2[e]
            out = out.index_add(0, t, h * w_sorted[start : start + c, None])
        start += c
    return out


def peer(x, wq, keys, down, up, k):
    """PEER-style product keys in torch einsums: gathers (n, heads, k, d) twice."""
    n, heads, S = x.shape[0], keys.shape[0], keys.shape[2]
    q = (x @ wq).view(n, heads, 2, -1)
    s1 = torch.einsum("nhr,hsr->nhs", q[:, :, 0], keys[:, 0])
    s2 = torch.einsum("nhr,hsr->nhs", q[:, :, 1], keys[:, 1])
    v1, i1 = s1.topk(k, -1)
    v2, i2 = s2.topk(k, -1)
    sums = (v1[..., :, None] + v2[..., None, :]).flatten(-2)
    ids = (i1[..., :, None] * S + i2[..., None, :]).flatten(-2)
    kept, pos = sums.topk(k, -1)
    idx = ids.gather(-1, pos)
    act = F.silu(torch.einsum("nd,nhkd->nhk", x, F.embedding(idx, down))) * kept.softmax(-1)
    return torch.einsum("nhk,nhkd->nd", act, F.embedding(idx, up))


def wmzoo_cdmoe(x, wq, keys, down, up, k):
    n, heads = x.shape[0], keys.shape[0]
    w, idx = product_key_topk((x @ wq).view(n, heads, -1), keys, k)
    return cdmoe_experts(x, idx.view(n, -1), w.view(n, -1), down, up)


class Problem:
    """Inputs shared by the variants: tokens, product keys, tables, a loop-MoE router."""

    def __init__(self, n, d, N, heads, k, dtype, device, r=256, loop=True):
        g = torch.Generator(device=device).manual_seed(N + k)
        make = lambda *s, scale=1.0: (torch.randn(*s, device=device, generator=g) * scale).to(dtype).requires_grad_()  # noqa: E731
        self.k, self.S = k, math.isqrt(N)
        self.x = make(n, d)
        self.wq = make(d, heads * r, scale=d**-0.5)
        self.keys = make(heads, 2, self.S, r // 2, scale=(r // 2) ** -0.5)
        self.down = make(N, d, scale=d**-0.5)
        self.up = make(N, d, scale=0.02)
        self.router = make(d, N, scale=d**-0.5) if loop else None
        # the loop MoE's experts are separate parameters, as in an nn.ModuleList of experts
        self.w1 = [make(d, 1, scale=d**-0.5) for _ in range(N)] if loop else None
        self.w2 = [make(1, d, scale=0.02) for _ in range(N)] if loop else None
        self.grad = torch.randn(n, d, device=device, dtype=dtype)

    def product_key_leaves(self):
        return [self.x, self.wq, self.keys, self.down, self.up]

    def run(self, name):
        if name == "loop":
            return loop_moe(self.x, self.router, self.w1, self.w2, self.k)
        fn = peer if name == "peer" else wmzoo_cdmoe
        return fn(self.x, self.wq, self.keys, self.down, self.up, self.k)

    def leaves(self, name):
        return [self.x, self.router, *self.w1, *self.w2] if name == "loop" else self.product_key_leaves()


def measure(problem, name, quick):
    """fwd ms, fwd+bwd ms, fwd+bwd peak MiB of one variant."""
    leaves = problem.leaves(name)

    def fwd():
        with torch.no_grad():
            return problem.run(name)

    def fwd_bwd():
        problem.run(name).backward(problem.grad)

    if name == "loop":
        res = {"fwd_ms": slow_timer(fwd), "fwdbwd_ms": slow_timer(fwd_bwd)}
    else:
        res = {"fwd_ms": timer(fwd, quick=quick), "fwdbwd_ms": timer(fwd_bwd, leaves, quick=quick)}
    res["fwdbwd_peak_mib"] = peak_mib(fwd_bwd)
    for t in leaves:
        t.grad = None
    return {key: (round(v, 4) if isinstance(v, float) else v) for key, v in res.items()}


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------- sections of the run


def ceilings(dev, smoke):
    if smoke:
        return {"copy_TBps": None, "matmul_TFLOPs": None}
    x = torch.randn(2**29, device=dev, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    copy_ms = timer(lambda: y.copy_(x))
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    mm_ms = timer(lambda: a @ b)
    return {"copy_TBps": round(2 * x.numel() * 2 / copy_ms / 1e9, 3), "matmul_TFLOPs": round(2 * 8192**3 / mm_ms / 1e9, 1)}


def anchors(n, d, dev, dtype, smoke):
    """The anchors.md figures, re-measured: loop MoE E1024 top8 hidden 64; PEER E16384 top64
    (1 head) and E1M top16 (8 heads) forward; and CDMoE at equal total and active parameters
    to the loop MoE (65536 = 1024 x 64 single neurons, 8 heads x 64 = 512 active)."""
    out = {}
    E, k, h = (16, 2, 4) if smoke else (1024, 8, 64)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(n, d, device=dev, generator=g).to(dtype)
    router = (torch.randn(d, E, device=dev, generator=g) / d**0.5).to(dtype)
    w1 = (torch.randn(E, d, h, device=dev, generator=g) / d**0.5).to(dtype)
    w2 = (torch.randn(E, h, d, device=dev, generator=g) / h**0.5).to(dtype)
    with torch.no_grad():
        out[f"loop_E{E}_top{k}_h{h}_fwd_ms"] = round(slow_timer(lambda: loop_moe(x, router, w1, w2, k)), 3)
    del w1, w2
    cases = [(16, 1, 4), (64, 1, 4), (4 * 4, 8, 2)] if smoke else [(16384, 1, 64), (2**20, 8, 16), (65536, 8, 64)]
    for N, heads, kk in cases:
        p = Problem(n, d, N, heads, kk, dtype, dev, loop=False)
        for name in ("peer", "wmzoo"):
            with torch.no_grad():
                out[f"{name}_E{N}_heads{heads}_top{kk}_fwd_ms"] = round(timer(lambda: p.run(name)), 3)
        with torch.no_grad():
            out[f"bf16_rel_err_wmzoo_vs_peer_E{N}"] = round(rel_err(p.run("wmzoo"), p.run("peer")), 5)
        del p
    return out


def sweep(n, d, dev, dtype, smoke, quick):
    """The paper's figure and beyond: N experts, k = ratio x sqrt(N) active, 1 head."""
    rows = []
    grid = [(N, r) for N in (16, 64, 256, 1024) for r in RATIOS]
    grid += [(4096, 1.0), (16384, 0.5), (65536, 0.25)]
    if smoke:
        grid = [(16, 0.5), (64, 1.0)]
    for N, ratio in grid:
        k = max(1, round(ratio * math.isqrt(N)))
        with_loop = N <= 1024
        p = Problem(n, d, N, 1, k, dtype, dev, loop=with_loop)
        row = {"N": N, "ratio": ratio, "k": k}
        for name in (["loop"] if with_loop else []) + ["peer", "wmzoo"]:
            row[name] = measure(p, name, quick)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del p
    return rows


def expert_floor(n, d, dev, dtype, smoke, copy_tbps):
    """The expert mixture alone at the issue's shape (N 16384, 64 per token): forward vs the
    bytes it must read (2k rows of d per token, x, out, ids, weights), and fwd+bwd."""
    N, k = (64, 8) if smoke else (16384, 64)
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(n, d, device=dev, generator=g).to(dtype).requires_grad_()
    idx = torch.randint(0, N, (n, k), device=dev, generator=g)
    w = torch.rand(n, k, device=dev, generator=g).to(dtype).requires_grad_()
    down = (torch.randn(N, d, device=dev, generator=g) / d**0.5).to(dtype).requires_grad_()
    up = (torch.randn(N, d, device=dev, generator=g) * 0.02).to(dtype).requires_grad_()
    gout = torch.randn(n, d, device=dev, dtype=dtype)
    leaves = [x, w, down, up]
    size = dtype.itemsize
    floor_bytes = n * k * 2 * d * size + 2 * n * d * size + n * k * (8 + size)
    res = {"N": N, "k": k, "floor_bytes": floor_bytes}
    if copy_tbps:
        res["floor_ms"] = round(floor_bytes / copy_tbps / 1e9, 4)

    def fwd():
        with torch.no_grad():
            return cdmoe_experts(x, idx, w, down, up)

    def fwd_bwd():
        cdmoe_experts(x, idx, w, down, up).backward(gout)

    res["fwd_ms"] = round(timer(fwd), 4)
    res["fwdbwd_ms"] = round(timer(fwd_bwd, leaves), 4)
    if "floor_ms" in res:
        res["fwd_over_floor"] = round(res["fwd_ms"] / res["floor_ms"], 2)
    return res


def retrieval_parts(n, d, dev, dtype, smoke):
    """The retrieval alone: fused forward kernel and the PyTorch backward, per shape."""
    res = {}
    for N, heads, k in [(64, 1, 8)] if smoke else [(16384, 1, 64), (65536, 8, 64), (2**20, 8, 16)]:
        p = Problem(n, d, N, heads, k, dtype, dev, loop=False)
        q = (p.x @ p.wq).view(n, heads, -1).detach()
        keys = p.keys.detach()
        w, idx = product_key_topk(q, keys, k)
        gw = torch.randn_like(w)
        res[f"E{N}_heads{heads}_top{k}"] = {
            "fwd_ms": round(timer(lambda: product_key_topk(q, keys, k)), 4),
            "bwd_ms": round(timer(lambda: product_key_topk_backward_reference(q, keys, idx, w, gw)), 4),
        }
        del p
    return res


def profile_fwd_bwd(n, d, dev, dtype, path):
    """Kernel-time breakdown of one wmzoo fwd+bwd at the issue's shape (N 16384, k 64)."""
    from torch.profiler import ProfilerActivity, profile

    p = Problem(n, d, 16384, 1, 64, dtype, dev, loop=False)
    p.run("wmzoo").backward(p.grad)
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        p.run("wmzoo").backward(p.grad)
        sync()
    text = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14)
    with open(path, "w") as f:
        f.write(text)
    return text


class CDMoEBlock(torch.nn.Module):
    """The CDMoE block from the ops and nn.Linear: shared gated MLP + product-key experts
    (wmzoo.blocks.cdmoe computes the same; built here so the benchmark needs only the ops)."""

    def __init__(self, d, hidden, N, heads, k, r):
        super().__init__()
        self.gate, self.up_proj = torch.nn.Linear(d, hidden, bias=False), torch.nn.Linear(d, hidden, bias=False)
        self.down_proj = torch.nn.Linear(hidden, d, bias=False)
        self.query = torch.nn.Linear(d, heads * r, bias=False)
        self.keys = torch.nn.Parameter(torch.randn(heads, 2, math.isqrt(N), r // 2) * 0.02)
        self.down = torch.nn.Parameter(torch.randn(N, d) * 0.02)
        self.up = torch.nn.Parameter(torch.randn(N, d) * 0.02)
        self.heads, self.k = heads, k

    def forward(self, x):
        n = x.shape[0]
        shared = self.down_proj(F.silu(self.gate(x)) * self.up_proj(x))
        w, idx = product_key_topk(self.query(x).view(n, self.heads, -1), self.keys, self.k)
        return shared + cdmoe_experts(x, idx.view(n, -1), w.view(n, -1), self.down, self.up)

    def active_params(self):
        dense = sum(m.weight.numel() for m in (self.gate, self.up_proj, self.down_proj, self.query))
        return dense + self.keys.numel() + self.heads * self.k * 2 * self.down.shape[1]


class GatedMLP(torch.nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.gate, self.up = torch.nn.Linear(d, hidden, bias=False), torch.nn.Linear(d, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


def block_vs_dense(n, d, dev, dtype, smoke, quick):
    """CDMoE block at the Cheems defaults (4096 experts, 4 heads x 8, retrieval 256, shared
    hidden 8/3 d) against a dense gated MLP with the same active parameters."""
    N, heads, k, r = (64, 2, 4, 16) if smoke else (4096, 4, 8, 256)
    hidden = -(-(8 * d // 3) // 64) * 64
    block = CDMoEBlock(d, hidden, N, heads, k, r).to(dev, dtype)
    dense_hidden = round(block.active_params() / (3 * d))
    dense = GatedMLP(d, dense_hidden).to(dev, dtype)
    x = torch.randn(n, d, device=dev, dtype=dtype, requires_grad=True)
    g = torch.randn(n, d, device=dev, dtype=dtype)
    res = {"active_params": block.active_params(), "dense_hidden": dense_hidden, "total_params_block": sum(p.numel() for p in block.parameters())}
    for name, m in (("cdmoe_block", block), ("dense_mlp", dense)):
        leaves = [x, *m.parameters()]

        def fwd(m=m):
            with torch.no_grad():
                return m(x)

        def fwd_bwd(m=m):
            m(x).backward(g)

        res[name] = {"fwd_ms": round(timer(fwd, quick=quick), 4), "fwdbwd_ms": round(timer(fwd_bwd, leaves, quick=quick), 4), "fwdbwd_peak_mib": peak_mib(fwd_bwd)}
    return res


def compile_check(dev, dtype):
    """torch.compile(fullgraph=True, dynamic=True) of the two ops, fwd+bwd, vs eager."""
    block = CDMoEBlock(64, 128, 256, 2, 4, 32).to(dev, dtype)
    compiled = torch.compile(block, fullgraph=True, dynamic=True)
    errs = []
    for n in (37, 300):
        x = torch.randn(n, 64, device=dev, dtype=dtype, requires_grad=True)
        eager = block(x)
        (gx_e,) = torch.autograd.grad(eager.float().square().sum(), x)
        out = compiled(x)
        (gx_c,) = torch.autograd.grad(out.float().square().sum(), x)
        errs += [rel_err(out, eager), rel_err(gx_c, gx_e)]
    return {"max_rel_err_compiled_vs_eager": round(max(errs), 5)}


# ---------------------------------------------------------------- report


def table(results):
    lines = ["N ratio k | loop fwd/fwdbwd ms | peer fwd/fwdbwd ms | wmzoo fwd/fwdbwd ms | loop/wmzoo fwd | peer/wmzoo fwdbwd"]
    for row in results["sweep"]:
        lp, pe, wz = row.get("loop"), row["peer"], row["wmzoo"]
        loop_txt = f"{lp['fwd_ms']:.3f}/{lp['fwdbwd_ms']:.3f}" if lp else "-"
        speed = f"{lp['fwd_ms'] / wz['fwd_ms']:.1f}x" if lp else "-"
        lines.append(
            f"{row['N']} {row['ratio']} {row['k']} | {loop_txt} | {pe['fwd_ms']:.3f}/{pe['fwdbwd_ms']:.3f} | "
            f"{wz['fwd_ms']:.3f}/{wz['fwdbwd_ms']:.3f} | {speed} | {pe['fwdbwd_ms'] / wz['fwdbwd_ms']:.2f}x"
        )
    return "\n".join(lines)


def plot(json_path, png_path):
    """The figure is drawn by the expert-speed experiment, so both places show one plot."""
    from pathlib import Path

    from wmzoo.experiments.expert_speed import load, plot as draw

    draw(load(Path(json_path)), Path(png_path))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the script runs")
    ap.add_argument("--quick", action="store_true", help="shorter timing windows")
    ap.add_argument("--plot", help="results JSON to plot (no benchmarking)")
    ap.add_argument("--png", default="docs/benchmarks/cdmoe.png")
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.png)
        return
    import triton

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    n, d = (64, 32) if args.smoke else (16384, 1024)
    env = {"torch": torch.__version__, "triton": triton.__version__, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "tokens": n, "d": d, "dtype": str(dtype)}
    print(json.dumps(env), flush=True)
    os.makedirs(args.out, exist_ok=True)
    results = {"env": env}
    results["ceilings"] = ceilings(dev, args.smoke)
    print(json.dumps(results["ceilings"]), flush=True)
    if dev == "cuda":
        results["compile_check"] = compile_check(dev, dtype)
        print(json.dumps(results["compile_check"]), flush=True)
    results["expert_floor"] = expert_floor(n, d, dev, dtype, args.smoke, results["ceilings"]["copy_TBps"])
    print(json.dumps(results["expert_floor"]), flush=True)
    results["retrieval_parts"] = retrieval_parts(n, d, dev, dtype, args.smoke)
    print(json.dumps(results["retrieval_parts"]), flush=True)
    if dev == "cuda":
        print(profile_fwd_bwd(n, d, dev, dtype, os.path.join(args.out, "profile.txt")), flush=True)
    results["anchors"] = anchors(n, d, dev, dtype, args.smoke)
    print(json.dumps(results["anchors"]), flush=True)
    results["block"] = block_vs_dense(n, d, dev, dtype, args.smoke, args.quick)
    print(json.dumps(results["block"]), flush=True)
    results["sweep"] = sweep(n, d, dev, dtype, args.smoke, args.quick)
    with open(os.path.join(args.out, "cdmoe.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
