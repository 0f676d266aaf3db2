"""`birth train`: train the 1- or 2-layer transformer and watch its three memories form.

Every field of `training.config.TrainConfig` is a flag (`--lr 0.1`, `--d-model 64`, ...) that
overrides the chosen preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from training.config import PRESETS, TrainConfig


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, default None (= keep the preset's value)."""
    group = p.add_argument_group("config fields (override the preset)")
    for f in dataclasses.fields(TrainConfig):
        kind = {int: int, float: float, str: str, bool: _parse_bool}[type(f.default)]
        group.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, metavar=f.name.upper())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = PRESETS[args.preset]
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    if getattr(args, "layers", None) is not None:
        overrides["n_layers"] = args.layers
    return dataclasses.replace(base, **overrides)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="base config (default: quick)")
    p.add_argument("--layers", type=int, choices=(1, 2), default=None, help="number of layers (alias of --n-layers)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<preset>-<layers>L-seed<seed>-<time>-<pid>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint (--steps may extend it)")
    p.add_argument("--wandb", choices=("off", "offline", "online"), default="offline", help="W&B logging (default: offline, files in RUN_DIR/wandb)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from training.loop import print_summary, read_run_config, train

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.resume is not None:
        if args.out is not None:
            raise ValueError("give either --resume RUN_DIR or --out, not both")
        config = read_run_config(args.resume)
        if args.steps is not None:
            config = dataclasses.replace(config, steps=args.steps)
        run_dir = args.resume
    else:
        config = config_from_args(args)
        run_dir = args.out or Path("runs") / (
            # the pid keeps two runs started in the same second (sweep agents) apart
            f"{args.preset}-{config.n_layers}L-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        )
    from tasks.shakespeare import load_stats

    config.validate(load_stats().vocab_size)  # report a bad flag before announcing the run
    print(f"run directory: {run_dir}")
    result = train(
        config,
        run_dir,
        resume=args.resume is not None,
        device=args.device,
        wandb_mode=args.wandb,
        progress=not args.no_progress,
    )
    print_summary(result)
    return result.exit_code
