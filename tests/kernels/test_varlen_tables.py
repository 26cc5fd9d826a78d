"""Sequence indices and DMAttn's query-block tables for packed batches: eager against a plain
Python loop, and (GPU) torch.compile against eager: Inductor on CUDA once shifted them by one
(pytorch/pytorch#182343, searchsorted over a sliced tensor), which made the traced DMAttn ops
wrong while every eager test passed."""

import importlib

import pytest
import torch

from wmzoo.kernels.varlen import positions_from_cu_seqlens, seq_idx_from_cu_seqlens

layout = importlib.import_module("wmzoo.kernels.dmattn.triton_layout")

CASES = [[0, 3, 5], [0, 0, 4, 4, 9], [0, 233, 700], [0, 433, 1300]]  # empty sequences included


def python_seq_idx(cu, total):
    return [next((s for s in range(len(cu) - 1) if cu[s] <= p < cu[s + 1]), len(cu) - 1) for p in range(total)]


def python_block_info(cu, block_m, n_blocks):
    rows = []  # (start, end, first query, sequence) per block, surplus blocks empty at the last start
    for s in range(len(cu) - 1):
        for first in range(cu[s], cu[s + 1], block_m):
            rows.append((cu[s], cu[s + 1], first, s))
    last = len(cu) - 2
    rows += [(cu[last], cu[last], cu[last], last)] * (n_blocks - len(rows))
    return [list(col) for col in zip(*rows)]


@pytest.mark.parametrize("cu", CASES)
def test_tables_match_a_python_loop(cu):
    total = cu[-1] + 2  # two positions past the last boundary
    t = torch.tensor(cu, dtype=torch.int32)
    assert seq_idx_from_cu_seqlens(t, total).tolist() == python_seq_idx(cu, total)
    assert positions_from_cu_seqlens(t, cu[-1]).tolist() == [p - cu[s] for p, s in
                                                               zip(range(cu[-1]), python_seq_idx(cu, cu[-1]))]
    lay = layout.block_layout(cu[-1], t, 128, t.device)
    assert lay.blk_info.tolist() == python_block_info(cu, 128, lay.n_blocks)


@pytest.mark.gpu
def test_gpu_compiled_tables_match_eager():
    torch._dynamo.reset()
    seq = torch.compile(lambda cu, n: seq_idx_from_cu_seqlens(cu, n), fullgraph=True, dynamic=True)
    info = torch.compile(lambda cu, n: layout.block_layout(n, cu, 128, cu.device).blk_info, fullgraph=True,
                         dynamic=True)
    for cu in CASES:
        t = torch.tensor(cu, dtype=torch.int32, device="cuda")
        assert torch.equal(seq(t, cu[-1]), seq_idx_from_cu_seqlens(t, cu[-1])), cu
        assert torch.equal(info(t, cu[-1]), layout.block_layout(cu[-1], t, 128, t.device).blk_info), cu
