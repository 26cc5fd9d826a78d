"""Dynamic Mask Attention: causal attention with a per-key bias from the values and an exact
top-w key window (wonderful-matrices.md, section 3), and its bounded decode cache."""

from .cache import DMAttnCache
from .op import dmattn, dmattn_bwd, dmattn_fwd
from .reference import dmattn_reference, dmattn_reference_backward

__all__ = ["dmattn", "DMAttnCache", "dmattn_reference", "dmattn_reference_backward", "dmattn_fwd", "dmattn_bwd"]
