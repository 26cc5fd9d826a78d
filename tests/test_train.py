"""Training: the loss falls, the schedule, accumulation, checkpoints round-trip, and a resumed
run equals the uninterrupted one step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm_helpers import HYBRID, one_thread  # noqa: F401 (autouse fixture)
from wmzoo.checkpoint import load_checkpoint, load_trainer_state, save_checkpoint
from wmzoo.corpus import stdlib_documents
from wmzoo.data import PackedBatches
from wmzoo.recipes import Recipe, cheems
from wmzoo.tokenizer import ByteTokenizer
from wmzoo.train import Trainer, TrainConfig, WarmupStableDecay

RECIPE = Recipe("test-hybrid", "tiny", 32, tuple(HYBRID), vocab_size=257, max_seq_len=256)


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    """Real text: the first 200 kB of the standard library's sources, as bytes."""
    return ByteTokenizer().encode_documents(t for _, t in stdlib_documents(max_bytes=200_000))


def trainer(tokens, steps, batch_size=4, seq_len=33, accum=1, lr=1e-2, seed=0, **schedule) -> Trainer:
    torch.manual_seed(seed)
    model = RECIPE.build(257)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, accum=accum, lr=lr, seed=seed, **schedule)
    return Trainer(model, PackedBatches(tokens, batch_size, seq_len, seed=seed), cfg)


def test_loss_falls_over_a_few_dozen_steps(tokens):
    tr = trainer(tokens, steps=40, batch_size=8, seq_len=65)
    losses = tr.run(progress=False)
    assert len(losses) == 40 and np.isfinite(losses).all()
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert losses[0] > 5.0  # about ln(257) = 5.55: an untrained byte model
    assert last < first - 1.5, (first, last)


def test_warmup_stable_decay_schedule():
    s = WarmupStableDecay(warmup=4, steps=20, decay_steps=5, final_ratio=0.1)
    f = [s(i) for i in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4:15] == [1.0] * 11
    assert f[15:] == pytest.approx([1 - 0.9 * k / 5 for k in range(1, 6)])
    tr = trainer(np.arange(500, dtype=np.int32) % 257, steps=20, warmup_steps=4, decay_fraction=0.25,
                 final_lr_ratio=0.1)
    assert tr.scheduler.lr_lambdas[0] == s
    lrs = []
    for _ in range(3):
        lrs.append(tr.optimizer.param_groups[0]["lr"])
        tr.train_step()
    assert lrs == pytest.approx([1e-2 * 0.25, 1e-2 * 0.5, 1e-2 * 0.75])


def test_weight_decay_only_on_matrices(tokens):
    tr = trainer(tokens, steps=1)
    decay, keep = tr.optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and keep["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in keep["params"])
    assert tr.optimizer.defaults["betas"] == (0.9, 0.95)


def grads_at_optimizer_step(tr: Trainer) -> list[torch.Tensor]:
    """The gradients the optimizer is handed in the next train_step."""
    seen, step = [], tr.optimizer.step

    def snapshot(*args, **kwargs):
        seen.extend(p.grad.clone() for p in tr.model.parameters())
        return step(*args, **kwargs)

    tr.optimizer.step = snapshot
    return seen


def test_accumulation_equals_one_big_batch(tokens):
    """2 micro-batches of 4 read the same 8 samples as one batch of 8: same loss, same gradient.
    (Gradients, not parameters after the step: AdamW's first step divides each gradient by its
    own magnitude, so rounding in a near-zero gradient moves a parameter by up to lr.)"""
    a, b = trainer(tokens, 1, batch_size=4, accum=2), trainer(tokens, 1, batch_size=8, accum=1)
    ga, gb = grads_at_optimizer_step(a), grads_at_optimizer_step(b)
    la, lb = a.train_step(), b.train_step()
    assert la == pytest.approx(lb, rel=1e-5)
    assert len(ga) == len(gb) == len(list(a.model.parameters()))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5 * float(y.abs().max()))


def test_resume_equals_uninterrupted_step_for_step(tokens, tmp_path):
    straight = trainer(tokens, steps=8, accum=2)
    full = straight.run(progress=False)

    first = trainer(tokens, steps=8, accum=2)
    first.run(until=4, progress=False)
    save_checkpoint(tmp_path / "ckpt", first.model, RECIPE, ByteTokenizer(), {}, first.state_dict())
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    model, recipe, _, _ = load_checkpoint(tmp_path / "ckpt", expect=RECIPE)
    resumed = Trainer(model, PackedBatches(tokens, 4, 33, seed=0), first.config)
    resumed.load_state_dict(load_trainer_state(tmp_path / "ckpt"))
    assert resumed.step == 4 and resumed.data_position == 8
    rest = resumed.run(progress=False)
    assert resumed.losses[:4] == full[:4] and rest == full[4:]  # bitwise equal, step for step
    for pa, pb in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(pa, pb)


def test_checkpoint_round_trip_and_generation(tokens, tmp_path):
    tr = trainer(tokens, steps=3)
    tr.run(progress=False)
    save_checkpoint(tmp_path / "c", tr.model, RECIPE, ByteTokenizer(), {"note": 1})
    assert (tmp_path / "c" / "model.safetensors").is_file() and not (tmp_path / "c.tmp").exists()
    model, recipe, tok, config = load_checkpoint(tmp_path / "c")
    assert recipe == RECIPE and config["settings"] == {"note": 1} and isinstance(tok, ByteTokenizer)
    for (na, pa), (nb, pb) in zip(model.state_dict().items(), tr.model.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    prompt = torch.tensor([tok.encode("def ")])
    assert torch.equal(model.generate(prompt, 12), tr.model.generate(prompt, 12))
    with pytest.raises(FileNotFoundError, match="trainer.pt"):
        load_trainer_state(tmp_path / "c")


def test_checkpoint_of_another_recipe_is_refused(tmp_path):
    model = RECIPE.build(257)
    save_checkpoint(tmp_path / "c", model, RECIPE, ByteTokenizer(), {})
    with pytest.raises(ValueError, match="holds recipe test-hybrid tiny .* but expected cheems tiny"):
        load_checkpoint(tmp_path / "c", expect=cheems("tiny"))
    with pytest.raises(FileNotFoundError, match="expected a wmzoo checkpoint directory.*does not exist"):
        load_checkpoint(tmp_path / "missing")


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="steps: expected a positive integer, got 0"):
        TrainConfig(steps=0)
    with pytest.raises(RuntimeError, match="device: expected a CUDA GPU") if not torch.cuda.is_available() else pytest.raises(Exception):
        Trainer(RECIPE.build(257), PackedBatches(np.arange(100, dtype=np.int32), 16, 4), TrainConfig(steps=1, batch_size=16, seq_len=4, device="cuda"))


def test_mean_loss_is_the_token_weighted_cross_entropy(tokens):
    from wmzoo.evaluate import mean_loss

    model = RECIPE.build(257).double()
    got = mean_loss(model, tokens[:200], seq_len=19, max_tokens=60, batch_size=2)  # 3 windows, 2 batches
    ref = []
    with torch.no_grad():
        for i in range(3):
            w = torch.from_numpy(tokens[i * 19 : (i + 1) * 19 + 1].astype(np.int64))
            logp = model(w[None, :-1]).logits[0].double().log_softmax(-1)
            ref.append(-logp.gather(-1, w[1:, None]))
    assert got == pytest.approx(torch.cat(ref).mean().item(), rel=1e-10)
