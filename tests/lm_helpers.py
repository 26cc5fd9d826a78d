"""Small models shared by the LM, training and CLI tests (odd sizes, every block kind)."""

from __future__ import annotations

import pytest
import torch

from wmzoo import MLP, SSD, CDMoE, DMAttn

# A hybrid that mixes SSD, DMAttn (with a keep window smaller than the sequences) and CDMoE.
HYBRID = [
    SSD(head_dim=16, chunk_size=16),
    CDMoE(experts=16, heads=2, experts_per_head=2, retrieval_dim=8, hidden=32),
    DMAttn(heads=2, kv_heads=1, head_dim=16, keep_window=5),
    MLP(hidden=48),
    SSD(head_dim=16, chunk_size=16),
    CDMoE(experts=16, heads=2, experts_per_head=2, retrieval_dim=8, hidden=32),
]


@pytest.fixture(autouse=True)
def one_thread():
    """These models are made of tiny ops: one thread avoids OpenMP wake-up costs that make
    them many times slower on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
