"""MQAR grid: accuracy of DMAttn, attention, SSD and linear attention by length and width.

Protocol (documented in docs/experiments.md from the ``protocol`` stored in the result file):
data as in :mod:`mqar_data` (vocab 8192, T/4 key-value pairs up to 256); model = embedding ->
2 layers of (mixer + gated MLP), pre-norm residual -> RMSNorm -> linear head; head_dim =
min(64, width); fresh random batches every step; AdamW (betas 0.9/0.95, weight decay 0.1),
warm-up + cosine; loss on answer positions only; accuracy on a fixed held-out set of
examples; every learning rate of the sweep is one run, the cell's score is the best run.
Each run is stored as soon as it ends, so the grid can be run in pieces (``--shard``) and
resumed (finished runs are skipped).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..blocks import MLP, SSD, Attention, DMAttn
from ..kernels.autotune import kernel_record
from ..specs import BlockSpec
from .linear_attention import LinearAttention
from .model import TinyLM, autocast, count_params, make_optimizer, warmup_cosine
from .mqar_data import MQARTask, mqar_batch
from .results import ResultStore, hardware, pick_device

MIXERS = ("dmattn", "attention", "ssd", "linear")
MIXER_LABELS = {"dmattn": "DMAttn", "attention": "Attention", "ssd": "SSD", "linear": "Linear attention"}
TEST_SEED = 1234  # the held-out examples are the same for every run of a cell
# A run this good leaves nothing for the rest of the learning-rate sweep to find.
SOLVED = 0.995

# Read off the paper's MQAR figure (wonderful-matrices.md, "The paper's four claims", 2).
PAPER_POINTS = {
    (2048, 256): {"dmattn": 1.0, "attention": 0.36, "ssd": 0.32},
    (1024, 128): {"dmattn": 1.0, "attention": 0.6, "ssd": 0.6},
}


@dataclass(frozen=True)
class Grid:
    seq_lens: tuple[int, ...]
    widths: tuple[int, ...]
    mixers: tuple[str, ...] = MIXERS
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)
    steps: int = 2000
    batch: int = 64
    vocab: int = 8192
    layers: int = 2
    test_examples: int = 1000
    seed: int = 0
    # "fan_in": see TinyLM; with "cheems" (N(0, 0.02)) no mixer learned MQAR at these widths.
    init: str = "fan_in"
    notes: str = ""
    # Key-value pairs per example; None: the spec's T/4 (up to 256), see MQARTask.
    kv_pairs: int | None = None
    # > 0: evaluate every this many steps, keep the accuracy curve, and stop a run as soon as it
    # is solved (the step at which recall is learned is what a step budget is chosen from).
    eval_every: int = 0

    def task(self, seq_len: int) -> MQARTask:
        return MQARTask(seq_len, vocab=self.vocab, kv_pairs=self.kv_pairs)

    def cells(self):
        return [(m, t, d) for t in self.seq_lens for d in self.widths for m in self.mixers]


GRIDS = {
    # The paper's figure: 4 lengths x 4 widths x 4 mixers x 4 learning rates (a GPU job). Listed
    # longest and widest first, and the likeliest learning rates first, so that a run cut short
    # by its time limit has the cells the paper's claim rests on (tables and plots sort).
    "paper": Grid(seq_lens=(2048, 1024, 512, 256), widths=(256, 128, 64, 32), lrs=(1e-3, 3e-3, 3e-4, 1e-2)),
    # What fits one 5-minute GPU call: the two lengths where the paper sees the collapse, the
    # narrowest and widest of the widths that decide it, short training.
    "gpu-reduced": Grid(seq_lens=(1024, 2048), widths=(64, 256), mixers=("dmattn", "attention", "ssd"),
                        lrs=(1e-3, 3e-3), steps=300, batch=32, test_examples=256,
                        notes="reduced grid for one 5-minute GPU call"),
    # What a shared 2-core CPU can do in minutes: one short length, one width, one lr, 1000
    # steps (Zoology-scale training is ~25k steps). Shows how far short training gets.
    # The first three CPU probes ran with the paper's N(0, 0.02) init, under which nothing learned.
    "cpu-probe": Grid(seq_lens=(64,), widths=(64,), lrs=(1e-3,), steps=1000, batch=32, vocab=256, init="cheems",
                      test_examples=128, notes="CPU probe: one short length and width, 1000 steps, vocab 256"),
    "cpu-probe-3k": Grid(seq_lens=(64,), widths=(64,), lrs=(1e-3,), steps=3000, batch=32, vocab=256,
                         init="cheems", test_examples=128, notes="CPU probe: as cpu-probe, 3000 steps"),
    "cpu-probe-v64": Grid(seq_lens=(64,), widths=(64,), lrs=(3e-3,), steps=2000, batch=32, vocab=64,
                          init="cheems", test_examples=256,
                          notes="CPU probe: length 64, 16 pairs, vocabulary 64, 2000 steps"),
    # The same probe with the fan-in init (the protocol's default since): the one MQAR grid that
    # shows the mixers apart on a CPU, in minutes.
    "cpu-probe-v64-fan-in": Grid(seq_lens=(64,), widths=(64,), lrs=(1e-3, 3e-3), steps=2000, batch=32, vocab=64,
                                 test_examples=256,
                                 notes="CPU probe: as cpu-probe-v64 with the fan-in init, lr 1e-3 and 3e-3"),
    # The same with another seed (init draw and data): at this size whether a run leaves the
    # plateau within 2000 steps depends on the draw (README.notes.md), so both are shown.
    "cpu-probe-v64-fan-in-seed1": Grid(seq_lens=(64,), widths=(64,), lrs=(1e-3, 3e-3), steps=2000, batch=32,
                                       vocab=64, test_examples=256, seed=1,
                                       notes="CPU probe: as cpu-probe-v64-fan-in, seed 1"),
    # Seconds on a CPU: exercises the whole pipeline, not the claim.
    # How many steps does leaving the plateau take at vocabulary 8192? (2000 were too few for
    # every mixer at lengths 256 and 2048.) One run per mixer, one per process (--shard i/4),
    # stopped once solved; the accuracy curve says when each left the plateau.
    "budget": Grid(seq_lens=(256,), widths=(256,), lrs=(1e-3,), steps=20000, test_examples=256, eval_every=1000,
                   notes="step-budget probe: length 256, width 256, 20k steps, accuracy every 1000"),
    # The same with Zoology's 16 pairs at length 256 instead of the spec's 64: is it the count?
    "budget-16pairs": Grid(seq_lens=(256,), widths=(256,), lrs=(1e-3,),
                           steps=20000, test_examples=256, eval_every=1000, kv_pairs=16,
                           notes="step-budget probe: as budget with 16 key-value pairs"),
    # Seconds on a CPU: exercises the whole pipeline, not the claim.
    "smoke": Grid(seq_lens=(24, 48), widths=(16, 32), lrs=(3e-3,), steps=3, batch=4, vocab=64,
                  test_examples=8, notes="pipeline check only"),
}


def mixer_spec(name: str, width: int) -> BlockSpec:
    head_dim = min(64, width)
    if name == "dmattn":
        # keep_window None keeps every causal key; the Doge default window (2048) equals the
        # longest length of the grid, so the two are the same here.
        return DMAttn(head_dim=head_dim)
    if name == "attention":
        return Attention(head_dim=head_dim)
    if name == "ssd":
        return SSD(head_dim=head_dim)
    if name == "linear":
        return LinearAttention(head_dim=head_dim)
    raise ValueError(f"mixer: expected one of {MIXERS}, got {name!r}")


def build_model(mixer: str, width: int, grid: Grid) -> TinyLM:
    return TinyLM([mixer_spec(mixer, width), MLP()] * grid.layers, width, grid.vocab, init=grid.init)


def cell_key(mixer: str, seq_len: int, width: int) -> str:
    return f"{mixer}/seq{seq_len}/d{width}"


def run_key(mixer: str, seq_len: int, width: int, lr: float) -> str:
    return f"{cell_key(mixer, seq_len, width)}/lr{lr:g}"


def answer_logits(model: TinyLM, batch) -> torch.Tensor:
    """(B, n, vocab) logits at the query positions only (the head never sees other positions)."""
    h = model.hidden(batch.inputs)
    idx = batch.query_positions[..., None].expand(-1, -1, h.shape[-1])
    return model.head(h.gather(1, idx))


@torch.no_grad()
def evaluate(model: TinyLM, task: MQARTask, grid: Grid, device) -> float:
    model.eval()
    gen = torch.Generator(device=device).manual_seed(TEST_SEED)
    correct = total = 0
    for start in range(0, grid.test_examples, grid.batch):
        batch = mqar_batch(task, min(grid.batch, grid.test_examples - start), gen, device)
        with autocast(device):
            pred = answer_logits(model, batch).argmax(-1)
        correct += (pred == batch.answers).sum()
        total += batch.answers.numel()
    model.train()
    return float(correct) / total


def train_run(mixer: str, seq_len: int, width: int, lr: float, grid: Grid, device, log=None,
              deadline: float | None = None) -> dict:
    """One run of the sweep; ``log`` (if given) gets a progress line at each loss-curve point, so
    a run killed by a time limit still shows how far it got and whether it was learning. Past
    ``deadline`` (time.monotonic()) the run stops early, is evaluated and says so
    (``cut_by_time_limit``): a budget probe keeps its curve instead of losing the whole run."""
    task = grid.task(seq_len)
    torch.manual_seed(grid.seed)
    model = build_model(mixer, width, grid).to(device)
    opt = make_optimizer(model, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, grid.steps))
    gen = torch.Generator(device=device).manual_seed(grid.seed + 1)
    start = time.perf_counter()
    curve = []  # (step, loss) at ~20 points: enough to see whether and when recall was learned
    accuracy_curve = []  # (step, accuracy) every grid.eval_every steps
    every = max(1, grid.steps // 20)
    cut = False
    for step in range(grid.steps):
        if step and deadline is not None and time.monotonic() > deadline:
            cut, step = True, step - 1  # `step` stays the last step run
            break
        batch = mqar_batch(task, grid.batch, gen, device)
        with autocast(device):
            logits = answer_logits(model, batch)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch.answers.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % every == every - 1 or step == grid.steps - 1:
            curve.append((step + 1, round(float(loss.detach()), 4)))
            if log is not None:
                log(f"mqar {run_key(mixer, seq_len, width, lr)}: step {step + 1}/{grid.steps} "
                    f"loss {curve[-1][1]:.3f} ({time.perf_counter() - start:.0f} s)")
        if grid.eval_every and (step + 1) % grid.eval_every == 0 and step + 1 < grid.steps:
            accuracy_curve.append((step + 1, evaluate(model, task, grid, device)))
            if log is not None:
                log(f"mqar {run_key(mixer, seq_len, width, lr)}: step {step + 1} accuracy "
                    f"{accuracy_curve[-1][1]:.3f} ({time.perf_counter() - start:.0f} s)")
            if accuracy_curve[-1][1] >= SOLVED:
                break
    final_loss = float(loss.detach())
    train_seconds = time.perf_counter() - start
    accuracy = evaluate(model, task, grid, device)
    record = {
        "mixer": mixer, "seq_len": seq_len, "d_model": width, "lr": lr,
        "kv_pairs": task.pairs, "accuracy": accuracy,
        "final_loss": final_loss, "train_seconds": round(train_seconds, 2),
        "params": count_params(model), "steps": step + 1, "batch": grid.batch, "loss_curve": curve,
    }
    if grid.eval_every:
        record["accuracy_curve"] = accuracy_curve + [(step + 1, accuracy)]
    if cut:
        record["cut_by_time_limit"] = True
    record.update(kernel_record())
    return record


def pending_runs(grid: Grid, store: ResultStore, shard: tuple[int, int] = (0, 1)):
    """Runs of this shard not stored yet, in grid order; cells already solved are skipped."""
    done = store.records()
    index, count = shard
    todo = []
    for i, (m, t, d) in enumerate(grid.cells()):
        if i % count != index:
            continue
        cell = [done.get(run_key(m, t, d, lr)) for lr in grid.lrs]
        # a run cut by a time limit short of solving its cell is run again, whole
        cell = [None if r is not None and r.get("cut_by_time_limit") and r["accuracy"] < SOLVED else r
                for r in cell]
        if any(r is not None and r["accuracy"] >= SOLVED for r in cell):
            continue
        todo += [(m, t, d, lr) for lr, r in zip(grid.lrs, cell) if r is None]
    return todo


def run_grid(grid: Grid, store: ResultStore, device=None, shard=(0, 1), max_minutes=None, command="",
             log=print) -> None:
    device = pick_device(device)
    store.start(asdict(grid), axes=("seq_lens", "widths", "mixers", "lrs", "notes"), experiment="mqar",
                hardware=hardware(), command=command,
                kv_pairs={t: grid.task(t).pairs for t in grid.seq_lens})
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    for m, t, d, lr in pending_runs(grid, store, shard):
        if deadline is not None and time.monotonic() > deadline:
            log("mqar: time limit reached; the remaining runs stay pending (rerun to resume)")
            return
        if any(r["accuracy"] >= SOLVED for r in cell_runs(store.records(), m, t, d)):
            continue  # an earlier learning rate of this cell solved it
        try:
            record = train_run(m, t, d, lr, grid, device, log=log, deadline=deadline)
        except Exception as e:  # one broken cell must not cost the rest of the grid
            store.put_error(run_key(m, t, d, lr), e)
            log(f"mqar {run_key(m, t, d, lr)}: FAILED: {type(e).__name__}: {e}")
            continue
        record["device"] = hardware()["device"]
        store.put(run_key(m, t, d, lr), record)
        log(f"mqar {run_key(m, t, d, lr)}: accuracy {record['accuracy']:.3f} "
            f"loss {record['final_loss']:.3f} ({record['train_seconds']:.1f} s)")


def cell_runs(records: dict, mixer: str, seq_len: int, width: int) -> list[dict]:
    prefix = cell_key(mixer, seq_len, width) + "/"
    return [r for k, r in records.items() if k.startswith(prefix)]


def best_per_cell(records: dict) -> dict[tuple[str, int, int], dict]:
    """(mixer, seq_len, width) -> the run with the highest accuracy over the lr sweep."""
    best: dict[tuple[str, int, int], dict] = {}
    for r in records.values():
        key = (r["mixer"], r["seq_len"], r["d_model"])
        if key not in best or r["accuracy"] > best[key]["accuracy"]:
            best[key] = r
    return best


def markdown_table(records: dict) -> str:
    best = best_per_cell(records)
    if not best:
        return "_No MQAR runs stored yet._\n"
    widths = sorted({d for _, _, d in best})
    rows = sorted({(t, m) for m, t, _ in best}, key=lambda tm: (tm[0], MIXERS.index(tm[1]) if tm[1] in MIXERS else 99))
    lines = ["| seq | kv pairs | mixer | " + " | ".join(f"d {d}" for d in widths) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in widths) + " |"]
    for t, m in rows:
        cells = []
        for d in widths:
            r = best.get((m, t, d))
            cut = f", cut at step {r['steps']}" if r is not None and r.get("cut_by_time_limit") else ""
            cells.append("" if r is None else f"{r['accuracy']:.3f} (lr {r['lr']:g}{cut})")
        pairs = next(r["kv_pairs"] for (mm, tt, _), r in best.items() if (mm, tt) == (m, t))
        lines.append(f"| {t} | {pairs} | {MIXER_LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: dict, path) -> None:
    """Accuracy vs width, one panel per length, one line per mixer (the paper's layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_per_cell(records)
    seq_lens = sorted({t for _, t, _ in best})
    widths = sorted({d for _, _, d in best})
    if not seq_lens:
        raise ValueError("records: no MQAR runs to plot")
    fig, axes = plt.subplots(1, len(seq_lens), figsize=(3.2 * len(seq_lens), 3.0), sharey=True, squeeze=False)
    for ax, t in zip(axes[0], seq_lens):
        for m in [m for m in MIXERS if any(k[0] == m for k in best)]:
            pts = sorted((d, r["accuracy"]) for (mm, tt, d), r in best.items() if mm == m and tt == t)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=MIXER_LABELS[m])
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(d) for d in widths])
        ax.minorticks_off()
        ax.set_title(f"Sequence length {t}")
        ax.set_xlabel("Model dimension")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Accuracy")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(path) -> str:
    """From the result file ``path`` (.json): the table (.md beside it) and the figure (.png);
    returns the table."""
    path = Path(path)
    records = ResultStore(path).records()
    table = markdown_table(records)
    path.with_suffix(".md").write_text(table)
    if records:
        plot(records, path.with_suffix(".png"))
    return table
