"""Depthwise causal conv1d (Mamba2's optional short conv) that respects packed sequences and
carries its last k-1 inputs as decode state."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.varlen import seq_idx_from_cu_seqlens


class CausalConv1d(nn.Module):
    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(channels, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.uniform_(self.weight, -kernel**-0.5, kernel**-0.5)

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None, cu_seqlens=None):
        """x (B, T, C); past (B, k-1, C) inputs before x (zeros at a sequence start).

        Returns (y, new_past). Taps that would reach into another packed sequence are dropped.
        """
        b, t, c = x.shape
        k = self.kernel
        if past is None:
            past = x.new_zeros(b, k - 1, c)
        full = torch.cat([past.to(x.dtype), x], dim=1)  # (B, k-1+T, C)
        same = None
        if cu_seqlens is not None:
            seq = seq_idx_from_cu_seqlens(cu_seqlens, t)
            seq = torch.cat([seq.new_full((k - 1,), -1), seq])  # past belongs to no sequence
        y = self.bias.to(x.dtype)
        for j in range(k):  # tap j looks j steps back
            tap = full[:, k - 1 - j : k - 1 - j + t] * self.weight[:, k - 1 - j].to(x.dtype)
            if cu_seqlens is not None and j > 0:
                same = (seq[k - 1 - j : k - 1 - j + t] == seq[k - 1 :]).to(x.dtype)
                tap = tap * same[None, :, None]
            y = y + tap
        return y, full[:, -(k - 1) :] if k > 1 else full[:, :0]
