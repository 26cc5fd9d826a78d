"""Recipes: the Cheems layer pattern, parameter counts against a real build and against the
block formulas, piecewise swaps, serialisation and clear errors."""

from __future__ import annotations

import pytest
import torch

from wmzoo import MLP, SSD, Attention, CDMoE, DMAttn
from wmzoo.recipes import RECIPES, SIZES, Recipe, carry_over, cheems, doge, get_recipe, llama, mamba2


@pytest.mark.parametrize("size", ["tiny", "320m"])
def test_cheems_pattern_seven_ssd_one_dmattn_per_eight_layers(size):
    r = cheems(size)
    mixers, ffns = r.specs[0::2], r.specs[1::2]
    assert len(mixers) == SIZES[size].layers
    for i, m in enumerate(mixers):
        assert isinstance(m, DMAttn if i % 8 == 7 else SSD), (i, m)
    assert all(isinstance(f, CDMoE) for f in ffns)
    assert all(isinstance(f, MLP) for f in cheems(size, ffn="mlp").specs[1::2])


def test_other_recipes_use_their_blocks():
    assert {type(s) for s in doge("20m").specs} == {DMAttn, CDMoE}
    assert {type(s) for s in llama("20m").specs} == {Attention, MLP}
    m = mamba2("20m").specs
    assert {type(s) for s in m} == {SSD} and m[0].conv1d and m[0].gate and not m[0].rope


def test_parameter_count_equals_a_real_build():
    r = cheems("tiny")
    rows, total = r.parameter_counts(257)
    model = r.build(257)
    assert total == sum(p.numel() for p in model.parameters())
    assert sum(n for _, n in rows) == total
    # Independent count of one SSD sublayer (d=128, 2 heads of 64, N=64, G=H): in_proj
    # d*(H*P + 2*G*N + H), out_proj H*P*d, A_log + dt_bias 2H, pre-norm d, skip scale d.
    d, h, p, n = 128, 2, 64, 64
    assert rows[1][1] == d * (h * p + 2 * h * n + h) + h * p * d + 2 * h + 2 * d


@pytest.mark.parametrize("size,target", [("20m", 20e6), ("60m", 60e6), ("160m", 160e6), ("320m", 320e6)])
def test_cheems_sizes_are_near_their_names(size, target):
    _, total = cheems(size).parameter_counts()
    assert abs(total - target) / target < 0.05, f"{size}: {total:,}"


def test_swap_every_dmattn_for_attention_in_one_call():
    r = cheems("60m")
    swapped = r.swap(DMAttn, lambda s: carry_over(s, Attention))
    old = [i for i, s in enumerate(r.specs) if isinstance(s, DMAttn)]
    assert old == [i for i, s in enumerate(swapped.specs) if isinstance(s, Attention)]
    assert not any(isinstance(s, DMAttn) for s in swapped.specs)
    assert swapped.specs[old[0]] == Attention(heads=4, kv_heads=2, head_dim=128)
    assert all(a == b for a, b in zip(r.specs, swapped.specs) if not isinstance(a, DMAttn))
    assert swapped.swap(CDMoE, MLP()).specs[1] == MLP()
    with pytest.raises(ValueError, match="contain a DMAttn"):
        swapped.swap(DMAttn, Attention())


def test_table_lists_every_sublayer_and_the_total():
    text = cheems("tiny").table()
    assert text.count("SSD(") == 7 and text.count("DMAttn(") == 1 and text.count("CDMoE(") == 8
    assert f"{cheems('tiny').parameter_counts()[1]:,}" in text


def test_recipe_round_trips_through_json_dicts():
    import json

    for name in RECIPES:
        r = get_recipe(name, "tiny")
        assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_layers_are_independent_modules():
    model = cheems("tiny").build()
    a, b = model.stack.layers[0].block, model.stack.layers[2].block
    assert a.in_proj.weight.data_ptr() != b.in_proj.weight.data_ptr()
    assert not torch.equal(a.in_proj.weight, b.in_proj.weight)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"recipe: expected one of \['cheems', 'doge', 'mamba2', 'llama'\], got 'gpt'"):
        get_recipe("gpt")
    with pytest.raises(ValueError, match="size: expected one of .*'tiny'.*got '7b'"):
        cheems("7b")
    with pytest.raises(ValueError, match="ffn"):
        cheems("tiny", ffn="moe")
