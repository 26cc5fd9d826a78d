"""DMAttn and Attention blocks against each other and against SDPA-free float64 math."""

from __future__ import annotations

import torch

from conftest import assert_close
from wmzoo import Attention, DMAttn


def test_dmattn_with_zero_A_is_plain_attention():
    """A starts at 0: every key gets the same bias, so the layer is causal softmax attention."""
    torch.manual_seed(0)
    dm = DMAttn(heads=4, kv_heads=2, head_dim=16, qk_norm=True).build(64)
    at = Attention(heads=4, kv_heads=2, head_dim=16, qk_norm=True).build(64)
    at.qkv.load_state_dict(dm.qkv.state_dict())
    x = torch.randn(2, 29, 64)
    assert_close(dm(x), at(x), torch.float32)


def test_window_at_least_length_changes_nothing():
    torch.manual_seed(0)
    dm = DMAttn(heads=4, head_dim=16).build(64)
    torch.nn.init.normal_(dm.A)
    windowed = DMAttn(heads=4, head_dim=16, keep_window=29).build(64)
    windowed.load_state_dict(dm.state_dict())
    x = torch.randn(2, 29, 64)
    assert_close(windowed(x), dm(x), torch.float32)


def test_attention_block_matches_float64_softmax():
    torch.manual_seed(0)
    at = Attention(heads=4, kv_heads=1, head_dim=16, rope=False).build(64)
    x = torch.randn(2, 13, 64)
    xd = x.double()
    q = (xd @ at.qkv.q.weight.double().T).view(2, 13, 4, 16)
    k = (xd @ at.qkv.k.weight.double().T).view(2, 13, 1, 16)
    v = (xd @ at.qkv.v.weight.double().T).view(2, 13, 1, 16)
    s = torch.einsum("bihd,bjd->bhij", q, k[:, :, 0]) / 4.0
    s = s.masked_fill(torch.ones(13, 13, dtype=torch.bool).triu(1), float("-inf"))
    o = torch.einsum("bhij,bjd->bihd", s.softmax(-1), v[:, :, 0]).reshape(2, 13, 64)
    assert_close(at(x), o @ at.qkv.o.weight.double().T, torch.float32)
