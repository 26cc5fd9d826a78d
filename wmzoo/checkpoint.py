"""Checkpoints: a directory with the weights as safetensors and, beside them, what a run needs
to continue exactly where it stopped.

    model.safetensors   weights (a tied head is stored once)
    config.json         the recipe (block specs included) and the training settings
    tokenizer.json      the tokenizer
    trainer.pt          optimizer, scheduler, step, data position, RNG states, loss history
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from .lm import CausalLM
from .recipes import Recipe
from .tokenizer import load_tokenizer

WEIGHTS, CONFIG, TRAINER = "model.safetensors", "config.json", "trainer.pt"


def save_checkpoint(directory: str | Path, model: CausalLM, recipe: Recipe, tokenizer,
                    settings: dict[str, Any], trainer_state: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint to a sibling temporary directory, then swap it in, so an
    interrupted save never leaves a half-written checkpoint behind."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / WEIGHTS))
    config = {"recipe": recipe.to_dict(), "vocab_size": model.vocab_size, "settings": settings}
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    tokenizer.save(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER)
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / CONFIG
    if not path.is_file():
        what = "does not exist" if not directory.exists() else f"has no {CONFIG}"
        raise FileNotFoundError(f"checkpoint: expected a wmzoo checkpoint directory, got {str(directory)!r}, which {what}")
    return json.loads(path.read_text())


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu",
                    expect: Recipe | None = None) -> tuple[CausalLM, Recipe, Any, dict[str, Any]]:
    """(model, recipe, tokenizer, config). With ``expect``, a checkpoint of another recipe
    (other blocks, width or size) is refused with both named."""
    config = read_config(directory)
    recipe = Recipe.from_dict(config["recipe"])
    if expect is not None and (expect.specs, expect.d_model) != (recipe.specs, recipe.d_model):
        raise ValueError(
            f"checkpoint: {str(directory)!r} holds recipe {recipe.name} {recipe.size} (d_model={recipe.d_model}, "
            f"{len(recipe.specs)} sublayers), but expected {expect.name} {expect.size} (d_model={expect.d_model}, "
            f"{len(expect.specs)} sublayers); pick the matching --recipe/--size or another --out"
        )
    model = recipe.build(config["vocab_size"])
    missing, unexpected = load_model(model, str(Path(directory) / WEIGHTS), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint: weights do not match recipe {recipe.name} {recipe.size}: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model.to(device), recipe, load_tokenizer(directory), config


def load_trainer_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / TRAINER
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: expected {path} to resume training, which is missing")
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
