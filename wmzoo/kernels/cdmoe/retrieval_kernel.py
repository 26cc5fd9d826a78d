"""Fused product-key retrieval forward: per (block of tokens, head) one program computes the
two halves' S scores, the top-k of each, the candidate sums, their top-k and the softmax.

Only the S scores of a half live at once (in registers). The k*k combination is pruned
exactly: with both halves sorted (score desc, id asc), the pair at sorted positions (i, j)
is beaten by every pair (i' <= i, j' <= j), which are (i+1)(j+1) - 1 pairs; so only pairs
with (i+1)(j+1) <= k can be in the top-k (sum over i of k // (i+1) ~ k ln k candidates,
280 instead of 4096 at k = 64). The sorted halves go through a small scratch buffer so the
candidates can be read back by position.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..registry import INTERPRET, Unsupported, launch
from .topk_keys import EMPTY_KEY, pack_key, unpack_key

BLOCK_N = 16  # tokens per program: the smallest M of tl.dot
MAX_S = 1024  # sub-keys per half held in registers (N <= 2^20 experts)
MAX_CANDIDATES = 512  # padded pruned pair count (k <= 96)


def candidate_count(k: int) -> int:
    """Number of sorted-position pairs (i, j) with (i + 1) * (j + 1) <= k."""
    return sum(k // (i + 1) for i in range(k))


@triton.jit
def _retrieval_fwd_kernel(
    q_ptr, keys_ptr, w_ptr, idx_ptr, half_val_ptr, half_id_ptr,
    n, heads, S, R_HALF,
    K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, UPCAST: tl.constexpr, EMPTY: tl.constexpr,
):
    pid_n = tl.program_id(0)
    h = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    cols = tl.arange(0, BLOCK_S)
    col_ok = cols < S
    # scratch layout (n, heads, 2, K): the sorted top-k of each half
    scratch_row = (rows * heads + h) * 2 * K

    for half in tl.static_range(2):
        scores = tl.zeros((BLOCK_N, BLOCK_S), dtype=tl.float32)
        for r0 in range(0, R_HALF, BLOCK_R):
            rr = r0 + tl.arange(0, BLOCK_R)
            r_ok = rr < R_HALF
            q = tl.load(
                q_ptr + (rows[:, None] * heads + h) * 2 * R_HALF + half * R_HALF + rr[None, :],
                mask=row_ok[:, None] & r_ok[None, :], other=0.0,
            )
            kt = tl.load(
                keys_ptr + ((h * 2 + half) * S + cols[None, :]) * R_HALF + rr[:, None],
                mask=r_ok[:, None] & col_ok[None, :], other=0.0,
            )
            if UPCAST:
                scores += tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision="ieee")
            else:
                scores += tl.dot(q, kt)
        key = tl.where(col_ok[None, :], pack_key(scores, cols[None, :]), EMPTY)
        for j in range(K):
            best = tl.max(key, axis=1)
            key = tl.where(key == best[:, None], EMPTY, key)
            val, pos = unpack_key(best)
            tl.store(half_val_ptr + scratch_row + half * K + j, val, mask=row_ok)
            tl.store(half_id_ptr + scratch_row + half * K + j, pos.to(tl.int32), mask=row_ok)
    tl.debug_barrier()  # the scratch rows written above are read by other threads below

    # pruned candidate list: row i of the pair grid holds j < K // (i + 1)
    p = tl.arange(0, BLOCK_P)
    pi = tl.zeros((BLOCK_P,), dtype=tl.int32)
    start = tl.zeros((BLOCK_P,), dtype=tl.int32)
    offset = K  # start of row i (row 0 holds K pairs)
    for i in range(1, K):
        reached = p >= offset
        pi = tl.where(reached, i, pi)
        start = tl.where(reached, offset, start)
        offset += K // (i + 1)
    pj = p - start
    cand_ok = row_ok[:, None] & (p < offset)[None, :]
    v1 = tl.load(half_val_ptr + scratch_row[:, None] + pi[None, :], mask=cand_ok, other=0.0)
    a = tl.load(half_id_ptr + scratch_row[:, None] + pi[None, :], mask=cand_ok, other=0)
    v2 = tl.load(half_val_ptr + scratch_row[:, None] + K + pj[None, :], mask=cand_ok, other=0.0)
    b = tl.load(half_id_ptr + scratch_row[:, None] + K + pj[None, :], mask=cand_ok, other=0)
    key = tl.where(cand_ok, pack_key(v1 + v2, a * S + b), EMPTY)

    kk = tl.arange(0, BLOCK_K)
    top = tl.full((BLOCK_N, BLOCK_K), float("-inf"), dtype=tl.float32)
    ids = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.int64)
    for j in range(K):
        best = tl.max(key, axis=1)
        key = tl.where(key == best[:, None], EMPTY, key)
        val, e = unpack_key(best)
        val = tl.where(row_ok, val, 0.0)  # padding rows: no NaN from the empty key
        top = tl.where(kk[None, :] == j, val[:, None], top)
        ids = tl.where(kk[None, :] == j, e[:, None], ids)
    e = tl.exp(top - tl.max(top, axis=1)[:, None])  # padding columns hold -inf: exp gives 0
    w = e / tl.sum(e, axis=1)[:, None]
    out = (rows[:, None] * heads + h) * K + kk[None, :]
    out_ok = row_ok[:, None] & (kk < K)[None, :]
    tl.store(w_ptr + out, w.to(w_ptr.dtype.element_ty), mask=out_ok)
    tl.store(idx_ptr + out, ids, mask=out_ok)


def check_supported(query: Tensor, sub_keys: Tensor, topk: int) -> None:
    S = sub_keys.shape[2]
    if S > MAX_S:
        raise Unsupported(f"S={S} sub-keys per half exceeds {MAX_S} held in registers")
    if triton.next_power_of_2(candidate_count(topk)) > MAX_CANDIDATES:
        raise Unsupported(f"topk={topk} gives more than {MAX_CANDIDATES} pruned candidates")
    if query.dtype == torch.float64:
        raise Unsupported("float64 runs on the reference")


def product_key_topk_triton(query: Tensor, sub_keys: Tensor, topk: int) -> tuple[Tensor, Tensor]:
    check_supported(query, sub_keys, topk)
    n, heads, r = query.shape
    S = sub_keys.shape[2]
    weights = query.new_empty(n, heads, topk)
    indices = query.new_empty(n, heads, topk, dtype=torch.int64)
    half_val = query.new_empty(n, heads, 2, topk, dtype=torch.float32)
    half_id = query.new_empty(n, heads, 2, topk, dtype=torch.int32)
    block_s = max(16, triton.next_power_of_2(S))
    launch(_retrieval_fwd_kernel)[(triton.cdiv(n, BLOCK_N), heads)](
        query, sub_keys, weights, indices, half_val, half_id,
        n, heads, S, r // 2,
        K=topk, BLOCK_N=BLOCK_N, BLOCK_S=block_s, BLOCK_R=max(16, min(64, 8192 // block_s, triton.next_power_of_2(r // 2))),
        BLOCK_K=triton.next_power_of_2(topk), BLOCK_P=max(16, triton.next_power_of_2(candidate_count(topk))),
        UPCAST=INTERPRET or query.dtype == torch.float32, EMPTY=EMPTY_KEY,
        num_warps=8 if block_s >= 512 else 4,
    )
    return weights, indices
