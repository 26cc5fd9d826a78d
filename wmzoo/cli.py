"""The `wmzoo` command: train, generate, eval, info.

    wmzoo train                      # cheems tiny on the embedded corpus, then perplexity and a sample
    wmzoo generate runs/cheems-tiny --prompt "def "
    wmzoo eval runs/cheems-tiny      # perplexity vs evaluation length: a table and a PNG
    wmzoo info cheems --size 60m --swap DMAttn=Attention
"""

from __future__ import annotations

import argparse
import shlex
import dataclasses
import sys
import time
from pathlib import Path

import torch

from .specs import SPEC_TYPES
from .recipes import Recipe, carry_over, get_recipe, list_recipes, SIZES

DEFAULT_PROMPT = "def "
EMBEDDED = "the Python standard library's sources (embedded corpus)"


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


def parse_swap(text: str) -> tuple[type, type]:
    old, sep, new = text.partition("=")
    if not sep or old not in SPEC_TYPES or new not in SPEC_TYPES:
        raise UsageError(f"--swap: expected OLD=NEW with block names from {sorted(SPEC_TYPES)}, got {text!r}")
    return SPEC_TYPES[old], SPEC_TYPES[new]


def build_recipe(args) -> Recipe:
    recipe = get_recipe(args.recipe, args.size)
    for text in args.swap:
        old, new = parse_swap(text)
        recipe = recipe.swap(old, lambda spec, new=new: carry_over(spec, new))
    return recipe


def add_recipe_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("recipe", nargs="?", choices=list_recipes(), help="recipe (omit to list them all)")
    else:
        p.add_argument("--recipe", default="cheems", choices=list_recipes(), help="model recipe (default cheems)")
    p.add_argument("--size", default="tiny", choices=list(SIZES), help="model size (default tiny)")
    p.add_argument("--swap", action="append", default=[], metavar="OLD=NEW",
                   help="replace every OLD block by NEW, e.g. DMAttn=Attention (repeatable)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wmzoo", description="Wonderful Matrices models: train, generate, evaluate, inspect.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,generate,eval,info,experiment}")

    t = sub.add_parser("train", help="train a recipe, save a checkpoint, print perplexity and a sample")
    add_recipe_args(t)
    t.add_argument("--data", default=None, help="text file, directory of text files, or hf:NAME[:CONFIG][@SPLIT] "
                   "(default: the Python standard library's sources)")
    t.add_argument("--tokenizer", default="byte", choices=["byte", "bpe"], help="byte (default) or a BPE trained on --data")
    t.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size (default 8192)")
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--seq-len", type=int, default=128)
    t.add_argument("--accum", type=int, default=1, help="gradient accumulation micro-batches per step")
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--warmup", type=int, default=None, help="warmup steps (default 5%% of --steps)")
    t.add_argument("--val-fraction", type=float, default=0.02, help="held-out tail of the token stream")
    t.add_argument("--out", default=None, help="checkpoint directory (default runs/RECIPE-SIZE)")
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    t.add_argument("--save-every", type=int, default=0, help="also save every N steps (0: only at the end)")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--deterministic", action="store_true",
                   help="repeatable runs: torch's deterministic mode, every kernel pinned to one config (may be slower)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt of the sample printed at the end")
    t.add_argument("--sample-tokens", type=int, default=200, help="length of that sample")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    g = sub.add_parser("generate", help="continue a prompt with a trained checkpoint")
    g.add_argument("checkpoint")
    g.add_argument("--prompt", default=DEFAULT_PROMPT)
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--no-stop", action="store_true", help="do not stop at the end-of-document token")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu")

    e = sub.add_parser("eval", help="held-out perplexity against evaluation length: a table and a PNG plot")
    e.add_argument("checkpoint")
    e.add_argument("--data", default=None, help="held-out text (default: the held-out tail of the training data)")
    e.add_argument("--lengths", default=None, help="comma-separated lengths (default: 1/2 to 8 x the trained length)")
    e.add_argument("--max-tokens", type=int, default=16384, help="held-out tokens per length")
    e.add_argument("--plot", default=None, help="PNG path (default CHECKPOINT/perplexity_vs_length.png)")
    e.add_argument("--device", default="cpu")

    i = sub.add_parser("info", help="a recipe's layer table with parameter counts")
    add_recipe_args(i, positional=True)
    i.add_argument("--vocab-size", type=int, default=None, help="vocabulary for the counts (default: the size's)")

    from .experiments.cli import add_experiment_commands

    add_experiment_commands(sub)
    return p


def cmd_train(args) -> None:
    from .kernels.autotune import deterministic_mode

    with deterministic_mode(args.deterministic):
        _train(args)


def _train(args) -> None:
    from .checkpoint import load_checkpoint, load_trainer_state, save_checkpoint
    from .data import PackedBatches, prepare_data
    from .evaluate import mean_loss
    from .lm import count_parameters
    from .train import Trainer, TrainConfig

    recipe = build_recipe(args)
    out = Path(args.out or f"runs/{recipe.name}-{recipe.size}")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                         warmup_steps=args.warmup, accum=args.accum, seed=args.seed, device=args.device,
                         compile=args.compile)
    if not (args.resume or args.overwrite) and (out / "model.safetensors").exists():
        raise UsageError(f"--out: {out} already holds a checkpoint; pass --resume to continue it or --overwrite to replace it")
    if args.seq_len > recipe.max_seq_len:
        raise UsageError(f"--seq-len: expected at most max_seq_len={recipe.max_seq_len}, got {args.seq_len}")
    min_val = 8 * args.seq_len + 1  # eval's longest default window
    tokenizer, train_tokens, val_tokens = prepare_data(args.data, args.tokenizer, args.vocab_size,
                                                       args.val_fraction, min_val)
    settings = {"data": args.data, "tokenizer": args.tokenizer, "val_fraction": args.val_fraction,
                "min_val": min_val, "train": dataclasses.asdict(config), "deterministic": args.deterministic}
    if args.resume:
        model, _, tokenizer, saved = load_checkpoint(out, expect=recipe)
        if saved["settings"]["data"] != args.data or saved["settings"]["tokenizer"] != args.tokenizer:
            raise UsageError(f"--resume: {out} was trained on data={saved['settings']['data']!r} with the "
                             f"{saved['settings']['tokenizer']} tokenizer; got data={args.data!r}, {args.tokenizer}")
    else:
        torch.manual_seed(args.seed)
        model = recipe.build(tokenizer.vocab_size)
    trainer = Trainer(model, PackedBatches(train_tokens, args.batch_size, args.seq_len, seed=args.seed), config)
    if args.resume:
        trainer.load_state_dict(load_trainer_state(out))
    source = args.data or EMBEDDED
    print(f"{recipe.name} {recipe.size}: {count_parameters(model) / 1e6:.2f}M parameters, vocab {tokenizer.vocab_size} "
          f"({tokenizer.kind}); data: {source}, {len(train_tokens):,} train / {len(val_tokens):,} held-out tokens; "
          f"{config.tokens_per_step:,} tokens per step on {args.device}", flush=True)

    def save(tr: Trainer) -> None:
        save_checkpoint(out, model, recipe, tokenizer, settings, tr.state_dict())

    def periodic(tr: Trainer) -> None:
        if args.save_every and tr.step % args.save_every == 0:
            save(tr)

    start_step, t0 = trainer.step, time.perf_counter()
    losses = trainer.run(progress=not args.no_progress, on_step=periodic)
    seconds = time.perf_counter() - t0
    save(trainer)
    if losses:
        k = max(1, min(10, len(losses) // 4))
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        print(f"trained steps {start_step}..{trainer.step} in {seconds:.0f} s: loss {first:.3f} -> {last:.3f} "
              f"(mean of the first and last {k} steps)")
    val = mean_loss(model, val_tokens, args.seq_len, 16384, args.device)
    unit = "byte" if tokenizer.kind == "byte" else "token"
    print(f"held-out loss {val:.4f}, perplexity {torch.tensor(val).exp().item():.3f} per {unit}")
    print(f"checkpoint: {out}")
    print_sample(model, tokenizer, args.prompt, args.sample_tokens, args.device, seed=args.seed)


def print_sample(model, tokenizer, prompt: str, max_new_tokens: int, device, seed: int = 0,
                 temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None, stop: bool = True) -> None:
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UsageError("--prompt: expected at least one token, got an empty prompt")
    prompt_ids = torch.tensor([ids], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    # Decoding one token is hundreds of tiny ops: on CPU, extra threads only add wake-up costs.
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        out = model.to(device).generate(prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                        stop_tokens=(tokenizer.eos_id,) if stop else (), generator=generator)
    finally:
        torch.set_num_threads(threads)
    print(f"sample (prompt {prompt!r}, temperature {temperature}):")
    print(tokenizer.decode(out[0].tolist()))


def cmd_generate(args) -> None:
    from .checkpoint import load_checkpoint

    model, _, tokenizer, _ = load_checkpoint(args.checkpoint, device=args.device)
    n = len(tokenizer.encode(args.prompt))
    if n + args.max_new_tokens > model.max_seq_len:
        raise UsageError(f"--prompt: expected at most {model.max_seq_len - args.max_new_tokens} tokens "
                         f"(max_seq_len {model.max_seq_len} minus --max-new-tokens {args.max_new_tokens}), got {n}")
    print_sample(model, tokenizer, args.prompt, args.max_new_tokens, args.device, seed=args.seed,
                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, stop=not args.no_stop)


def cmd_eval(args) -> None:
    from .checkpoint import load_checkpoint
    from .data import held_out, read_documents
    from .evaluate import format_table, perplexity_by_length, plot

    model, recipe, tokenizer, config = load_checkpoint(args.checkpoint, device=args.device)
    settings = config["settings"]
    trained = settings["train"]["seq_len"]
    if args.data is None:
        tokens = held_out(settings["data"], tokenizer, settings["val_fraction"], settings["min_val"])
        source = f"held-out tail of {settings['data'] or EMBEDDED}"
    else:
        tokens = tokenizer.encode_documents(text for _, text in read_documents(args.data))
        source = args.data
    if args.lengths:
        try:
            lengths = [int(x) for x in args.lengths.split(",")]
        except ValueError:
            raise UsageError(f"--lengths: expected comma-separated integers, got {args.lengths!r}") from None
    else:
        lengths = [n for n in (trained // 2, trained, 2 * trained, 4 * trained, 8 * trained) if n <= model.max_seq_len]
    too_long = [n for n in lengths if n >= len(tokens)]
    if too_long:
        raise UsageError(f"--lengths: expected lengths below the {len(tokens)} evaluation tokens, got {too_long}")
    rows = perplexity_by_length(model, tokens, lengths, args.max_tokens, args.device)
    print(f"{recipe.name} {recipe.size} on {source} ({min(args.max_tokens, len(tokens) - 1):,} tokens per length)")
    print(format_table(rows, trained))
    path = plot(rows, Path(args.plot or Path(args.checkpoint) / "perplexity_vs_length.png"),
                f"{recipe.name} {recipe.size}: perplexity vs evaluation length", trained)
    print(f"plot: {path}")


def cmd_info(args) -> None:
    if args.recipe is None:
        print("recipes:", ", ".join(list_recipes()))
        print("sizes:  ", ", ".join(SIZES))
        print("blocks (for --swap):", ", ".join(sorted(SPEC_TYPES)))
        return
    print(build_recipe(args).table(args.vocab_size))


def cmd_experiment(args) -> None:
    # the experiment subcommands record the command that produced their results
    args.command_line = "wmzoo " + shlex.join(sys.argv[1:])
    args.func(args)


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "info": cmd_info,
            "experiment": cmd_experiment}


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (UsageError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"wmzoo {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
