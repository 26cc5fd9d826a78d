"""The training loop: AdamW (0.9, 0.95, weight decay 0.01 on matrices), a warmup-stable-decay
schedule, gradient clipping and accumulation, bf16 autocast on GPU, torch.compile on or off,
a progress bar, and state that resumes exactly (same batches, same RNG, same optimizer)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .checkpoint import rng_states, set_rng_states
from .data import PackedBatches
from .lm import CausalLM


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int | None = None  # default: 5% of the steps
    decay_fraction: float = 0.2  # the last 20% of the steps decay linearly to final_lr_ratio * lr
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    accum: int = 1
    seed: int = 0
    device: str = "cpu"
    compile: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction: expected a number in [0, 1], got {self.decay_fraction}")

    @property
    def warmup(self) -> int:
        return max(1, self.steps // 20) if self.warmup_steps is None else self.warmup_steps

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.accum


@dataclass
class WarmupStableDecay:
    """LR factor: linear warmup to 1, flat, then linear decay to final_ratio over the last
    decay_steps. A callable object (not a lambda) so LambdaLR saves it in its state_dict."""

    warmup: int
    steps: int
    decay_steps: int
    final_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        decay_start = self.steps - self.decay_steps
        if step < decay_start or self.decay_steps == 0:
            return 1.0
        frac = min(1.0, (step - decay_start + 1) / self.decay_steps)
        return 1.0 - (1.0 - self.final_ratio) * frac


def autocast(device: torch.device):
    """bf16 autocast on GPU (weights and optimizer stay fp32); plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    def __init__(self, model: CausalLM, batches: PackedBatches, config: TrainConfig):
        if (batches.batch_size, batches.seq_len) != (config.batch_size, config.seq_len):
            raise ValueError(f"batches: expected batch_size={config.batch_size}, seq_len={config.seq_len}, "
                             f"got {batches.batch_size}, {batches.seq_len}")
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device: expected a CUDA GPU for {config.device!r}, but torch sees none")
        self.model = model.to(self.device)
        self.batches = batches
        # Decay matrices only: norms, skip scales, SSD's A_log/dt_bias and biases keep their scale.
        decay = [p for p in model.parameters() if p.ndim >= 2]
        keep = [p for p in model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": keep, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas,
        )
        schedule = WarmupStableDecay(config.warmup, config.steps, round(config.steps * config.decay_fraction),
                                     config.final_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.forward = torch.compile(model) if config.compile else model
        self.step = 0
        self.data_position = 0  # index of the next micro-batch in the packed stream
        self.losses: list[float] = []
        torch.manual_seed(config.seed)

    def train_step(self) -> float:
        """One optimizer step over ``accum`` micro-batches; returns their mean loss."""
        cfg = self.config
        self.model.train()
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.accum):
            x, y = self.batches.batch(self.data_position + micro)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast(self.device):
                loss = self.forward(x, y).loss
            (loss / cfg.accum).backward()
            total += loss.detach()
        self.data_position += cfg.accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss = (total / cfg.accum).item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss: expected a finite value, got {loss} at step {self.step}; lower --lr")
        self.losses.append(loss)
        return loss

    def run(self, until: int | None = None, progress: bool = True,
            on_step: Callable[[Trainer], None] | None = None) -> list[float]:
        """Train up to step ``until`` (default: the configured steps); the losses of this call."""
        until = self.config.steps if until is None else until
        start = self.step
        bar = tqdm(total=until, initial=start, disable=not progress, unit="step", dynamic_ncols=True)
        t0, tokens = time.perf_counter(), 0
        with bar:
            while self.step < until:
                loss = self.train_step()
                tokens += self.config.tokens_per_step
                lr = self.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):,.0f}", lr=f"{lr:.2e}")
                bar.update(1)
                if on_step is not None:
                    on_step(self)
        return self.losses[start:]

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "data_position": self.data_position,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "losses": list(self.losses),
            "rng": rng_states(),
            "config": dataclasses.asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["step"] > self.config.steps:
            raise ValueError(f"steps: expected at least the checkpoint's step {state['step']}, got {self.config.steps}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.data_position = state["data_position"]
        self.losses = list(state["losses"])
        set_rng_states(state["rng"])
