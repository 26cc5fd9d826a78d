"""DMAttn benchmark (issue 5): wmzoo's Triton kernels beside the anchors, measured in one run.

    python benchmarks/bench_dmattn.py --out DIR [--sections correct,train,decode] [--quick]
    python benchmarks/bench_dmattn.py --out DIR --sections select,deterministic

``select`` times the window selection alone at every shape (seconds: a first-call check);
``deterministic`` times wmzoo's fwd+bwd in torch's deterministic mode (pinned configs instead
of autotuning) beside the same run's default mode.

Anchors (same run, same GPU): SDPA causal without bias (the ceiling), FlexAttention compiled
with the bias as score_mod (for windows: the exact window as mask_mod, block mask rebuilt every
step, as training needs since the bias changes), SDPA with a materialized (B,H,T,T) bias, and
flash-dmattn's Triton kernel. bf16, medians of triton.testing.do_bench. Correctness first: the
kernels (forward and every gradient) against a brute-force fp32 attention with the exact window
(materialized T x T mask from explicit rank counts, small shapes; dmattn_bruteforce.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dmattn_bruteforce import bruteforce_dmattn, last_query_threshold  # noqa: E402
from wmzoo.kernels.autotune import deterministic_mode  # noqa: E402
from wmzoo.kernels.dmattn import DMAttnCache, dmattn, triton_backend  # noqa: E402
from wmzoo.kernels.registry import direct_launches  # noqa: E402


def direct(fn):
    """fn with kernel launches straight to Triton: backend functions called outside the ops would
    otherwise go through the traceable launch wrapper (~1 ms of dispatch per launch)."""
    def run():
        with direct_launches():
            return fn()
    return run

DEV = "cuda"
RESULTS: dict = {}
SHAPES = [(4, 16, 4096, 128), (1, 16, 16384, 128), (8, 32, 2048, 64)]  # most important first (time budget)
WINDOWS = [None, 2048, 1024]


def bench(name, fn, flops=None):
    try:
        fn()
        torch.cuda.synchronize()
        ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
        RESULTS[name] = {"ms": round(ms, 4), **({"tflops": round(flops / ms / 1e9, 1)} if flops else {})}
    except Exception as e:  # an anchor that fails is reported, not fatal
        RESULTS[name] = {"error": repr(e)[:300]}
    print(name, RESULTS[name], flush=True)
    return RESULTS[name].get("ms")


def inputs(B, H, T, D):
    q = torch.randn(B, T, H, D, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, H, D, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, H, D, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(B, H, T, device=DEV, dtype=torch.float32, requires_grad=True)  # i.i.d.: unclustered
    return q, k, v, bias


def wmzoo_attn(q, k, v, bias, w):
    return dmattn(q, k, v, bias, keep_window=w)


def correctness():
    torch.manual_seed(0)
    cases = [(2, 8, 4, 1000, 128, None), (2, 8, 4, 1000, 128, 100), (1, 4, 4, 2100, 64, 300), (2, 8, 2, 777, 64, 1)]
    for (b, h, hkv, t, d, w) in cases:
        q = torch.randn(b, t, h, d, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(b, t, hkv, d, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(b, t, hkv, d, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        bias = (torch.randn(b, hkv, t, device=DEV) * 2).round().requires_grad_()  # many ties
        do = torch.randn(b, t, h, d, device=DEV, dtype=torch.bfloat16)
        o = wmzoo_attn(q, k, v, bias, w)
        grads = torch.autograd.grad(o, (q, k, v, bias), do)
        leaves = [x.detach().float().requires_grad_() for x in (q, k, v, bias)]
        ref = bruteforce_dmattn(*leaves, w)
        rgrads = torch.autograd.grad(ref, leaves, do.float())
        # relative error; absolute where the reference is exactly zero (w=1: one key, zero logit grads)
        errs = {n: ((a.float() - r).norm() / (r.norm() if r.norm() > 0 else 1.0)).item()
                for n, a, r in zip(("o", "dq", "dk", "dv", "dbias"), (o, *grads), (ref, *rgrads))}
        ok = all(e < 2e-2 for e in errs.values())
        RESULTS[f"correct_b{b}h{h}kv{hkv}t{t}d{d}w{w}"] = {"ok": ok, **{n: float(f"{e:.2e}") for n, e in errs.items()}}
        print("correct", b, h, hkv, t, d, w, ok, {n: f"{e:.1e}" for n, e in errs.items()}, flush=True)
    # varlen: packed equals separate sequences
    lens = [700, 1, 333, 1024]
    h, hkv, d, w = 8, 4, 128, 200
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=DEV, dtype=torch.int32)
    q = torch.randn(1, sum(lens), h, d, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(1, sum(lens), hkv, d, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(1, sum(lens), hkv, d, device=DEV, dtype=torch.bfloat16)
    bias = torch.randn(1, hkv, sum(lens), device=DEV)
    o, _ = triton_backend.forward(q, k, v, bias, cu, w, d ** -0.5)
    err = 0.0
    for s0, s1 in zip(cu[:-1].tolist(), cu[1:].tolist()):
        r = bruteforce_dmattn(q[:, s0:s1].float(), k[:, s0:s1].float(), v[:, s0:s1].float(), bias[..., s0:s1], w)
        err = max(err, ((o[:, s0:s1].float() - r).norm() / r.norm()).item())
    RESULTS["correct_varlen"] = {"ok": err < 2e-2, "o": err}
    print("correct varlen", err, flush=True)
    # deterministic mode with a window (pinned configs): against the brute force, and two runs
    # bit for bit
    b, h, hkv, t, d, w = 2, 8, 4, 1000, 128, 100
    q, k, v = (torch.randn(b, t, n, d, device=DEV, dtype=torch.bfloat16, requires_grad=True) for n in (h, hkv, hkv))
    bias = (torch.randn(b, hkv, t, device=DEV) * 2).round().requires_grad_()
    do = torch.randn(b, t, h, d, device=DEV, dtype=torch.bfloat16)

    def run():
        o = wmzoo_attn(q, k, v, bias, w)
        return (o, *torch.autograd.grad(o, (q, k, v, bias), do))

    with deterministic_mode():
        runs = [run(), run()]
    leaves = [x.detach().float().requires_grad_() for x in (q, k, v, bias)]
    ref = bruteforce_dmattn(*leaves, w)
    want = (ref, *torch.autograd.grad(ref, leaves, do.float()))
    errs = {n: ((a.float() - r).norm() / r.norm()).item() for n, a, r in zip(("o", "dq", "dk", "dv", "dbias"), runs[0], want)}
    same = all(torch.equal(a, c) for a, c in zip(*runs))
    RESULTS["correct_deterministic_w100"] = {"ok": same and all(e < 2e-2 for e in errs.values()), "bitwise": same,
                                             **{n: float(f"{e:.2e}") for n, e in errs.items()}}
    print("correct deterministic", RESULTS["correct_deterministic_w100"], flush=True)


def train(quick: bool, budget_s: float, t_start: float):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    try:
        from flash_dmattn.flash_dmattn_triton import triton_dmattn_func
    except Exception as e:
        triton_dmattn_func = None
        RESULTS["flash_dmattn_import"] = {"error": repr(e)[:300]}
    for (B, H, T, D) in SHAPES:
        tag = f"B{B}_H{H}_T{T}_D{D}"
        torch._dynamo.reset()
        flex = torch.compile(flex_attention, dynamic=False)
        fl = 4 * B * H * T * T * D / 2  # causal fwd
        q, k, v, bias = inputs(B, H, T, D)
        do = torch.randn_like(q)
        qh, kh, vh = [x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v)]
        doh = do.transpose(1, 2).contiguous()

        def fwdbwd(f, grad):
            return lambda: f().backward(grad)

        sd = lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        bench(f"sdpa_nobias_fwd_{tag}", sd, fl)
        bench(f"sdpa_nobias_fwdbwd_{tag}", fwdbwd(sd, doh), 3.5 * fl)
        for w in WINDOWS:
            if w is not None and w >= T:
                RESULTS[f"wmzoo_w{w}_{tag}"] = {"note": "window >= T: identical to no window"}
                continue
            f = lambda: wmzoo_attn(q, k, v, bias, w)
            bench(f"wmzoo_w{w}_fwd_{tag}", f, fl)
            bench(f"wmzoo_w{w}_fwdbwd_{tag}", fwdbwd(f, do), 3.5 * fl)
            if w is not None:
                bench(f"wmzoo_select_w{w}_{tag}", direct(lambda: triton_backend.select_window(
                    bias.detach(), w, triton_backend.BLOCK_M, triton_backend.block_layout(T, None, triton_backend.BLOCK_M, DEV))))
        if quick or time.time() - t_start > budget_s:
            RESULTS[f"anchors_skipped_{tag}"] = {"why": "quick" if quick else f"time budget {budget_s}s spent"}
            print("anchors skipped", tag, flush=True)
            continue
        causal = create_block_mask(lambda b, h, qi, ki: qi >= ki, B, H, T, T, device=DEV)
        bias_bf = bias.detach().to(torch.bfloat16).requires_grad_()

        def score_mod(s, b, h, qi, ki):
            return s + bias_bf[b, h, ki]

        fx = lambda: flex(qh, kh, vh, score_mod=score_mod, block_mask=causal)
        bench(f"flex_bias_fwd_{tag}", fx, fl)
        bench(f"flex_bias_fwdbwd_{tag}", fwdbwd(fx, doh), 3.5 * fl)
        if B * H * T * T * 2 <= 12 * 2**30:
            def sdm():
                causal_bias = torch.full((T, T), float("-inf"), device=DEV, dtype=torch.bfloat16).triu(1)
                m = bias_bf[:, :, None, :] + causal_bias  # materialized (B,H,T,T), grads reach the bias
                return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=m)
            bench(f"sdpa_matbias_fwd_{tag}", sdm, fl)
            bench(f"sdpa_matbias_fwdbwd_{tag}", fwdbwd(sdm, doh), 3.5 * fl)
        if triton_dmattn_func is not None and T <= 4096:
            b1 = bias.detach().to(torch.bfloat16)[:, :, None, :].requires_grad_()
            mk = torch.ones(B, H, 1, T, device=DEV, dtype=torch.bfloat16).expand(B, H, T, T)
            fd = lambda: triton_dmattn_func(q, k, v, attn_mask=mk, attn_bias=b1.expand(B, H, T, T), is_causal=True)
            bench(f"flashdmattn_fwd_{tag}", fd, fl)
            bench(f"flashdmattn_fwdbwd_{tag}", fwdbwd(fd, do), 3.5 * fl)
        th_b = torch.empty(B, H, T, device=DEV, dtype=torch.float32)
        th_i = torch.empty(B, H, T, device=DEV, dtype=torch.int32)

        bias_mask = bias_bf.detach().float()  # a mask_mod may not capture tensors that need grad

        def window_mask(b, h, qi, ki):
            bk = bias_mask[b, h, ki]
            kept = (bk > th_b[b, h, qi]) | ((bk == th_b[b, h, qi]) & (ki >= th_i[b, h, qi]))
            return (ki <= qi) & kept

        for w in WINDOWS[1:]:
            if w >= T:
                continue
            # the anchor gets its per-query thresholds from wmzoo's selection for free (not timed)
            _, _, ti, _ = triton_backend.select_window(bias_bf.detach().float(), w, triton_backend.BLOCK_M, triton_backend.block_layout(T, None, triton_backend.BLOCK_M, DEV))
            th_i.copy_(ti)
            th_b.copy_(torch.where(ti >= 0, bias_bf.detach().float().gather(-1, ti.clamp(min=0).long()), float("-inf")))
            mk = lambda: create_block_mask(window_mask, B, H, T, T, device=DEV)
            bm = mk()
            RESULTS[f"flex_window_sparsity_w{w}_{tag}"] = {"pct": round(float(bm.sparsity()), 1)}
            bench(f"flex_window_blockmask_w{w}_{tag}", mk)
            fw = lambda: flex(qh, kh, vh, score_mod=score_mod, block_mask=mk())
            bench(f"flex_window_fwd_w{w}_{tag}", fw, fl)
            bench(f"flex_window_fwdbwd_w{w}_{tag}", fwdbwd(fw, doh), 3.5 * fl)
        del q, k, v, qh, kh, vh, do, doh, bias
        torch.cuda.empty_cache()


def decode():
    """64K context, keep_window 2048: bounded cache vs full cache, same outputs."""
    B, H, HKV, D, T, W = 1, 16, 16, 128, 65536, 2048
    torch.manual_seed(1)
    k = torch.randn(B, T, HKV, D, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(B, T, HKV, D, device=DEV, dtype=torch.bfloat16)
    bias = torch.randn(B, HKV, T, device=DEV)
    q = torch.randn(B, 1, H, D, device=DEV, dtype=torch.bfloat16)
    scale = D ** -0.5
    # the exact window for the last query, from the full cache (rank by bias, ties to recent)
    tb, ti = last_query_threshold(bias, W)
    pos = torch.arange(T, device=DEV)
    keep = (bias > tb) | ((bias == tb) & (pos >= ti))
    full_valid = torch.ones(B, HKV, T, device=DEV, dtype=torch.bool)
    masked_bias = bias.masked_fill(~keep, float("-inf"))
    cache = DMAttnCache.empty(B, HKV, D, keep_window=W, dtype=torch.bfloat16, device=DEV)
    for s in range(0, T, 4096):
        cache.update(k[:, s:s + 4096], v[:, s:s + 4096], bias[..., s:s + 4096])
    full = DMAttnCache.empty(B, HKV, D, keep_window=None, dtype=torch.bfloat16, device=DEV)
    full.update(k, v, bias)
    o_win = cache.attend(q)
    RESULTS["decode_cache_bytes"] = {"window": cache.memory_bytes(), "full": full.memory_bytes()}
    bench("decode_attend_bounded_w2048_64K", lambda: cache.attend(q))
    # A whole decode step of the layer's cache: the new key enters (replace-lowest kernel), then
    # the query attends. Measured after o_win: each call moves the cache one token on.
    k1, v1, b1 = k[:, -1:].clone(), v[:, -1:].clone(), bias[..., -1:].clone()

    def step():
        cache.update(k1, v1, b1)
        return cache.attend(q)

    bench("decode_step_bounded_w2048_64K", step)
    # The update kernel against the torch ops it replaced, on copies of one cache state: equal.
    twins = [DMAttnCache(*(z.clone() for z in (cache.k, cache.v, cache.bias, cache.pos, cache.valid)),
                         W, cache.length) for _ in range(2)]
    k2, v2, b2 = torch.randn_like(k1), torch.randn_like(v1), torch.randn_like(b1) + 3  # most enter
    twins[0].update(k2, v2, b2)
    twins[1]._replace_lowest_torch(k2, v2, b2)
    RESULTS["decode_update_kernel_equals_torch"] = all(
        torch.equal(getattr(twins[0], f), getattr(twins[1], f)) for f in ("k", "v", "bias", "pos", "valid"))
    print("decode update kernel == torch ops:", RESULTS["decode_update_kernel_equals_torch"], flush=True)
    # The update alone, both forms called the same way (update's argument checks left out of
    # both): the replace-lowest kernel against the torch ops it replaced.
    bench("decode_update_kernel_w2048", lambda: cache._replace_lowest(k1, v1, b1))
    bench("decode_update_torch_w2048", lambda: cache._replace_lowest_torch(k1, v1, b1))
    o_full = triton_backend.decode(q, k, v, masked_bias, full_valid, scale)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float(),
                                         attn_mask=masked_bias[:, :, None, :]).transpose(1, 2)
    RESULTS["decode_match"] = {"bounded_vs_fullcache_maxabs": (o_win.float() - o_full.float()).abs().max().item(),
                               "bounded_vs_fp32_rel": ((o_win.float() - ref).norm() / ref.norm()).item()}
    bench("decode_triton_fullcache_masked_64K", direct(lambda: triton_backend.decode(q, k, v, masked_bias, full_valid, scale)))
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    mb = masked_bias[:, :, None, :].to(torch.bfloat16)
    bench("decode_sdpa_fullcache_masked_64K", lambda: F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mb))
    print("decode", RESULTS["decode_cache_bytes"], RESULTS["decode_match"], flush=True)


def select():
    for (B, H, T, D) in SHAPES:
        tag = f"B{B}_H{H}_T{T}_D{D}"
        bias = inputs(B, H, T, D)[3].detach()
        layout = triton_backend.block_layout(T, None, triton_backend.BLOCK_M, DEV)
        for w in WINDOWS[1:]:
            bench(f"wmzoo_select_w{w}_{tag}", direct(lambda: triton_backend.select_window(
                bias, w, triton_backend.BLOCK_M, layout)))


def deterministic():
    for (B, H, T, D) in SHAPES:
        tag = f"B{B}_H{H}_T{T}_D{D}"
        q, k, v, bias = inputs(B, H, T, D)
        do = torch.randn_like(q)
        for w in WINDOWS:
            run = lambda: dmattn(q, k, v, bias, keep_window=w).backward(do)  # noqa: E731
            bench(f"wmzoo_w{w}_fwdbwd_{tag}", run)
            with deterministic_mode():
                bench(f"wmzoo_w{w}_fwdbwd_deterministic_{tag}", run)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--sections", default="correct,train,decode")
    ap.add_argument("--quick", action="store_true", help="wmzoo and SDPA only (no compiled anchors)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip further anchors once this much time is spent")
    ap.add_argument("--shapes", help="comma-separated indices into SHAPES, in the order to run them (default: all)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)  # a device call's $OUT/<name> does not exist yet
    if args.shapes:
        picked = args.shapes.split(",")
        if not all(i.isdigit() and int(i) < len(SHAPES) for i in picked):
            raise SystemExit(f"--shapes: expected comma-separated indices 0..{len(SHAPES) - 1}, got {args.shapes!r}")
        SHAPES[:] = [SHAPES[int(i)] for i in picked]
    import triton
    RESULTS["env"] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    print(RESULTS["env"], flush=True)
    t0 = time.time()
    secs = args.sections.split(",")
    try:
        if "correct" in secs:
            correctness()
        if "decode" in secs:  # before train: short, and not lost if a time limit cuts train
            decode()
        if "train" in secs:
            train(args.quick, args.budget_s, t0)
        if "select" in secs:
            select()
        if "deterministic" in secs:
            deterministic()
    finally:
        RESULTS["wall_s"] = round(time.time() - t0, 1)
        from wmzoo.kernels.autotune import autotune_choices
        RESULTS["autotune"] = {k: c for k, c in autotune_choices().items() if k.startswith("dmattn.")}
        with open(os.path.join(args.out, "bench_dmattn.json"), "w") as f:
            json.dump(RESULTS, f, indent=1)
    print_table()


def print_table():
    print("\n| shape | case | fwd ms | fwd+bwd ms | fwd+bwd vs SDPA no bias |")
    for (B, H, T, D) in SHAPES:
        tag = f"B{B}_H{H}_T{T}_D{D}"
        base = RESULTS.get(f"sdpa_nobias_fwdbwd_{tag}", {}).get("ms")
        rows = [("sdpa no bias", "sdpa_nobias"), ("flex bias", "flex_bias"), ("sdpa materialized", "sdpa_matbias"),
                ("flash-dmattn", "flashdmattn")]
        rows += [(f"wmzoo w={w}", f"wmzoo_w{w}") for w in WINDOWS]
        rows += [(f"flex window {w} (+mask build)", f"flex_window_{{}}_w{w}") for w in WINDOWS[1:]]
        for label, key in rows:
            kf = key.format("fwd") + f"_{tag}" if "{}" in key else f"{key}_fwd_{tag}"
            kb = key.format("fwdbwd") + f"_{tag}" if "{}" in key else f"{key}_fwdbwd_{tag}"
            f, b = RESULTS.get(kf, {}).get("ms"), RESULTS.get(kb, {}).get("ms")
            if f is None and b is None:
                continue
            ratio = f"{b / base:.2f}x" if b and base else "-"
            print(f"| {tag} | {label} | {f} | {b} | {ratio} |")


if __name__ == "__main__":
    main()
