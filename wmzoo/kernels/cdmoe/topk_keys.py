"""Sortable int64 keys for top-k selection inside Triton kernels.

A key packs an fp32 score (high 32 bits, mapped to an order-preserving int32) with an id
(low 32 bits, stored as 2^32 - 1 - id), so one integer max picks the highest score and, at
equal scores, the lower id: the tie rule of the reference, with a single reduction. Keys in
a row are distinct because ids are, so masking the picked key removes exactly one element.
"""

import triton
import triton.language as tl

# Below every real key: a real key's high half is at least the int32 of -NaN bits, > -2^31.
EMPTY_KEY = -9223372036854775807


@triton.jit
def pack_key(score, ids):
    score = tl.where(score == 0.0, 0.0, score)  # -0.0 and +0.0 are one score, as in torch
    bits = score.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: reverse their order
    return (ordered.to(tl.int64) << 32) | (0xFFFFFFFF - ids.to(tl.int64))


@triton.jit
def unpack_key(key):
    """(score, id) of packed keys."""
    ordered = (key >> 32).to(tl.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    ids = 0xFFFFFFFF - (key & 0xFFFFFFFF)
    return bits.to(tl.float32, bitcast=True), ids
