"""Command line: ``wmzoo experiment mqar|rope-ssd|expert-speed|report`` (through
:func:`add_experiment_commands`, which the main ``wmzoo`` CLI calls) and, standalone,
``python -m wmzoo.experiments mqar|rope-ssd|expert-speed|report``."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from ..kernels.autotune import deterministic_mode

RESULTS_DIR = Path("docs/experiments")
SMOKE_DIR = Path("runs/experiments")  # smoke runs never overwrite the documented results


def add_experiment_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``experiment`` with its four subcommands to an argparse subparsers object."""
    parser = subparsers.add_parser("experiment", help="reproduce the paper's experiments")
    add_subcommands(parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT"))
    return parser


def add_subcommands(sub) -> None:
    from .mqar import GRIDS
    from .rope_ssd import CONFIGS

    p = sub.add_parser("mqar", help="MQAR accuracy grid (mixer x length x width, lr sweep)")
    p.add_argument("--grid", choices=sorted(GRIDS), default="smoke")
    p.add_argument("--steps", type=int, help="override the grid's training steps")
    p.add_argument("--shard", default="0/1", help="run only the cells i, i+n, ... of the grid: 'i/n'")
    p.add_argument("--seed", type=int, help="another draw of the grid (init and data): results go to "
                                            "mqar-<grid>-seed<N>.json")
    _common(p)
    p.set_defaults(func=cmd_mqar)

    p = sub.add_parser("rope-ssd", help="RoPE-in-SSD ablation: perplexity vs evaluation length")
    p.add_argument("--config", choices=sorted(CONFIGS), default="smoke")
    p.add_argument("--data", help="text file, directory or tarball (default: the small embedded text)")
    p.add_argument("--arms", default="rope,norope", help="comma-separated subset of rope,norope")
    p.add_argument("--steps", type=int, help="override the config's training steps")
    p.add_argument("--seeds", help="comma-separated seeds to run (default: the config's); one process per seed "
                                   "can share a result folder")
    _common(p)
    p.set_defaults(func=cmd_rope_ssd)

    p = sub.add_parser("expert-speed", help="plot the CDMoE benchmark's expert-speed results")
    p.add_argument("--results", help="the benchmark's JSON file (default: look in the usual places)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.set_defaults(func=cmd_expert_speed)

    p = sub.add_parser("report", help="write docs/experiments.md from the result files")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--out", type=Path, default=Path("docs/experiments.md"))
    p.set_defaults(func=cmd_report)


def _common(p) -> None:
    p.add_argument("--out", type=Path, help=f"result folder (default {RESULTS_DIR}; smoke: {SMOKE_DIR})")
    p.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--max-minutes", type=float, help="start no new run after this many minutes")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                   help="torch's deterministic mode, every kernel pinned to one config, so that a "
                        "run repeats (default on; each record says which)")


def _out_dir(args, name: str) -> Path:
    return args.out or (SMOKE_DIR if name == "smoke" else RESULTS_DIR)


def _command(args) -> str:
    """The command line that made a result (main() sets it; else the ``wmzoo`` CLI ran us)."""
    return getattr(args, "command_line", None) or "wmzoo " + shlex.join(sys.argv[1:])


def cmd_mqar(args) -> None:
    from . import mqar
    from .results import ResultStore

    grid, name = mqar.GRIDS[args.grid], args.grid
    if args.steps:
        grid = replace(grid, steps=args.steps)
    if args.seed is not None and args.seed != grid.seed:
        name = f"{args.grid}-seed{args.seed}"
        if name in mqar.GRIDS:  # a grid of its own already names that draw
            raise SystemExit(f"--seed: {args.grid} with seed {args.seed} is the grid {name!r}; run --grid {name}")
        grid = replace(grid, seed=args.seed, notes=f"{grid.notes}; seed {args.seed}")
    try:
        index, count = (int(v) for v in args.shard.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise SystemExit(f"--shard: expected 'i/n' with 0 <= i < n, got {args.shard!r}")
    out = _out_dir(args, args.grid)
    store = ResultStore(out / f"mqar-{name}.json")
    with deterministic_mode(args.deterministic):
        mqar.run_grid(grid, store, device=args.device, shard=(index, count), max_minutes=args.max_minutes,
                      command=_command(args))
    print(mqar.write_outputs(store.path))


def cmd_rope_ssd(args) -> None:
    from . import rope_ssd
    from .results import ResultStore

    cfg = rope_ssd.CONFIGS[args.config]
    if args.steps:
        cfg = replace(cfg, steps=args.steps)
    seeds = None
    if args.seeds:
        try:
            seeds = tuple(int(v) for v in args.seeds.split(","))
        except ValueError:
            raise SystemExit(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    arms = tuple(a for a in args.arms.split(",") if a)
    bad = [a for a in arms if a not in rope_ssd.ARMS]
    if bad or not arms:
        raise SystemExit(f"--arms: expected a comma-separated subset of {','.join(rope_ssd.ARMS)}, got {args.arms!r}")
    out = _out_dir(args, args.config)
    store = ResultStore(out / f"rope_ssd-{args.config}.json")
    with deterministic_mode(args.deterministic):
        rope_ssd.run_ablation(cfg, store, data=args.data, device=args.device, arms=arms, seeds=seeds,
                              max_minutes=args.max_minutes, command=_command(args))
    print(rope_ssd.write_outputs(store.path))


def cmd_expert_speed(args) -> None:
    from . import expert_speed

    print(expert_speed.run(args.results, args.out))


def cmd_report(args) -> None:
    from . import report

    args.out.write_text(report.render(args.results_dir, args.out.parent))
    print(f"wrote {args.out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wmzoo.experiments", description=__doc__)
    add_subcommands(parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = "python -m wmzoo.experiments " + shlex.join(argv)
    args.func(args)
