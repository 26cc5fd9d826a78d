"""The expert-speed figure: forward (and backward) time against the number of experts for the
per-expert-loop top-k MoE, PEER-style product keys and wmzoo's CDMoE.

The numbers come from the CDMoE benchmark (``benchmarks/bench_cdmoe.py``, run on the GPU),
never from this module: it only reads that benchmark's JSON result file and draws it. When no
result file exists it says so and draws nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

# Where the benchmark writes its results (first match wins).
CANDIDATES = ("docs/benchmarks/cdmoe.json", "docs/benchmarks/bench_cdmoe.json", "benchmarks/results/cdmoe.json")
METHOD_KEYS = ("method", "impl", "variant", "name", "kind")
EXPERT_KEYS = ("experts", "n_experts", "num_experts", "N", "n")


def find_results(path: str | Path | None = None) -> Path | None:
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"results: expected the CDMoE benchmark's JSON file, got missing path {str(path)!r}")
        return path
    return next((Path(p) for p in CANDIDATES if Path(p).exists()), None)


def load_rows(path: Path) -> list[dict]:
    """Rows of {method, experts, <timing>_ms ...} from the benchmark's JSON."""
    data = json.loads(Path(path).read_text())
    rows = data if isinstance(data, list) else next(
        (data[k] for k in ("results", "rows", "records") if isinstance(data.get(k), list)), None)
    if rows is None:
        raise ValueError(f"results: expected a list of rows (or under 'results'/'rows'/'records') in {path}")
    out = []
    for r in rows:
        method = next((r[k] for k in METHOD_KEYS if k in r), None)
        experts = next((r[k] for k in EXPERT_KEYS if k in r), None)
        if method is None or experts is None:
            continue
        timings = {k: float(v) for k, v in r.items() if k.endswith("_ms") and isinstance(v, (int, float))}
        out.append({"method": str(method), "experts": int(experts), **timings})
    if not out:
        raise ValueError(f"results: no row of {path} names a method ({'/'.join(METHOD_KEYS)}) and an expert count")
    return out


def plot(rows: list[dict], path: Path) -> None:
    """One panel per timing (forward, forward+backward, ...), time vs experts, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timings = sorted({k for r in rows for k in r if k.endswith("_ms")})
    fig, axes = plt.subplots(1, len(timings), figsize=(4 * len(timings), 3.2), squeeze=False)
    for ax, key in zip(axes[0], timings):
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["experts"], r[key]) for r in rows if r["method"] == method and key in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("Number of experts")
        ax.set_ylabel(key.removesuffix("_ms").replace("_", " ") + " time (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(results: str | Path | None, out: Path) -> str:
    """Draw ``out/expert_speed.png`` from the benchmark's results; returns what was done, in words."""
    path = find_results(results)
    if path is None:
        return ("expert-speed: no CDMoE benchmark results found (looked for "
                + ", ".join(CANDIDATES) + "); run benchmarks/bench_cdmoe.py on a GPU first. Nothing drawn.")
    rows = load_rows(path)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, out / "expert_speed.png")
    return f"expert-speed: drew {out / 'expert_speed.png'} from {len(rows)} rows of {path}"
