"""Named recipes: Python functions of a size returning a Recipe (no YAML).

    from wmzoo.recipes import cheems, get_recipe
    print(cheems("60m").table())
    hybrid = cheems("60m").swap(DMAttn, Attention(heads=4, kv_heads=2, head_dim=128))
"""

from __future__ import annotations

from .base import ModelSize, Recipe, carry_over, short_repr
from .cheems import cheems
from .doge import doge
from .llama import llama
from .mamba2 import mamba2
from .sizes import SIZES

RECIPES = {"cheems": cheems, "doge": doge, "mamba2": mamba2, "llama": llama}


def list_recipes() -> list[str]:
    return list(RECIPES)


def get_recipe(name: str, size: str = "tiny") -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"recipe: expected one of {list(RECIPES)}, got {name!r}")
    return RECIPES[name](size)


__all__ = ["Recipe", "ModelSize", "RECIPES", "SIZES", "cheems", "doge", "mamba2", "llama",
           "get_recipe", "list_recipes", "short_repr", "carry_over"]
