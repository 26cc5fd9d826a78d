"""Held-out evaluation: mean next-token loss, and perplexity against evaluation length."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data import sequential_windows
from .lm import CausalLM
from .train import autocast


@torch.no_grad()
def mean_loss(model: CausalLM, tokens: np.ndarray, seq_len: int, max_tokens: int, device="cpu",
              batch_size: int = 16) -> float:
    """Token-weighted mean cross entropy over non-overlapping windows of ``seq_len`` from the
    start of ``tokens``, using at most ``max_tokens`` targets (at least one window)."""
    if len(tokens) <= seq_len:
        raise ValueError(f"seq_len: expected less than the {len(tokens)} held-out tokens, got {seq_len}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    windows = list(sequential_windows(tokens, seq_len, max(1, max_tokens // seq_len)))
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):  # equal-length windows batch without padding
        x = torch.cat([w[0] for w in windows[i : i + batch_size]]).to(device)
        y = torch.cat([w[1] for w in windows[i : i + batch_size]]).to(device)
        with autocast(device):
            out = model(x, y)
        total += out.ce_loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count


def perplexity_by_length(model: CausalLM, tokens: np.ndarray, lengths: Sequence[int], max_tokens: int,
                         device="cpu") -> list[tuple[int, float, float]]:
    """[(length, mean loss, perplexity)]: the same held-out text cut into windows of each length."""
    rows = []
    for length in lengths:
        if length > model.max_seq_len:
            raise ValueError(f"lengths: expected at most max_seq_len={model.max_seq_len}, got {length}")
        loss = mean_loss(model, tokens, length, max_tokens, device)
        rows.append((length, loss, math.exp(loss)))
    return rows


def format_table(rows: list[tuple[int, float, float]], trained_len: int | None = None) -> str:
    lines = [f"{'eval length':>11}  {'loss':>7}  {'perplexity':>10}"]
    for length, loss, ppl in rows:
        mark = "  (trained length)" if length == trained_len else ""
        lines.append(f"{length:>11}  {loss:>7.4f}  {ppl:>10.3f}{mark}")
    return "\n".join(lines)


def plot(rows: list[tuple[int, float, float]], path: Path, title: str, trained_len: int | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r[0] for r in rows], [r[2] for r in rows], marker="o")
    if trained_len is not None:
        ax.axvline(trained_len, linestyle="--", color="grey", label=f"trained length {trained_len}")
        ax.legend()
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity (held-out)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
