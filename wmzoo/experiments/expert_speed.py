"""The expert-speed figure: forward and forward+backward time against the number of experts N
for the per-expert-loop top-k MoE, PEER-style product keys and wmzoo's CDMoE.

The numbers come from the CDMoE benchmark (``benchmarks/bench_cdmoe.py``, run on the GPU; its
``cdmoe.json`` holds ``env`` and ``sweep``: rows of N, ratio, k and per method
``{fwd_ms, fwdbwd_ms}``), never from this module: it only reads that file, draws it and
states the paper's comparison (loop MoE / CDMoE at N = 1024). With no result file it says so.
"""

from __future__ import annotations

import json
from pathlib import Path

# Where the benchmark's cdmoe.json is kept (first match wins).
CANDIDATES = ("docs/benchmarks/cdmoe.json", "benchmarks/results/cdmoe.json")
METHODS = {"loop": ("per-expert-loop MoE", "tab:red"), "peer": ("PEER-style", "tab:blue"),
           "wmzoo": ("wmzoo CDMoE", "tab:green")}
TIMINGS = {"fwd_ms": "forward", "fwdbwd_ms": "forward + backward"}
PAPER_SPEEDUP = (8.0, 10.0)  # CDMoE forward vs the loop MoE at 1024 experts


def find_results(path: str | Path | None = None) -> Path | None:
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"results: expected the CDMoE benchmark's cdmoe.json, got missing path {str(path)!r}")
        return path
    return next((Path(p) for p in CANDIDATES if Path(p).exists()), None)


def load(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    if not isinstance(data.get("sweep"), list) or not data["sweep"]:
        raise ValueError(f"results: expected a non-empty 'sweep' list (rows of N, ratio, k, per-method times) in {path}")
    return data


def speedups(sweep: list[dict]) -> list[dict]:
    """Per row with the loop MoE: how many times faster CDMoE (and PEER) are, fwd and fwd+bwd."""
    out = []
    for r in sweep:
        if "loop" not in r or "wmzoo" not in r:
            continue
        row = {"N": r["N"], "ratio": r["ratio"], "k": r["k"]}
        for t in TIMINGS:
            if t in r["loop"] and t in r["wmzoo"]:
                row[f"loop/cdmoe {t}"] = r["loop"][t] / r["wmzoo"][t]
            if "peer" in r and t in r["peer"] and t in r["wmzoo"]:
                row[f"peer/cdmoe {t}"] = r["peer"][t] / r["wmzoo"][t]
        out.append(row)
    return out


def markdown_table(data: dict) -> str:
    lines = ["| N | k | " + " | ".join(f"{METHODS[m][0]} {TIMINGS[t]} (ms)" for m in METHODS for t in TIMINGS)
             + " | loop / CDMoE fwd | PEER / CDMoE fwd |",
             "| --- | --- | " + " | ".join("---" for _ in range(len(METHODS) * len(TIMINGS))) + " | --- | --- |"]
    for r in data["sweep"]:
        cells = [f"{r[m][t]:.3f}" if m in r and t in r[m] else "" for m in METHODS for t in TIMINGS]
        ratio = lambda a: f"{r[a]['fwd_ms'] / r['wmzoo']['fwd_ms']:.1f}x" if a in r and "wmzoo" in r else ""  # noqa: E731
        lines.append(f"| {r['N']} | {r['k']} | " + " | ".join(cells) + f" | {ratio('loop')} | {ratio('peer')} |")
    return "\n".join(lines) + "\n"


def claim(data: dict) -> str:
    """The paper's claim 3 against the measured loop/CDMoE forward ratio at N = 1024."""
    rows = [s for s in speedups(data["sweep"]) if s["N"] == 1024 and "loop/cdmoe fwd_ms" in s]
    if not rows:
        return "not measured: the benchmark has no loop-MoE row at N = 1024"
    parts = [f"k = {s['k']} ({s['ratio']} sqrt(N)): {s['loop/cdmoe fwd_ms']:.1f}x" for s in rows]
    lo, hi = PAPER_SPEEDUP
    best = max(s["loop/cdmoe fwd_ms"] for s in rows)
    word = "not reached" if best < lo else ("reached" if best <= hi else "exceeded")
    return f"CDMoE forward vs the loop MoE at N = 1024: {'; '.join(parts)} (paper: {lo:g}-{hi:g}x; {word})"


def plot(data: dict, path: Path) -> None:
    """One panel per timing, time vs N (log-log), solid k = sqrt(N), dashed other ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = data["sweep"]
    ratios = sorted({r["ratio"] for r in sweep}, reverse=True)
    fig, axes = plt.subplots(1, len(TIMINGS), figsize=(5 * len(TIMINGS), 4.6), squeeze=False)
    for ax, (t, title) in zip(axes[0], TIMINGS.items()):
        for m, (label, color) in METHODS.items():
            for ratio in ratios:
                pts = sorted((r["N"], r[m][t]) for r in sweep if m in r and t in r[m] and r["ratio"] == ratio)
                if len(pts) > 1:
                    ax.plot(*zip(*pts), marker="o", ms=3, color=color, ls="-" if ratio == 1.0 else "--",
                            alpha=1.0 if ratio == 1.0 else 0.5, label=f"{label}, k = {ratio:g} sqrt(N)")
                elif pts:
                    ax.scatter(*zip(*pts), color=color, marker="x", s=18)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("Number of experts N")
        ax.set_ylabel("time (ms, median)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7)  # below the panels, off the data
    env = data.get("env") or {}
    if env:
        fig.suptitle(f"{env.get('device')}, {env.get('tokens')} tokens, d {env.get('d')}, {env.get('dtype')}", fontsize=9)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(results: str | Path | None, out: Path) -> str:
    """Draw ``out/expert_speed.png`` and keep a copy of the benchmark's results as
    ``out/expert_speed.json`` (what the report reads); returns what was done, in words."""
    path = find_results(results)
    if path is None:
        return ("expert-speed: no CDMoE benchmark results found (looked for " + ", ".join(CANDIDATES)
                + "); run benchmarks/bench_cdmoe.py on a GPU first, or pass --results. Nothing drawn.")
    data = load(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "expert_speed.json").write_text(json.dumps({"source": str(path), "env": data.get("env"),
                                                      "sweep": data["sweep"]}, indent=1))
    plot(data, out / "expert_speed.png")
    return (f"expert-speed: drew {out / 'expert_speed.png'} from {len(data['sweep'])} rows of {path}\n"
            + markdown_table(data) + claim(data))
