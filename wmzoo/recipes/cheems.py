"""Cheems: in every 8 layers 7 SSD mixers and 1 DMAttn (layer i is attention iff i % 8 == 7),
each followed by a CDMoE (or, with ffn="mlp", a gated MLP) feed-forward."""

from __future__ import annotations

from ..blocks import MLP, SSD, CDMoE, DMAttn
from .base import Recipe
from .sizes import get_size, vocab_for

# CDMoE per size. Doge's shapes with a tied 32768 vocabulary leave little room: the mixers
# and embedding take most of each budget, so the shared MLP is narrower than an MLP recipe's
# and the private experts number 576-1024 (the paper's 4096 would double the 320m model).
# Chosen so the totals land within 2% of 20M/60M/160M/320M (`wmzoo info cheems --size ...`).
CDMOE = {
    "tiny": CDMoE(experts=256, heads=2, experts_per_head=4, retrieval_dim=64, hidden=256),
    "20m": CDMoE(experts=1024, heads=4, experts_per_head=8, retrieval_dim=128),
    "60m": CDMoE(experts=576, heads=4, experts_per_head=8, retrieval_dim=128, hidden=512),
    "160m": CDMoE(experts=576, heads=4, experts_per_head=8, retrieval_dim=256, hidden=768),
    "320m": CDMoE(experts=576, heads=4, experts_per_head=8, retrieval_dim=128, hidden=1024),
}
FFN_KINDS = ("cdmoe", "mlp")


def cheems(size: str = "tiny", ffn: str = "cdmoe") -> Recipe:
    s = get_size("cheems", size)
    if ffn not in FFN_KINDS:
        raise ValueError(f"ffn: expected one of {FFN_KINDS}, got {ffn!r}")
    chunk = 64 if size == "tiny" else 256
    mixer = SSD(head_dim=s.head_dim, chunk_size=chunk)
    attention = DMAttn(heads=s.heads, kv_heads=s.kv_heads, head_dim=s.head_dim)
    feed_forward = CDMOE[size.lower()] if ffn == "cdmoe" else MLP()
    specs = []
    for i in range(s.layers):
        specs += [attention if i % 8 == 7 else mixer, feed_forward]
    return Recipe("cheems", size.lower(), s.d_model, tuple(specs), vocab_size=vocab_for(size))
