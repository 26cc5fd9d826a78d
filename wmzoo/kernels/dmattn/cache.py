"""The decode state of a DMAttn layer: a KV cache bounded at keep_window entries.

Query i keeps the top-w keys of 0..i (rank: bias desc, ties to the more recent key). A key
outside the top-w of a prefix ranks below w keys that stay visible to every later query, so it
can never be selected again: evicting it is exact (wonderful-matrices.md, section 3). The cache
therefore holds exactly the top-w keys seen so far, and a query at the newest position attends
with a plain softmax over all of them.

Slots are unordered and chosen per (batch, kv head); ``valid`` marks the filled ones (always the
first min(length, w)). A decode step replaces the lowest-ranked key in place; a multi-token
update merges and re-selects. Without a window the cache keeps every key and grows by doubling.
"""

from __future__ import annotations

import torch

from ..checks import FLOAT_DTYPES, check_positive, check_tensor
from ..registry import direct_launches, triton_or_reference

try:  # optional fast decode kernel
    from . import triton_backend
except ImportError:
    triton_backend = None


class DMAttnCache:
    def __init__(self, k, v, bias, pos, valid, keep_window: int | None, length: int = 0):
        self.k, self.v = k, v  # (b, slots, hkv, d)
        self.bias = bias  # (b, hkv, slots), fp32 or wider: ranks compare the values exactly
        self.pos = pos  # (b, hkv, slots) int64 position of each cached key; breaks bias ties
        self.valid = valid  # (b, hkv, slots) bool
        self.keep_window = keep_window
        self.length = length  # tokens seen so far

    @classmethod
    def empty(cls, batch: int, kv_heads: int, head_dim: int, *, keep_window: int | None = None,
              dtype: torch.dtype = torch.float32, device=None) -> "DMAttnCache":
        check_positive("batch", batch)
        check_positive("kv_heads", kv_heads)
        check_positive("head_dim", head_dim)
        check_positive("keep_window", keep_window)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype: expected a float dtype, got {dtype}")
        slots = keep_window if keep_window is not None else 16
        bias_dtype = torch.promote_types(dtype, torch.float32)
        return cls(
            torch.zeros(batch, slots, kv_heads, head_dim, dtype=dtype, device=device),
            torch.zeros(batch, slots, kv_heads, head_dim, dtype=dtype, device=device),
            torch.zeros(batch, kv_heads, slots, dtype=bias_dtype, device=device),
            torch.full((batch, kv_heads, slots), -1, dtype=torch.int64, device=device),
            torch.zeros(batch, kv_heads, slots, dtype=torch.bool, device=device),
            keep_window,
        )

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    def memory_bytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self.k, self.v, self.bias, self.pos, self.valid))

    def update(self, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> None:
        """Append keys k, v (b, t_new, hkv, d) with bias (b, hkv, t_new) at the next positions.

        k and v are stored in the cache's dtype. With a window, only the top-w keys so far stay.
        """
        b, _, hkv, d = self.k.shape
        check_tensor("k", k, shape=(b, None, hkv, d), dtypes=FLOAT_DTYPES, device=self.k.device)
        n = k.shape[1]
        check_tensor("v", v, shape=(b, n, hkv, d), dtypes=FLOAT_DTYPES, device=self.k.device)
        check_tensor("bias", bias, shape=(b, hkv, n), dtypes=FLOAT_DTYPES, device=self.k.device)
        k, v, bias = k.to(self.k.dtype), v.to(self.v.dtype), bias.to(self.bias.dtype)
        if n == 1 and self.keep_window is not None and self.length >= self.keep_window:
            self._replace_lowest(k, v, bias)  # the decode step: no position tensor needed
        else:
            pos = torch.arange(self.length, self.length + n, device=self.k.device).expand(b, hkv, n)
            if self.keep_window is None or self.length + n <= self.keep_window:
                self._append(k, v, bias, pos)  # nothing to evict yet: slots fill in order
            else:
                self._merge_top(k, v, bias, pos)
        self.length += n

    def _append(self, k, v, bias, pos) -> None:
        n, start = k.shape[1], self.length
        if start + n > self.slots:
            grow = max(2 * self.slots, start + n) - self.slots
            b, _, hkv, d = self.k.shape
            self.k = torch.cat([self.k, self.k.new_zeros(b, grow, hkv, d)], dim=1)
            self.v = torch.cat([self.v, self.v.new_zeros(b, grow, hkv, d)], dim=1)
            self.bias = torch.cat([self.bias, self.bias.new_zeros(b, hkv, grow)], dim=2)
            self.pos = torch.cat([self.pos, self.pos.new_full((b, hkv, grow), -1)], dim=2)
            self.valid = torch.cat([self.valid, self.valid.new_zeros(b, hkv, grow)], dim=2)
        self.k[:, start : start + n] = k
        self.v[:, start : start + n] = v
        self.bias[:, :, start : start + n] = bias
        self.pos[:, :, start : start + n] = pos
        self.valid[:, :, start : start + n] = True

    def _replace_lowest(self, k, v, bias) -> None:
        """One new key into a full window: it takes the slot of the lowest-ranked cached key iff
        it ranks above it (bias >= that bias: on a tie the newer key wins). In place, O(w); one
        Triton launch where Triton runs, else the torch ops below."""
        def kernel():
            with direct_launches():
                triton_backend.replace_lowest(self.k, self.v, self.bias, self.pos, k, v, bias, self.length)

        triton_or_reference((k, self.k), triton_backend and kernel, lambda: self._replace_lowest_torch(k, v, bias))

    def _replace_lowest_torch(self, k, v, bias) -> None:
        pos = torch.full_like(bias, self.length, dtype=torch.int64)
        low_bias = self.bias.amin(-1, keepdim=True)  # (b, hkv, 1)
        # the oldest among the keys of lowest bias is the lowest-ranked one
        oldest = torch.where(self.bias == low_bias, self.pos, torch.iinfo(torch.int64).max)
        slot = oldest.argmin(-1, keepdim=True)  # (b, hkv, 1)
        enters = bias >= low_bias  # (b, hkv, 1)
        self.bias.scatter_(-1, slot, torch.where(enters, bias, low_bias))
        self.pos.scatter_(-1, slot, torch.where(enters, pos, self.pos.gather(-1, slot)))
        rows = slot.transpose(1, 2)[..., None].expand(-1, -1, -1, self.k.shape[-1])  # (b, 1, hkv, d)
        for cached, new in ((self.k, k), (self.v, v)):
            cached.scatter_(1, rows, torch.where(enters.transpose(1, 2)[..., None], new, cached.gather(1, rows)))

    def _merge_top(self, k, v, bias, pos) -> None:
        """Keep the top-w of (cached keys + new keys), ordered by (bias desc, position desc)."""
        w = self.keep_window
        cand_k = torch.cat([self.k, k], dim=1)  # (b, w + n, hkv, d)
        cand_v = torch.cat([self.v, v], dim=1)
        cand_pos = torch.cat([self.pos, pos], dim=2)  # (b, hkv, w + n); empty slots hold -1
        cand_valid = torch.cat([self.valid, torch.ones_like(pos, dtype=torch.bool)], dim=2)
        cand_bias = torch.cat([self.bias, bias], dim=2)
        # empty slots sort last: -inf bias, and on a tie with a real -inf key, their -1 position
        sort_bias = cand_bias.masked_fill(~cand_valid, float("-inf"))
        by_pos = torch.argsort(cand_pos, dim=-1, descending=True)
        by_rank = torch.sort(sort_bias.gather(-1, by_pos), dim=-1, descending=True, stable=True).indices
        top = by_pos.gather(-1, by_rank)[..., :w]  # (b, hkv, w) candidate index of each kept key
        self.bias = cand_bias.gather(-1, top)
        self.pos = cand_pos.gather(-1, top)
        self.valid = cand_valid.gather(-1, top)
        rows = top.transpose(1, 2)[..., None].expand(-1, -1, -1, self.k.shape[-1])  # (b, w, hkv, d)
        self.k = cand_k.gather(1, rows)
        self.v = cand_v.gather(1, rows)

    def attend(self, q: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """o (b, 1, h, d) for the query q (b, 1, h, d) at the newest position: a softmax over
        every cached key (exactly the keys dmattn keeps for this query) with its bias."""
        b, _, hkv, d = self.k.shape
        check_tensor("q", q, shape=(b, 1, None, d), dtypes=FLOAT_DTYPES, device=self.k.device)
        if q.shape[2] % hkv:
            raise ValueError(f"q: heads {q.shape[2]} must be a multiple of the cache's kv heads {hkv}")
        if self.length == 0:
            raise RuntimeError("attend: the cache is empty; call update with the current key first")
        scale = d**-0.5 if scale is None else scale
        used = self.slots if self.keep_window is not None else self.length
        k, v = self.k[:, :used], self.v[:, :used]
        bias, valid = self.bias[:, :, :used], self.valid[:, :, :used]
        def decode():
            with direct_launches():  # eager: the traceable launch wrapper would cost ~1 ms here
                return triton_backend.decode(q, k, v, bias, valid, scale)

        return triton_or_reference((q, k), triton_backend and decode, lambda: _attend_torch(q, k, v, bias, valid, scale))


def _attend_torch(q, k, v, bias, valid, scale):
    h, hkv = q.shape[2], k.shape[2]
    group = h // hkv
    compute = torch.promote_types(q.dtype, torch.float32)
    qf = q.to(compute)[:, 0].reshape(q.shape[0], hkv, group, q.shape[-1])  # (b, hkv, g, d)
    scores = torch.einsum("bngd,bsnd->bngs", qf, k.to(compute)) * scale + bias.to(compute)[:, :, None]
    scores = scores.masked_fill(~valid[:, :, None], float("-inf"))
    o = torch.einsum("bngs,bsnd->bngd", torch.softmax(scores, dim=-1), v.to(compute))
    return o.reshape(q.shape).to(q.dtype)
