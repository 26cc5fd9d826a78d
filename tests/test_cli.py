"""The `wmzoo` command: help lists the commands, each command runs, errors are one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lm_helpers import one_thread  # noqa: F401 (autouse fixture)
from wmzoo.cli import main

TEXT = "".join(f"def function_{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(400))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "code.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ckpt"
    code = main(["train", "--steps", "3", "--batch-size", "2", "--seq-len", "32", "--data", str(data),
                 "--out", str(out), "--no-progress", "--sample-tokens", "8"])
    assert code == 0
    return out


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "wmzoo.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("train", "generate", "eval", "info", "experiment"):
        assert command in out


def test_experiment_commands_are_wired_into_wmzoo(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("mqar", "rope-ssd", "expert-speed", "report"):
        assert name in out


def test_train_saves_a_checkpoint_and_reports(checkpoint, capsys):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "trainer.pt"):
        assert (checkpoint / name).is_file()
    code, out, _ = run(capsys, "train", "--steps", "5", "--batch-size", "2", "--seq-len", "32", "--data",
                       data_of(checkpoint), "--out", str(checkpoint), "--resume", "--no-progress", "--sample-tokens", "8")
    assert code == 0
    assert "trained steps 3..5" in out and "held-out loss" in out and "perplexity" in out and "sample (prompt 'def '" in out


def test_train_deterministic_is_recorded_and_scoped_to_the_run(data, capsys, tmp_path):
    code, _, _ = run(capsys, "train", "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--data", str(data),
                     "--out", str(tmp_path / "det"), "--no-progress", "--sample-tokens", "4", "--deterministic")
    assert code == 0
    assert json.loads((tmp_path / "det" / "config.json").read_text())["settings"]["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()


def data_of(checkpoint) -> str:
    return json.loads((checkpoint / "config.json").read_text())["settings"]["data"]


def test_generate(checkpoint, capsys):
    code, out, _ = run(capsys, "generate", str(checkpoint), "--prompt", "def f", "--max-new-tokens", "6",
                       "--temperature", "0")
    assert code == 0 and "\ndef f" in out


def test_eval_writes_a_table_and_a_png(checkpoint, capsys, tmp_path):
    png = tmp_path / "ppl.png"
    code, out, _ = run(capsys, "eval", str(checkpoint), "--lengths", "16,32,64", "--max-tokens", "128", "--plot", str(png))
    assert code == 0
    assert "eval length" in out and "(trained length)" in out and len(out.strip().splitlines()) >= 5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_info(capsys):
    code, out, _ = run(capsys, "info", "cheems", "--size", "tiny", "--swap", "DMAttn=Attention")
    assert code == 0 and "Attention(" in out and "DMAttn" not in out and "total" in out
    code, out, _ = run(capsys, "info")
    assert code == 0 and "cheems, doge, mamba2, llama" in out


def test_clear_errors(checkpoint, data, capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x"))
    assert code == 2 and "missing.txt" in err and "does not exist" in err
    code, _, err = run(capsys, "train", "--recipe", "doge", "--data", str(data), "--seq-len", "32",
                       "--out", str(checkpoint), "--resume", "--no-progress")
    assert code == 2 and "holds recipe cheems tiny" in err and "expected doge tiny" in err
    code, _, err = run(capsys, "train", "--data", str(data), "--out", str(checkpoint), "--no-progress")
    assert code == 2 and "already holds a checkpoint" in err and "--resume" in err and "--overwrite" in err
    code, _, err = run(capsys, "generate", str(checkpoint), "--prompt", "x" * 5000, "--max-new-tokens", "10")
    assert code == 2 and "--prompt: expected at most 4086 tokens" in err and "got 5000" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "gpt"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'gpt'" in capsys.readouterr().err
    code, _, err = run(capsys, "info", "cheems", "--swap", "DMAttn=Flash")
    assert code == 2 and "--swap: expected OLD=NEW" in err
