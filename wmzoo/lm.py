"""CausalLM: embedding -> Stack -> final RMSNorm -> LM head (tied or not), loss and generation.

Generation prefills the prompt once into the Stack's decode state (SSD states, KV caches) and
then feeds one token per step: the prefix is never recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks.norm import RMSNorm
from .blocks.rope import RoPE
from .context import Context
from .specs import BlockSpec
from .stack import Stack


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, T, vocab)
    loss: torch.Tensor | None = None  # cross entropy + auxiliary losses
    ce_loss: torch.Tensor | None = None  # cross entropy alone (what perplexity is made of)


class CausalLM(nn.Module):
    def __init__(
        self,
        specs: Sequence[BlockSpec],
        d_model: int,
        vocab_size: int,
        tie_embeddings: bool = True,
        max_seq_len: int = 4096,
        rope_theta: float = 10000.0,
    ):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size: expected at least 2, got {vocab_size}")
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.stack = Stack(specs, d_model, rope=RoPE(theta=rope_theta, max_position=max_seq_len))
        self.norm = RMSNorm(d_model)
        self.head = None
        if not tie_embeddings:
            self.head = nn.Linear(d_model, vocab_size, bias=False)
            nn.init.normal_(self.head.weight, std=0.02)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        return F.linear(h, self.embed.weight) if self.head is None else self.head(h)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None, ctx: Context | None = None) -> LMOutput:
        if tokens.ndim != 2:
            raise ValueError(f"tokens: expected shape (batch, time), got {tuple(tokens.shape)}")
        ctx = Context() if ctx is None else ctx
        logits = self.logits(self.stack(self.embed(tokens), ctx))
        if targets is None:
            return LMOutput(logits)
        if targets.shape != tokens.shape:
            raise ValueError(f"targets: expected shape {tuple(tokens.shape)} (as tokens), got {tuple(targets.shape)}")
        # At least fp32 (bf16 logits under autocast), float64 stays float64.
        acc = torch.promote_types(logits.dtype, torch.float32)
        ce = F.cross_entropy(logits.to(acc).flatten(0, 1), targets.flatten())
        return LMOutput(logits, ce + ctx.aux_loss, ce)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens: Sequence[int] = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, T) prompt -> (B, T + n) tokens, n <= max_new_tokens.

        temperature 0 is greedy; otherwise sample from softmax(logits / temperature), restricted
        to the top_k most likely tokens and to the smallest set whose probability reaches top_p.
        Generation ends when every row has produced a stop token; rows that stopped earlier are
        padded with their stop token.
        """
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt: expected shape (batch, time >= 1), got {tuple(prompt.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected >= 0, got {max_new_tokens}")
        total = prompt.shape[1] + max_new_tokens
        if total > self.max_seq_len:
            raise ValueError(
                f"prompt: expected prompt tokens + max_new_tokens <= max_seq_len={self.max_seq_len}, "
                f"got {prompt.shape[1]} + {max_new_tokens} = {total}"
            )
        if temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k: expected >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p: expected a number in (0, 1], got {top_p}")
        was_training = self.training
        self.eval()
        b = prompt.shape[0]
        param = self.embed.weight
        state = self.stack.init_state(b, device=param.device, dtype=param.dtype)
        stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=prompt.device)
        done = torch.zeros(b, dtype=torch.bool, device=prompt.device)
        out = [prompt]
        step_input = prompt
        for _ in range(max_new_tokens):
            logits = self.logits(self.stack(self.embed(step_input), Context(state=state)))[:, -1].float()
            token = sample_next(logits, temperature, top_k, top_p, generator)
            if stops.numel():
                token = torch.where(done, out[-1][:, -1], token)  # finished rows repeat their stop
                done = done | torch.isin(token, stops)
            out.append(token[:, None])
            step_input = token[:, None]
            if stops.numel() and bool(done.all()):
                break
        self.train(was_training)
        return torch.cat(out, dim=1)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) fp32 logits -> (B,) next tokens."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top one stays).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (a tied head is counted once)."""
    return sum(p.numel() for p in module.parameters())
