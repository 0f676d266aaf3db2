"""`birth train`: train a transformer on a task (the triggered-bigram one by default) and watch its memories form.

Every field of the run's config is a flag (`--lr 0.1`, `--d-model 64`, `--trigger-mode random`)
that overrides the preset (or the `--config FILE.yaml`). `--task NAME` trains on another registered
task (`tasks.registry`; its config's fields are the task flags, from its defaults). `--print-config`
prints the resolved config as YAML and exits; `--resume RUN_DIR` continues a run (only `--steps`
may change).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import tyro

from birth.base.io import check_writable
from birth.base.runtime import WandbMode, resolve_device
from birth.base.validate import Int, OrNone, Validated
from birth.cli import CLIError, parse_dataclass, print_config, read_yaml
from tasks.registry import DEFAULT_TASK, get_task
from training.config import PRESETS, TASK_NAME, PresetName, TrainConfig
from training.run_dir import RUN_PREFIX, read_run_config, stack_runs


@dataclass(frozen=True)
class TrainCommand(Validated):
    config: TrainConfig = field(default_factory=TrainConfig)
    task: str = DEFAULT_TASK  # the registered task to train on (tasks.registry)
    preset: PresetName = "quick"  # base config that the flags override
    config_file: Annotated[Path | None, tyro.conf.arg(name="config")] = (
        None  # a YAML config (e.g. from --print-config) that replaces the preset
    )
    print_config: bool = False  # print the resolved config as YAML and exit
    out: Path | None = None  # run directory (default: runs/<preset>-<layers>L-seed<seed>-<time>-<pid>)
    resume: Path | None = (
        None  # continue the run in this directory from its last checkpoint (--steps may extend it)
    )
    wandb: WandbMode = "offline"  # W&B logging (offline: files in RUN_DIR/wandb)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch CPU threads (default: torch's choice); recorded with the run
    threads: Annotated[int | None, OrNone(Int(1))] = None
    progress: bool = True  # progress bar
    # train these seeds side by side in one process (0-7, or a list 0,3,5): one run directory per
    # seed, OUT/seed0, ... (training.stacked); --resume OUT continues them all
    seeds: str | None = None


def _base_config(argv: list[str]) -> TrainConfig:
    """The config the flags override: --resume's saved config, --config FILE or --preset."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="quick")
    pre.add_argument("--config", default=None)
    pre.add_argument("--resume", default=None)
    pre.add_argument("--task", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.resume is not None:
        for option, given in (("--config FILE", known.config), ("--preset", preset_given(argv))):
            if given:
                raise CLIError(
                    f"give either --resume RUN_DIR or {option}, not both (a resumed run keeps its config)"
                )
        saved = read_run_config(_first_run(Path(known.resume)))
        if known.task is not None and known.task != saved.task_name:
            raise CLIError(
                f"--resume continues {known.resume} with its own config; these flags would change the run: "
                "--task (only --steps may extend it)"
            )
        return saved
    if known.config is not None:
        base = TrainConfig.from_dict(read_yaml(known.config), source=f"--config {known.config}")
    elif known.preset not in PRESETS:
        raise CLIError(f"--preset must be one of {', '.join(PRESETS)}, got {known.preset!r}")
    else:
        base = PRESETS[known.preset]
    if known.task is None or known.task == base.task_name:
        return base
    try:
        spec = get_task(known.task)
    except ValueError as err:
        raise CLIError(str(err)) from None
    return base.replace(task=spec.config())  # another task: its own defaults


def _first_run(run_dir: Path) -> Path:
    """A run directory, or the first run of a stacked one (`birth train --seeds`)."""
    runs = stack_runs(run_dir)
    return runs[0] if runs else run_dir


def preset_given(argv: list[str]) -> bool:
    return any(a == "--preset" or a.startswith("--preset=") for a in argv)


def parse(argv: list[str], prog: str = "birth train") -> TrainCommand:
    base = _base_config(argv)
    default = TrainCommand(config=base, task=base.task_name)
    return parse_dataclass(TrainCommand, default, argv, prog, __doc__.split("\n\n")[0])


def _changed_fields(old: TrainConfig, new: TrainConfig) -> list[str]:
    a, b = old.to_dict(), new.to_dict()
    task = ["--task"] if a.pop(TASK_NAME) != b.pop(TASK_NAME) else []
    return task + [f"--{k.replace('_', '-')}" for s in a for k in a[s] if k in b[s] and a[s][k] != b[s][k]]


def run(argv: list[str], prog: str) -> int:
    cmd = parse(argv, prog)
    config = cmd.config
    if cmd.print_config:
        print_config(config.to_dict())
        return 0
    # imported once a run starts: the trainer's imports (wandb, probes, tqdm) take seconds
    # (docs/tuning.md, "Start-up") that --print-config and a bad flag need not wait for
    from training.trainer import print_summary, train

    if cmd.resume is not None:
        if cmd.out is not None:
            raise CLIError("give either --resume RUN_DIR or --out, not both")
        saved = read_run_config(_first_run(cmd.resume))
        given = {a.split("=")[0]: i for i, a in reversed(list(enumerate(argv)))}
        changed = sorted(
            (f for f in _changed_fields(saved, config) if f != "--steps"),
            key=lambda f: given.get(f, given.get("--no-" + f[2:], len(argv))),  # as typed
        )
        if changed:
            raise CLIError(
                f"--resume continues {cmd.resume} with its own config; these flags would change the run: "
                f"{', '.join(changed)} (only --steps may extend it)"
            )
        run_dir = cmd.resume
    else:
        run_dir = cmd.out or Path("runs") / (
            # the pid keeps two runs started in the same second (sweep agents) apart
            f"{cmd.preset}-{config.model.n_layers}L-seed{config.run.seed}-"
            f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        )
        check_writable(run_dir, "--out")
    # report a bad flag before announcing the run
    config.validate()
    resolve_device(cmd.device)
    if cmd.threads is not None:
        torch.set_num_threads(cmd.threads)
    if cmd.seeds is not None or (cmd.resume is not None and _first_run(cmd.resume) != cmd.resume):
        return _run_stacked(cmd, argv, run_dir)
    print(f"run directory: {run_dir}")
    result = train(
        config,
        run_dir,
        resume=cmd.resume is not None,
        device=cmd.device,
        wandb_mode=cmd.wandb,
        progress=cmd.progress,
    )
    print_summary(result)
    return result.exit_code


def _run_stacked(cmd: TrainCommand, argv: list[str], out: Path) -> int:
    """`--seeds`: one run per seed in OUT/seedN, trained side by side; `--resume OUT` of such runs."""
    # the trainer's imports: see `run`
    from training.stacked import check_stack_memory, parse_seeds, train_stacked
    from training.trainer import print_summary

    if cmd.resume is not None:
        if cmd.seeds is not None:
            raise CLIError("give either --resume OUT or --seeds, not both (a resumed stack keeps its seeds)")
        run_dirs = stack_runs(cmd.resume)
        configs = [read_run_config(d).replace(steps=cmd.config.optim.steps) for d in run_dirs]
    else:
        if any(a == "--seed" or a.startswith("--seed=") for a in argv):
            raise CLIError("give either --seed or --seeds, not both")
        try:
            seeds = parse_seeds(cmd.seeds)
            check_stack_memory(
                [cmd.config] * len(seeds), cmd.config.build_task().vocab_size, resolve_device(cmd.device)
            )
        except ValueError as err:
            raise CLIError(str(err)) from None
        if cmd.out is None:
            out = out.with_name(
                out.name.replace(f"-seed{cmd.config.run.seed}-", f"-seeds{seeds[0]}-{seeds[-1]}-")
            )
        run_dirs = [out / f"{RUN_PREFIX}{s}" for s in seeds]
        configs = [cmd.config.replace(seed=s) for s in seeds]
    print(f"{len(run_dirs)} runs side by side in {out}")
    results = train_stacked(
        configs,
        run_dirs,
        resume=cmd.resume is not None,
        device=cmd.device,
        wandb_mode=cmd.wandb,
        progress=cmd.progress,
    )
    for result in results:
        print_summary(result)
    return max(results, key=lambda r: r.exit_code != 0).exit_code


def replace_config(cmd: TrainCommand, **changes) -> TrainCommand:
    return dataclasses.replace(cmd, config=cmd.config.replace(**changes))
