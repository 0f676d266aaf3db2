"""`trigger-frequency`: fixed triggers taken further down the frequency ranking (`--trigger-offset`):
speed of the induction head against the triggers' unigram mass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Ints, Validated
from birth.experiments.common import Seeds, Train, run_seeds, train_runs
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import (
    STUDY_SEEDS,
    StudyPoint,
    check_studied_model,
    mean_curve,
    paper,
    quick,
    study_outcome,
    study_tiny,
)
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import ICL_ACC, TriggeredBigram


@dataclass(frozen=True)
class TriggerFrequencyConfig(Validated):
    train: Train = field(default_factory=lambda: quick(trigger_mode="fixed", steps=1000))  # base run
    # fixed triggers: skip this many most frequent tokens
    offsets: Annotated[tuple[int, ...], Ints(0)] = (0, 5, 10, 20, 30)
    seeds: Seeds = 1  # runs per offset
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_studied_model(self.train)
        k = self.train.task.n_triggers
        if k < 1:
            raise ValueError("--n-triggers must be >= 1 for trigger-frequency")
        for offset in self.offsets:
            if offset + k > 65:
                raise ValueError(f"--offsets: {offset} + K={k} triggers exceed the 65 tokens")


@dataclass(frozen=True)
class FrequencyPoint(StudyPoint):
    offset: int  # rank of the first trigger in the frequency ranking (0: the most frequent)
    triggers: str  # the K trigger characters
    unigram_mass: float  # their total unigram probability


@dataclass(frozen=True)
class TriggerFrequencyResult(ExperimentResult):
    points: list[FrequencyPoint]

    def headline(self) -> str:
        return "steps to in-context accuracy 0.9 by trigger offset (unigram mass): " + ", ".join(
            f"{p.offset} ({p.unigram_mass:.3f}) {p.icl['0.9'].text()}" for p in self.points
        )


def plot_trigger_frequency(result: TriggerFrequencyResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2)
    for p in result.points:
        axes[0][0].plot(*mean_curve(p.runs, ICL_ACC), label=f"offset {p.offset} ({p.triggers!r})")
    axes[0][0].set_xlabel("step")
    axes[0][0].set_ylabel("in-context accuracy")
    axes[0][0].legend(fontsize=7)
    for j, (key, label) in enumerate(
        (("icl", "icl 0.9"), ("W_KQ2", "W_KQ2 probe 0.9"), ("W_KQ1", "W_KQ1 probe 0.9"))
    ):
        pts = [
            (p.unigram_mass, (p.icl["0.9"] if key == "icl" else p.probes[key]).median) for p in result.points
        ]
        pts = [(m, s) for m, s in pts if s is not None]
        axes[0][1].plot([m for m, _ in pts], [s for _, s in pts], "o-", color=f"C{j}", label=label)
    axes[0][1].set_xscale("log")
    axes[0][1].set_xlabel("unigram mass of the K triggers")
    axes[0][1].set_ylabel("steps (reached only)")
    axes[0][1].legend(fontsize=8)
    return save_figure(fig, out_dir, "trigger_frequency")


@register(
    "trigger-frequency",
    family="transformer",
    summary="fixed triggers at several offsets of the frequency ranking: speed of the induction head",
    config=TriggerFrequencyConfig,
    plot=plot_trigger_frequency,
    full=lambda: TriggerFrequencyConfig(
        train=paper(), offsets=(0, 5, 10, 20, 30, 40), seeds=STUDY_SEEDS
    ),  # fmt: skip
    small=lambda: TriggerFrequencyConfig(
        train=study_tiny(trigger_mode="fixed"), offsets=(0, 10), device="cpu"
    ),
)
def run_trigger_frequency(
    config: TriggerFrequencyConfig, out_dir: Path, *, log=print, progress: bool = True
) -> TriggerFrequencyResult:
    stats = load_stats()
    bases = {
        offset: config.train.replace(trigger_mode="fixed", trigger_offset=offset) for offset in config.offsets
    }
    jobs = [(offset, seed) for offset, base in bases.items() for seed in run_seeds(base, config.seeds)]
    trained = train_runs([bases[offset].replace(seed=seed) for offset, seed in jobs], out_dir,
                         [f"offset{offset}-seed{seed}" for offset, seed in jobs],
                         device=config.device, progress=progress, log=log)  # fmt: skip
    points = []
    for offset, base in bases.items():
        task = TriggeredBigram(base.task, stats)
        chars = "".join(stats.decode(task.fixed_triggers.tolist()))
        mass = float(stats.unigram_probs[task.fixed_triggers].sum())
        runs = [run for (o, seed), run in zip(jobs, trained) if o == offset]
        log(
            f"[trigger-frequency] offset {offset} ({chars!r}, mass {mass:.3f}): seeds {[r.seed for r in runs]}"
        )
        points.append(FrequencyPoint(offset, chars, mass, **study_outcome(base, stats, runs)))
    return TriggerFrequencyResult(points)
