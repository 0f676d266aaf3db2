"""Pieces the experiments share: their training runs, seeds and held-out batches.

An experiment that trains keeps every run in `out_dir/runs/NAME` (a normal run directory, as
`birth train` writes it: `birth inspect` and `birth plot` read it) and what it reports of the run
in its result: the final evaluation, the learning order and every evaluation row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from torch import nn

from birth.base.runtime import Device
from birth.base.seeds import check_seed
from birth.base.validate import Constraint, Float, Int, flag
from tasks.shakespeare import CorpusStats
from tasks.triggered_bigram import Batch, TriggeredBigram
from training.checkpoint import load_run_model
from training.config import TrainConfig
from training.logger import read_metrics
from training.stacked import stack_key, train_stacked
from training.trainer import RunResult, train

RUNS = "runs"  # sub-directory of an experiment's out_dir with its training runs (re-created by --overwrite)


@dataclass(frozen=True)
class IsInstance(Constraint):
    """The field holds an instance of `cls` (a nested config: tyro and the config files build one,
    Python callers could pass anything)."""

    cls: type

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, self.cls):
            raise ValueError(f"{flag(name)} must be a {self.cls.__name__}, got {type(value).__name__}")


@dataclass(frozen=True)
class IsSeed(Constraint):
    """A seed: an integer in [0, 2^63) (`birth.base.seeds.check_seed`)."""

    def check(self, name: str, value: Any) -> None:
        check_seed(value, flag(name))


# Field types of the experiment configs (`Validated` reads their bounds)
Train = Annotated[TrainConfig, IsInstance(TrainConfig)]  # a training config
Seeds = Annotated[int, Int(1)]  # a number of runs, seeds --seed, --seed + 1, ...
Seed = Annotated[int, IsSeed()]
Positive = Annotated[float, Float(0.0, open_low=True)]  # a finite number > 0


def experiment_train(preset: TrainConfig) -> TrainConfig:
    """The base training config of an experiment: `preset` with only the final checkpoint written
    (an experiment's runs are disposable; it reads the final model, never an intermediate one)."""
    return preset.replace(checkpoint_every=10**9)


def run_seeds(train: TrainConfig, seeds: int) -> range:
    """The run seeds of a multi-seed experiment: the base config's seed and the next `seeds - 1`."""
    return range(train.run.seed, train.run.seed + seeds)


def eval_batch(config: TrainConfig, stats: CorpusStats) -> tuple[TriggeredBigram, Batch]:
    """The task of `config` and its fixed held-out batch (the one the training loop evaluates on)."""
    task = TriggeredBigram(config.task, stats)
    return task, task.sample(config.run.eval_batch_size, task.generator(config.run.eval_seed))


def probe_triggers(config: TrainConfig, task: TriggeredBigram):
    """The trigger set the W_KQ2 probe ranks: the K fixed triggers, or every token (None)."""
    return task.fixed_triggers if config.task.trigger_mode == "fixed" else None


@dataclass(frozen=True)
class TrainedRun:
    """What an experiment reports of one training run (its directory holds everything else)."""

    name: str  # directory under out_dir/runs
    seed: int  # the run's seed
    final: dict[str, float | None]  # last evaluation: metrics and probes
    order: dict[str, int | None]  # first step at which each probe reaches 0.9 (None: never)
    history: list[dict[str, float | None]]  # every evaluation row, as in metrics.jsonl
    seconds_per_step: float | None  # wall time per update, evaluations included (None: no update ran)

    def steps(self) -> list[int]:
        return [int(row["step"]) for row in self.history]

    def curve(self, key: str) -> list[float]:
        """One metric over the evaluations (NaN where it is missing, e.g. no target in the batch)."""
        return [math.nan if row.get(key) is None else float(row[key]) for row in self.history]


def train_run(
    config: TrainConfig,
    out_dir: Path,
    name: str,
    *,
    device: Device = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainedRun:
    """Train one run into `out_dir/runs/NAME` and return its final metrics, order and every row."""
    run_dir = Path(out_dir) / RUNS / name
    result = train(config, run_dir, device=device, progress=progress, log=log)
    return _trained(result, config, name)


def train_runs(
    configs: Sequence[TrainConfig],
    out_dir: Path,
    names: Sequence[str],
    *,
    device: Device = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[TrainedRun]:
    """Train runs into `out_dir/runs/NAME`, those of one architecture side by side in one process
    (`training.stacked`: one run alone trains as `train_run`); returned in the order given."""
    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(stack_key(config), []).append(i)
    trained: dict[int, TrainedRun] = {}
    for members in groups.values():
        group = [configs[i] for i in members]
        run_dirs = [Path(out_dir) / RUNS / names[i] for i in members]
        results = train_stacked(group, run_dirs, device=device, progress=progress, log=log)
        for i, result in zip(members, results):
            trained[i] = _trained(result, configs[i], names[i])
    return [trained[i] for i in range(len(configs))]


def _trained(result: RunResult, config: TrainConfig, name: str) -> TrainedRun:
    if result.status == "interrupted":
        raise KeyboardInterrupt  # Ctrl-C in one of its runs stops the experiment: one line, exit 130
    if result.status != "completed":
        raise ValueError(
            f"run {result.run_dir} {result.status} at step {result.step} (its loss was not finite)"
        )
    return TrainedRun(
        name=name,
        seed=config.run.seed,
        final={k: v for k, v in result.final.items() if k != "step"},
        order=dict(result.order),
        history=read_metrics(result.run_dir / "metrics.jsonl"),
        seconds_per_step=result.seconds_per_step,
    )


def trained_model(out_dir: Path, name: str) -> nn.Module:
    """The final model of run `name` of an experiment (on the CPU, in eval mode)."""
    return load_run_model(Path(out_dir) / RUNS / name)
