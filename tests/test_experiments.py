"""The experiments (issue 7): MQAR data, the linear-attention baseline against a float64 loop,
and smoke runs of every command writing its outputs (CPU, seconds)."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import assert_close

from wmzoo.experiments import add_experiment_commands, expert_speed, mqar, rope_ssd
from wmzoo.experiments.cli import main
from wmzoo.experiments.linear_attention import LinearAttention, causal_linear_attention
from wmzoo.experiments.mqar_data import IGNORE, MQARTask, mqar_batch
from wmzoo.experiments.text_data import eval_windows, read_documents, train_eval_split

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- MQAR data


@pytest.mark.parametrize("seq_len,vocab,pairs", [(24, 64, None), (63, 40, 5), (256, 8192, None), (1000, 8192, None)])
def test_mqar_every_query_answer_is_the_value_bound_earlier(seq_len, vocab, pairs):
    task = MQARTask(seq_len, vocab=vocab, kv_pairs=pairs)
    n, half = task.pairs, vocab // 2
    gen = torch.Generator().manual_seed(seq_len)
    b = mqar_batch(task, 6, gen)
    assert b.inputs.shape == (6, seq_len) and b.answers.shape == b.query_positions.shape == (6, n)
    for row in range(6):
        x = b.inputs[row].tolist()
        keys, values = x[0 : 2 * n : 2], x[1 : 2 * n : 2]
        assert len(set(keys)) == n and all(1 <= k < half for k in keys)
        assert all(half <= v < vocab for v in values)
        bound = dict(zip(keys, values))
        positions = b.query_positions[row].tolist()
        assert len(set(positions)) == n and min(positions) >= 2 * n
        # Brute force: at each query position sits a key of the context, and its answer is the
        # value that followed that key there.
        for p, a in zip(positions, b.answers[row].tolist()):
            assert x[p] in bound and bound[x[p]] == a
        assert sorted(x[p] for p in positions) == sorted(keys)  # every key queried exactly once
        assert all(x[p] == 0 for p in range(2 * n, seq_len) if p not in set(positions))
    labels = b.targets()
    assert (labels != IGNORE).sum() == 6 * n
    assert torch.equal(labels.gather(1, b.query_positions), b.answers)


def test_mqar_default_pairs_scale_with_length_and_bad_tasks_are_refused():
    assert [MQARTask(t).pairs for t in (256, 512, 1024, 2048)] == [64, 128, 256, 256]
    with pytest.raises(ValueError, match="kv_pairs"):
        MQARTask(30, kv_pairs=11)
    with pytest.raises(ValueError, match="vocab"):
        MQARTask(64, vocab=7)


# ---------------------------------------------------------------- linear attention


def loop_linear_attention(q, k, v, eps):
    """float64 recurrence: S_t = S_{t-1} + k_t v_t^T, z_t = z_{t-1} + k_t, y_t = q_t S_t / (q_t z_t + eps)."""
    q, k, v = q.double(), k.double(), v.double()
    b, t, h, d = q.shape
    S = torch.zeros(b, h, d, v.shape[-1], dtype=torch.float64)
    z = torch.zeros(b, h, d, dtype=torch.float64)
    out = []
    for i in range(t):
        S = S + k[:, i, :, :, None] * v[:, i, :, None, :]
        z = z + k[:, i]
        num = torch.einsum("bhd,bhde->bhe", q[:, i], S)
        den = torch.einsum("bhd,bhd->bh", q[:, i], z)
        out.append(num / (den[..., None] + eps))
    return torch.stack(out, 1)


@pytest.mark.parametrize("t,chunk", [(1, 16), (63, 16), (65, 64), (130, 32)])
def test_causal_linear_attention_matches_float64_loop(t, chunk):
    torch.manual_seed(t)
    q, k = torch.rand(2, t, 3, 5), torch.rand(2, t, 3, 5)  # positive, as after the feature map
    v = torch.randn(2, t, 3, 7)
    out = causal_linear_attention(q, k, v, chunk_size=chunk, eps=1e-6)
    assert_close(out, loop_linear_attention(q, k, v, 1e-6), torch.float32)


def test_linear_attention_block_forward_and_backward_match_float64_loop():
    torch.manual_seed(0)
    d, hd = 24, 8
    block = LinearAttention(head_dim=hd, chunk_size=16).build(d)
    x = torch.randn(2, 37, d, requires_grad=True)
    out = block(x)
    out.square().sum().backward()

    x64 = x.detach().double().requires_grad_()
    W = {n: getattr(block.qkv, n).weight.detach().double() for n in "qkvo"}
    heads = lambda y: y.view(2, 37, d // hd, hd)  # noqa: E731
    phi = lambda y: torch.nn.functional.elu(y) + 1  # noqa: E731
    y = loop_linear_attention(phi(heads(x64 @ W["q"].T)), phi(heads(x64 @ W["k"].T)), heads(x64 @ W["v"].T), 1e-6)
    ref = y.reshape(2, 37, d) @ W["o"].T
    ref.square().sum().backward()
    assert_close(out, ref, torch.float32, "forward")
    assert_close(x.grad, x64.grad, torch.float32, "dx")


def test_linear_attention_refuses_decode_state():
    from wmzoo.context import Context

    block = LinearAttention(head_dim=8).build(16)
    with pytest.raises(ValueError, match="decode state"):
        block(torch.randn(1, 3, 16), Context(state=object()))


# ---------------------------------------------------------------- text data


def test_tarball_documents_are_read_in_name_order_and_every_tenth_is_held_out(tmp_path):
    tar_path = tmp_path / "docs.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for i in reversed(range(12)):
            data = f"doc{i:02d} ".encode()
            info = tarfile.TarInfo(f"./d/f{i:02d}.rst.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    docs = read_documents(tar_path)
    assert docs == [f"doc{i:02d} " for i in range(12)]
    train, held = train_eval_split(docs)
    assert bytes(held.tolist()).decode() == "doc09 "
    assert "doc09" not in bytes(train.tolist()).decode()


def test_every_evaluation_length_scores_the_same_bytes():
    tokens = torch.arange(1000) % 256
    for n in (16, 32, 64):
        w = eval_windows(tokens, n, 256)
        assert w.shape == (256 // n, n + 1)
        assert torch.equal(w[:, 1:].flatten(), tokens[1:257])  # the predicted targets


def test_tiny_lm_inits_draw_the_stated_scales_and_refuse_unknown_ones():
    from wmzoo import MLP, Attention
    from wmzoo.experiments.model import TinyLM

    specs = [Attention(head_dim=32), MLP()]
    torch.manual_seed(0)
    fan = TinyLM(specs, 128, 512, init="fan_in")
    cheems = TinyLM(specs, 128, 512, init="cheems")
    assert fan.embed.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert cheems.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    linears = [m for m in fan.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) >= 6  # q, k, v, o, the MLP's and the head
    for m in linears:
        assert m.weight.std().item() == pytest.approx(m.in_features**-0.5, rel=0.1), m
    for m in cheems.modules():
        if isinstance(m, torch.nn.Linear):
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.1), m
    with pytest.raises(ValueError, match="init: expected one of"):
        TinyLM(specs, 128, 512, init="xavier")


# ---------------------------------------------------------------- smoke runs


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    """One smoke run of each trained experiment, through the command line; MQAR in two shards."""
    out = tmp_path_factory.mktemp("experiments")
    threads = torch.get_num_threads()
    # Tiny models gain nothing from threads, and on a busy CI machine threads oversubscribe
    # (measured here: 30x slower with 2 threads under load).
    torch.set_num_threads(1)
    try:
        main(["mqar", "--grid", "smoke", "--out", str(out), "--shard", "0/2"])
        main(["mqar", "--grid", "smoke", "--out", str(out), "--shard", "1/2"])
        # One seed per call, as parallel processes on a GPU do; they share the result file.
        for seed in rope_ssd.CONFIGS["smoke"].seeds:
            main(["rope-ssd", "--config", "smoke", "--out", str(out), "--seeds", str(seed)])
    finally:
        torch.set_num_threads(threads)
    return out


def test_mqar_smoke_writes_every_run_its_table_and_figure(smoke_dir):
    grid = mqar.GRIDS["smoke"]
    data = json.loads((smoke_dir / "mqar-smoke.json").read_text())
    assert set(data["records"]) == {mqar.run_key(m, t, d, lr) for m, t, d in grid.cells() for lr in grid.lrs}
    for r in data["records"].values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["steps"] == grid.steps and r["loss_curve"]
        assert r["deterministic"] is True  # the default: runs of one seed repeat
    assert not torch.are_deterministic_algorithms_enabled()  # switched on for the runs only
    assert [c.split(" --shard ")[-1].split()[0] for c in data["meta"]["commands"]] == ["0/2", "1/2"]
    assert (smoke_dir / "mqar-smoke.png").stat().st_size > 0
    table = (smoke_dir / "mqar-smoke.md").read_text()
    assert "Linear attention" in table and "| 48 |" in table


def test_mqar_seed_runs_another_draw_into_its_own_file(smoke_dir, tmp_path):
    out = tmp_path / "seeded"
    shutil.copytree(smoke_dir, out)
    main(["mqar", "--grid", "smoke", "--out", str(out), "--seed", "5"])
    base = json.loads((out / "mqar-smoke.json").read_text())
    seeded = json.loads((out / "mqar-smoke-seed5.json").read_text())
    assert seeded["meta"]["protocol"]["seed"] == 5 and base["meta"]["protocol"]["seed"] == 0
    assert set(seeded["records"]) == set(base["records"])
    assert [r["final_loss"] for r in seeded["records"].values()] != [r["final_loss"] for r in base["records"].values()]
    with pytest.raises(SystemExit, match="cpu-probe-v64-fan-in-seed1"):  # that draw is a grid of its own
        main(["mqar", "--grid", "cpu-probe-v64-fan-in", "--out", str(out), "--seed", "1"])


def test_mqar_eval_every_keeps_an_accuracy_curve_and_stops_once_solved(monkeypatch):
    from dataclasses import replace

    grid = replace(mqar.GRIDS["smoke"], steps=12, eval_every=4, kv_pairs=3)
    scores = iter([0.25, 0.5, 0.75])  # never solved: the run goes the whole way
    monkeypatch.setattr(mqar, "evaluate", lambda *a: next(scores))
    r = mqar.train_run("attention", 24, 16, 3e-3, grid, torch.device("cpu"))
    assert r["kv_pairs"] == 3 and r["steps"] == 12
    assert r["accuracy_curve"] == [(4, 0.25), (8, 0.5), (12, 0.75)] and r["accuracy"] == 0.75
    scores = iter([0.5, mqar.SOLVED, 0.0])  # solved at the second evaluation: stop there
    r = mqar.train_run("attention", 24, 16, 3e-3, grid, torch.device("cpu"))
    assert r["steps"] == 8 and r["accuracy_curve"][-2:] == [(8, mqar.SOLVED), (8, 0.0)]


def test_mqar_run_past_its_deadline_stops_says_so_and_is_run_again(monkeypatch):
    """A run cut by the time limit keeps what it learned so far (steps run, curve, accuracy)
    and is marked; a grid rerun treats it as pending, so a cut run never stands for the cell."""
    from dataclasses import replace

    grid = replace(mqar.GRIDS["smoke"], steps=12, eval_every=4, kv_pairs=3)
    clock = iter(range(100))  # time.monotonic() advances by one "second" per call
    monkeypatch.setattr(mqar.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(mqar, "evaluate", lambda *a: 0.5)
    r = mqar.train_run("attention", 24, 16, 3e-3, grid, torch.device("cpu"), deadline=5)
    assert r["cut_by_time_limit"] and 0 < r["steps"] < 12 and r["accuracy_curve"][-1] == (r["steps"], 0.5)

    class Store:
        def records(self):
            return {mqar.run_key("attention", 24, 16, 3e-3): r}

    assert ("attention", 24, 16, 3e-3) in mqar.pending_runs(replace(grid, seq_lens=(24,), widths=(16,)), Store())


def test_mqar_rerun_trains_nothing_stored_and_refuses_another_protocol(smoke_dir, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(mqar, "train_run", no_training)
    before = (smoke_dir / "mqar-smoke.json").read_text()
    main(["mqar", "--grid", "smoke", "--out", str(smoke_dir)])  # everything stored: nothing to do
    assert json.loads((smoke_dir / "mqar-smoke.json").read_text())["records"] == json.loads(before)["records"]
    with pytest.raises(ValueError, match="another protocol"):
        main(["mqar", "--grid", "smoke", "--out", str(smoke_dir), "--steps", "5"])


def test_rope_ssd_smoke_writes_outputs_and_pairs_the_arms(smoke_dir):
    data = json.loads((smoke_dir / "rope_ssd-smoke.json").read_text())
    cfg = rope_ssd.CONFIGS["smoke"]
    assert set(data["records"]) == {rope_ssd.run_key(a, s) for a in rope_ssd.ARMS for s in cfg.seeds}
    assert data["meta"]["protocol"]["seeds"] == list(cfg.seeds)  # the whole config, not the last call's seed
    assert (smoke_dir / "rope_ssd-smoke.png").stat().st_size > 0
    summary = rope_ssd.summarize(data["records"])
    r = data["records"]
    for n in cfg.eval_lens:
        ppl = {k: v["perplexity"][str(n)] for k, v in r.items()}
        assert all(1.0 < p < 1e4 for p in ppl.values())
        manual = [1 - ppl[f"rope/seed{s}"] / ppl[f"norope/seed{s}"] for s in cfg.seeds]
        assert summary["reduction"][n]["mean"] == pytest.approx(sum(manual) / len(manual))


def test_rope_ssd_arms_differ_only_in_ssd_rope():
    on, off = (rope_ssd.hybrid_specs(8, 16, flag) for flag in (True, False))
    assert [type(s).__name__ for s in on] == [type(s).__name__ for s in off]
    assert sum(type(s).__name__ == "Attention" for s in on) == 1  # one attention layer per 8
    diffs = [(a, b) for a, b in zip(on, off) if a != b]
    assert diffs and all(a.replace(rope=False) == b for a, b in diffs)


def test_expert_speed_says_when_there_are_no_results_and_draws_when_there_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = expert_speed.run(None, tmp_path / "out")
    assert "no CDMoE benchmark results found" in message and not (tmp_path / "out").exists()
    # The benchmark's file layout (benchmarks/bench_cdmoe.py), with made-up times: this test
    # checks the drawing and the ratio arithmetic, not any speed.
    sweep = [{"N": n, "ratio": 1.0, "k": int(n**0.5), "loop": {"fwd_ms": 0.1 * n, "fwdbwd_ms": 0.3 * n},
              "peer": {"fwd_ms": 2.0, "fwdbwd_ms": 6.0}, "wmzoo": {"fwd_ms": 1.0 + n / 1024, "fwdbwd_ms": 3.0}}
             for n in (16, 64, 256, 1024)]
    (tmp_path / "cdmoe.json").write_text(json.dumps({"env": {"device": "test"}, "sweep": sweep}))
    message = expert_speed.run(tmp_path / "cdmoe.json", tmp_path / "out")
    assert "4 rows" in message and (tmp_path / "out" / "expert_speed.png").stat().st_size > 0
    assert "k = 32 (1.0 sqrt(N)): 51.2x" in message  # 102.4 ms / 2.0 ms
    assert json.loads((tmp_path / "out" / "expert_speed.json").read_text())["sweep"] == sweep


def test_report_from_smoke_results_through_the_module_entry_point(smoke_dir):
    (smoke_dir / "rope_ssd-smoke.notes.md").write_text("A hand-written reading.")
    out = smoke_dir / "experiments.md"
    subprocess.run([sys.executable, "-m", "wmzoo.experiments", "report", "--results-dir", str(smoke_dir),
                    "--out", str(out)], check=True, cwd=REPO, capture_output=True)
    text = out.read_text()
    assert "## MQAR: `mqar-smoke.json`" in text and "](mqar-smoke.png)" in text
    assert "## RoPE in SSD: `rope_ssd-smoke.json`" in text and "A hand-written reading." in text
    assert "Not run: 64 of the paper grid's 64 cells" in text
    assert "## Expert speed" in text
    assert "- `mqar --grid paper`: 64 cells x 4 learning rates" in text  # listed as not run


def test_add_experiment_commands_plugs_into_another_cli():
    parser = argparse.ArgumentParser(prog="wmzoo")
    add_experiment_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["experiment", "mqar", "--grid", "smoke", "--shard", "1/3"])
    assert args.grid == "smoke" and args.shard == "1/3" and args.func.__name__ == "cmd_mqar"
    args = parser.parse_args(["experiment", "rope-ssd", "--data", "x.tar.gz"])
    assert args.data == "x.tar.gz"
