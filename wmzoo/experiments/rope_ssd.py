"""RoPE-in-SSD ablation: one hybrid, SSD layers with and without RoPE, perplexity vs length.

The hybrid: embedding -> L layers of (mixer + gated MLP) -> RMSNorm -> head, the mixer SSD in
7 of every 8 layers and causal softmax attention (always with RoPE) in the 8th, as Cheems.
The two arms differ only in ``SSD(rope=...)``. For a given seed both arms start from the same
random state and train on exactly the same byte windows; each run is stored when it ends.
Evaluation: perplexity per byte on held-out documents at several lengths (the training length,
shorter, and longer, up to 4x), the same held-out bytes at every length.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..blocks import MLP, SSD, Attention
from ..kernels.autotune import kernel_record
from .model import TinyLM, autocast, count_params, make_optimizer, warmup_cosine
from .results import ResultStore, hardware, pick_device
from .text_data import (
    VOCAB,
    eval_windows,
    random_windows,
    read_documents,
    split_rule,
    train_eval_split,
)

ARMS = ("rope", "norope")
ARM_LABELS = {"rope": "SSD with RoPE", "norope": "SSD without RoPE"}
PAPER_CLAIM = 0.04  # "more than 4% lower perplexity" with RoPE in SSD


@dataclass(frozen=True)
class Ablation:
    d_model: int = 512
    layers: int = 8
    head_dim: int = 64
    train_len: int = 512
    batch: int = 16
    steps: int = 3000
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_lens: tuple[int, ...] = (256, 512, 1024, 2048)
    eval_tokens: int = 1 << 17
    notes: str = ""


CONFIGS = {
    "paper": Ablation(),
    "gpu-reduced": Ablation(d_model=256, steps=600, seeds=(0,), eval_tokens=1 << 16,
                            notes="one seed per arm, short training: what fits one 5-minute GPU call"),
    # What a shared 2-core CPU can do in minutes: a small hybrid on the real corpus.
    "cpu-probe": Ablation(d_model=64, layers=8, head_dim=32, train_len=128, batch=8, steps=1000, seeds=(0, 1, 2),
                          eval_lens=(64, 128, 256, 512), eval_tokens=1 << 14,
                          notes="CPU probe: a small hybrid, 1000 steps, three seeds per arm"),
    "smoke": Ablation(d_model=16, layers=8, head_dim=16, train_len=32, batch=2, steps=3, seeds=(0, 1),
                      eval_lens=(16, 32, 64), eval_tokens=128, notes="pipeline check only"),
}


def hybrid_specs(layers: int, head_dim: int, ssd_rope: bool):
    specs = []
    for i in range(layers):
        mixer = Attention(head_dim=head_dim) if i % 8 == 7 else SSD(head_dim=head_dim, rope=ssd_rope)
        specs += [mixer, MLP()]
    return specs


def run_key(arm: str, seed: int) -> str:
    return f"{arm}/seed{seed}"


@torch.no_grad()
def perplexity(model: TinyLM, windows: torch.Tensor, batch: int, device) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch):
        w = windows[i : i + batch].to(device)
        with autocast(device):
            logits = model(w[:, :-1])
        total += float(F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="sum"))
    model.train()
    return math.exp(total / windows[:, 1:].numel())


def train_run(arm: str, seed: int, cfg: Ablation, train_tokens, held_tokens, device, log=None) -> dict:
    """One (arm, seed) run; ``log`` (if given) gets a progress line ten times per run."""
    torch.manual_seed(seed)  # same initial weights for both arms (RoPE adds no parameters)
    model = TinyLM(hybrid_specs(cfg.layers, cfg.head_dim, arm == "rope"), cfg.d_model, VOCAB).to(device)
    opt = make_optimizer(model, cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.steps))
    gen = torch.Generator().manual_seed(seed)  # same windows, in the same order, for both arms
    start = time.perf_counter()
    every = max(1, cfg.steps // 10)
    for step in range(cfg.steps):
        w = random_windows(train_tokens, cfg.train_len, cfg.batch, gen).to(device, non_blocking=True)
        with autocast(device):
            logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log is not None and step % every == every - 1:
            log(f"rope-ssd {run_key(arm, seed)}: step {step + 1}/{cfg.steps} loss {float(loss.detach()):.3f} "
                f"({time.perf_counter() - start:.0f} s)")
    train_seconds = time.perf_counter() - start
    eval_batch = max(1, cfg.batch * cfg.train_len // max(cfg.eval_lens))
    ppl = {str(n): perplexity(model, eval_windows(held_tokens, n, cfg.eval_tokens), eval_batch, device)
           for n in cfg.eval_lens}
    record = {"arm": arm, "seed": seed, "perplexity": ppl, "final_train_loss": float(loss.detach()),
              "train_seconds": round(train_seconds, 2), "params": count_params(model)}
    record.update(kernel_record())
    return record


def run_ablation(cfg: Ablation, store: ResultStore, data=None, device=None, arms=ARMS, seeds=None,
                 max_minutes=None, command="", log=print) -> None:
    """Train and evaluate every (seed, arm) not stored yet. ``seeds`` runs a subset (one
    process per seed sharing ``store``); the stored protocol lists all of the config's seeds
    and any extra ones asked for."""
    device = pick_device(device)
    seeds = cfg.seeds if seeds is None else tuple(seeds)
    cfg = replace(cfg, seeds=tuple(sorted(set(cfg.seeds) | set(seeds))))
    docs = read_documents(data)
    train_tokens, held_tokens = train_eval_split(docs)
    store.start(asdict(cfg), axes=("seeds", "notes"), experiment="rope-ssd", hardware=hardware(), command=command,
                      data={"source": "embedded text" if data is None else str(data), "documents": len(docs),
                            "split": split_rule(len(docs)),
                            "train_bytes": len(train_tokens), "held_out_bytes": len(held_tokens)})
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    done = store.records()
    for seed in seeds:
        for arm in arms:
            if run_key(arm, seed) in done:
                continue
            if deadline is not None and time.monotonic() > deadline:
                log("rope-ssd: time limit reached; the remaining runs stay pending (rerun to resume)")
                return
            try:
                record = train_run(arm, seed, cfg, train_tokens, held_tokens, device, log=log)
            except Exception as e:  # keep going: the other arm/seeds are still worth having
                store.put_error(run_key(arm, seed), e)
                log(f"rope-ssd {run_key(arm, seed)}: FAILED: {type(e).__name__}: {e}")
                continue
            record["device"] = hardware()["device"]
            store.put(run_key(arm, seed), record)
            log(f"rope-ssd {run_key(arm, seed)}: ppl {record['perplexity']} ({record['train_seconds']:.1f} s)")


def summarize(records: dict) -> dict:
    """Per arm and length: mean, std and range over seeds; per length the paired relative
    reduction (1 - ppl_rope / ppl_norope, per seed, seeds run in both arms only)."""
    lens = sorted({int(n) for r in records.values() for n in r["perplexity"]})
    out = {"lengths": lens, "arms": {}, "reduction": {}}
    for arm in ARMS:
        runs = [r for r in records.values() if r["arm"] == arm]
        out["arms"][arm] = {n: spread([r["perplexity"][str(n)] for r in runs if str(n) in r["perplexity"]])
                            for n in lens}
    by_seed = {(r["arm"], r["seed"]): r for r in records.values()}
    paired = sorted(s for a, s in by_seed if a == "rope" and ("norope", s) in by_seed)
    for n in lens:
        red = [1 - by_seed["rope", s]["perplexity"][str(n)] / by_seed["norope", s]["perplexity"][str(n)]
               for s in paired]
        out["reduction"][n] = spread(red)
    out["paired_seeds"] = paired
    return out


def spread(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def verdict(summary: dict, train_len: int) -> str:
    """Does RoPE in SSD lower perplexity by more than 4% at the training length?"""
    red = summary["reduction"].get(train_len, {"n": 0})
    if red["n"] == 0:
        return "not measured: no seed has both arms at the training length"
    mean = red["mean"]
    seeds = f"{red['n']} seed{'s' if red['n'] > 1 else ''}"
    if red["n"] > 1:
        seeds += f", spread {red['min']:+.1%} .. {red['max']:+.1%}"
    if red["min"] > PAPER_CLAIM:
        word = "holds: every seed lowers perplexity by more than 4%"
    elif red["min"] > 0 and red["max"] > PAPER_CLAIM:
        word = ("direction holds in every seed; the size straddles 4%" if red["n"] > 1
                else "direction holds; the size is below 4%")
    elif red["min"] > 0:
        word = "does not hold in size: RoPE helps in every seed, by less than 4%"
    elif mean > 0:
        word = "not shown: the mean favours RoPE but not every seed does"
    else:
        word = "does not hold: RoPE in SSD does not lower perplexity here"
    caution = " (a single seed: indicative only)" if red["n"] == 1 else ""
    return f"{word}; reduction {mean:+.2%} at length {train_len} ({seeds}){caution}"


def markdown_table(records: dict) -> str:
    if not records:
        return "_No RoPE-in-SSD runs stored yet._\n"
    s = summarize(records)
    lines = ["| eval length | " + " | ".join(ARM_LABELS[a] + " (ppl, mean ± std)" for a in ARMS)
             + " | reduction with RoPE (mean ± std) |", "| --- | --- | --- | --- |"]
    for n in s["lengths"]:
        cells = []
        for a in ARMS:
            st = s["arms"][a][n]
            cells.append("" if st["n"] == 0 else f"{st['mean']:.3f} ± {st['std']:.3f} (n={st['n']})")
        red = s["reduction"][n]
        cells.append("" if red["n"] == 0 else f"{red['mean']:+.2%} ± {red['std']:.2%}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: dict, path, train_len: int | None = None) -> None:
    """Perplexity vs evaluation length per arm: mean line, min-max band, each seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("records: no RoPE-in-SSD runs to plot")
    s = summarize(records)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for arm, color in zip(ARMS, ("tab:blue", "tab:orange")):
        lens = [n for n in s["lengths"] if s["arms"][arm][n]["n"]]
        if not lens:
            continue
        st = [s["arms"][arm][n] for n in lens]
        ax.plot(lens, [x["mean"] for x in st], marker="o", color=color, label=ARM_LABELS[arm])
        ax.fill_between(lens, [x["min"] for x in st], [x["max"] for x in st], color=color, alpha=0.2)
        for r in records.values():
            if r["arm"] == arm:
                ax.scatter(lens, [r["perplexity"][str(n)] for n in lens], color=color, s=8, alpha=0.5)
    if train_len:
        ax.axvline(train_len, color="gray", ls="--", lw=0.8, label="training length")
    ax.set_xscale("log", base=2)
    ax.set_xticks(s["lengths"], [str(n) for n in s["lengths"]])
    ax.minorticks_off()
    ax.set_xlabel("Evaluation length (bytes)")
    ax.set_ylabel("Perplexity per byte")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(path) -> str:
    """From the result file ``path`` (.json): the table (.md beside it) and the figure (.png);
    returns the table and the verdict on the paper's claim."""
    path = Path(path)
    data = ResultStore(path).load()
    records, train_len = data["records"], data["meta"].get("protocol", {}).get("train_len")
    table = markdown_table(records)
    path.with_suffix(".md").write_text(table)
    if records:
        plot(records, path.with_suffix(".png"), train_len)
        table += "\n" + verdict(summarize(records), train_len) + "\n"
    return table
