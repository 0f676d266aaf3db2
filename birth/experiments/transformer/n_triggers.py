"""`n-triggers`: the number of triggers K ∈ {1, 2, 5, 10, 20}, fixed and random triggers: final
in-context accuracy and steps to 0.99."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, get_args

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Choices, Ints, Validated
from birth.experiments.common import Seeds, Train, run_seeds, train_runs
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import (
    STUDY_SEEDS,
    StudyPoint,
    check_studied_model,
    mean_or_nan,
    paper,
    quick,
    study_outcome,
    study_tiny,
)
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import TriggerMode

TRIGGER_MODES: tuple[TriggerMode, ...] = get_args(TriggerMode)


@dataclass(frozen=True)
class NTriggersConfig(Validated):
    train: Train = field(default_factory=lambda: quick(steps=1000))  # base run; K and the mode vary
    ks: Annotated[tuple[int, ...], Ints(1)] = (1, 2, 5, 10, 20)  # numbers of triggers K
    modes: Annotated[tuple[TriggerMode, ...], Choices(TRIGGER_MODES)] = TRIGGER_MODES  # trigger modes
    seeds: Seeds = 1  # runs per (mode, K)
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_studied_model(self.train)
        for k in self.ks:
            for mode in self.modes:
                dataclasses.replace(self.train.task, n_triggers=k, trigger_mode=mode).validate(65)


@dataclass(frozen=True)
class TriggerPoint(StudyPoint):
    mode: str  # fixed or random
    k: int  # number of triggers (fixed: its trigger offset is the base run's)


@dataclass(frozen=True)
class NTriggersResult(ExperimentResult):
    points: list[TriggerPoint]

    def headline(self) -> str:
        parts = []
        for mode in dict.fromkeys(p.mode for p in self.points):
            pts = [p for p in self.points if p.mode == mode]
            acc = ", ".join(f"K={p.k} {mean_or_nan(p.final_icl):.3f} ({p.icl['0.99'].text()})" for p in pts)
            parts.append(f"{mode}: {acc}")
        return "final in-context accuracy (steps to 0.99) — " + "; ".join(parts)


def plot_n_triggers(result: NTriggersResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2)
    for mode in dict.fromkeys(p.mode for p in result.points):
        pts = [p for p in result.points if p.mode == mode]
        ks = [p.k for p in pts]
        axes[0][0].plot(ks, [mean_or_nan(p.final_icl) for p in pts], "o-", label=f"{mode} triggers")
        reached = [(p.k, p.icl["0.99"].median) for p in pts if p.icl["0.99"].median is not None]
        axes[0][1].plot([k for k, _ in reached], [s for _, s in reached], "o-", label=f"{mode} triggers")
    axes[0][0].set_ylabel("final in-context accuracy")
    axes[0][1].set_ylabel("steps to in-context accuracy 0.99 (reached only)")
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlabel("number of triggers K")
        ax.legend()
    return save_figure(fig, out_dir, "n_triggers")


@register(
    "n-triggers",
    family="transformer",
    summary="number of triggers K in {1, 2, 5, 10, 20}, fixed and random: in-context accuracy, steps to 0.99",
    config=NTriggersConfig,
    plot=plot_n_triggers,
    full=lambda: NTriggersConfig(train=paper(), seeds=STUDY_SEEDS),
    small=lambda: NTriggersConfig(train=study_tiny(), ks=(1, 3), seeds=1, device="cpu"),
)
def run_n_triggers(
    config: NTriggersConfig, out_dir: Path, *, log=print, progress: bool = True
) -> NTriggersResult:
    stats = load_stats()
    bases = {
        (m, k): config.train.replace(trigger_mode=m, n_triggers=k) for m in config.modes for k in config.ks
    }
    jobs = [(arm, seed) for arm, base in bases.items() for seed in run_seeds(base, config.seeds)]
    for (mode, k), seed in jobs:
        log(f"[n-triggers] {mode} K={k}, seed {seed}: {config.train.optim.steps} steps")
    trained = train_runs([bases[arm].replace(seed=seed) for arm, seed in jobs], out_dir,
                         [f"{m}-K{k}-seed{seed}" for (m, k), seed in jobs],
                         device=config.device, progress=progress, log=log)  # fmt: skip
    points = []
    for (mode, k), base in bases.items():
        runs = [run for (arm, _), run in zip(jobs, trained) if arm == (mode, k)]
        points.append(TriggerPoint(mode, k, **study_outcome(base, stats, runs)))
    return NTriggersResult(points)
