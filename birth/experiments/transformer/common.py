"""Pieces the transformer experiments share: their base training configs, the checks of the
studies' base run, crossings over seeds, and the global-vs-icl measurement of the full model."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from birth.base.curves import first_crossing, first_crossing_below
from birth.experiments.common import (
    TrainedRun,
    eval_batch,
    experiment_train,
    run_seeds,
    train_run,
    train_runs,
)
from birth.experiments.registry import ExperimentResult
from birth.models.targets import MEMORIES
from tasks.shakespeare import CorpusStats, load_stats
from tasks.triggered_bigram import BIGRAM_LOSS, ICL_ACC, bigram_floor
from training.config import FULL, PAPER, QUICK, SIMPLIFIED_FFN_PRESET, TrainConfig

THRESHOLD = 0.9  # a memory "is learned" once its probe reaches this recall (as in `birth train`)
ICL_LEVELS = (0.9, 0.99)  # in-context accuracy levels whose first step is reported
PAPER_SEEDS = 5  # seeds of the full-size multi-seed claims
STUDY_SEEDS = 3  # seeds of the full-size multi-seed studies
DEPTHS = (2, 1)  # the depths compared by layers and layers-full
TOLERANCE = 0.05  # the bigram loss is "at its floor" within this fraction of it
REFERENCE_SIZES = dict(d_model=128, seq_len=256)  # the reference full model's d and T (the preset's: 64, 128)
# a few steps of a tiny model: seconds, for the tests (the numbers mean nothing)
TINY = dict(d_model=16, seq_len=16, batch_size=8, steps=4, eval_every=2, eval_batch_size=8)


def quick(**changes: Any) -> TrainConfig:
    """The quick preset as an experiment's base run, with `changes`."""
    return experiment_train(QUICK).replace(**changes)


def paper(**changes: Any) -> TrainConfig:
    """The paper preset as an experiment's base run, with `changes`."""
    return experiment_train(PAPER).replace(**changes)


def tiny(train: TrainConfig | None = None, **changes: Any) -> TrainConfig:
    """`train` (default: the quick base run) at the TINY sizes, with `changes`."""
    return (train or quick()).replace(**TINY).replace(**changes)


def study_tiny(**changes: Any) -> TrainConfig:
    """The studies' tiny run: TINY for 6 steps, with `changes`."""
    return tiny(**{"steps": 6, **changes})


def targets_per_sequence(train: TrainConfig, stats: CorpusStats) -> float:
    """Held-out targets after a 2nd+ occurrence of their trigger, per sequence."""
    _, batch = eval_batch(train, stats)
    return float((batch.counter >= 2).sum()) / batch.counter.shape[0]


def check_studied_model(train: TrainConfig, option: str = "train") -> None:
    """The studies train the 2-layer simplified model and set its schedule themselves."""
    if train.model.variant != "simplified" or train.model.n_layers != 2:
        raise ValueError(f"--{option}: these studies train the 2-layer simplified model")
    if train.optim.schedule or train.optim.init_at_target:
        raise ValueError(f"--{option}: leave --schedule and --init-at-target empty, the experiment sets them")


# ---------------------------------------------------------------------------------------------
# crossings over seeds
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crossings:
    steps: list[int | None]  # per seed, the first step at which the metric reached the level
    median: float | None  # median over the seeds that reached it (None: none did)
    reached: int  # how many seeds reached it

    @classmethod
    def of(cls, steps: Sequence[int | None]) -> Crossings:
        hit = [s for s in steps if s is not None]
        return cls(list(steps), statistics.median(hit) if hit else None, len(hit))

    def text(self) -> str:
        if self.median is None:
            return "never"
        partial = f" ({self.reached}/{len(self.steps)} seeds)" if self.reached < len(self.steps) else ""
        return f"{self.median:g}{partial}"


def crossing(run: TrainedRun, key: str, level: float) -> int | None:
    return first_crossing(run.steps(), run.curve(key), level)


def icl_crossings(runs: Sequence[TrainedRun]) -> dict[str, Crossings]:
    return {f"{level:g}": Crossings.of([crossing(r, ICL_ACC, level) for r in runs]) for level in ICL_LEVELS}


def probe_crossings(runs: Sequence[TrainedRun]) -> dict[str, Crossings]:
    return {m: Crossings.of([crossing(r, f"probes/{m}", THRESHOLD) for r in runs]) for m in MEMORIES}


@dataclass(frozen=True, kw_only=True)
class StudyPoint:
    """One arm of a study over its seeds (a point of n-triggers, trigger-frequency); the studies
    add the arm's coordinates as fields of their own."""

    targets_per_sequence: float  # held-out targets after a 2nd+ occurrence, per sequence
    final_icl: list[float]  # per seed
    icl: dict[str, Crossings]  # "0.9", "0.99"
    probes: dict[str, Crossings]  # memory -> steps to its probe's 0.9
    runs: list[TrainedRun]


def study_outcome(base: TrainConfig, stats: CorpusStats, runs: list[TrainedRun]) -> dict[str, Any]:
    """The `StudyPoint` fields of the arm `base` trained as `runs` (one per seed)."""
    return dict(
        targets_per_sequence=targets_per_sequence(base, stats),
        final_icl=final_values(runs),
        icl=icl_crossings(runs),
        probes=probe_crossings(runs),
        runs=runs,
    )


def train_depths(
    train: TrainConfig,
    seeds: int,
    out_dir: Path,
    study: str,
    *,
    device: str,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, list[TrainedRun]]:
    """The runs of `layers` and `layers-full`: `seeds` seeds of `train` at each depth of DEPTHS,
    keyed "2L", "1L" (a depth's seeds train side by side, `train_runs`)."""
    runs: dict[str, list[TrainedRun]] = {}
    for layers in DEPTHS:
        key = f"{layers}L"
        depth_seeds = run_seeds(train, seeds)
        for seed in depth_seeds:
            log(f"[{study}] {layers} layer(s), seed {seed}: {train.optim.steps} steps")
        trains = [train.replace(n_layers=layers, seed=seed) for seed in depth_seeds]
        names = [f"{key}-seed{seed}" for seed in depth_seeds]
        runs[key] = train_runs(trains, out_dir, names, device=device, progress=progress, log=log)
    return runs


def mean_curve(runs: Sequence[TrainedRun], key: str) -> tuple[list[int], list[float]]:
    """Seed-mean of a metric at the evaluation steps all runs share."""
    steps = runs[0].steps()
    curves = [r.curve(key) for r in runs]
    return steps, [statistics.fmean(c[i] for c in curves) for i in range(len(steps))]


def final_values(runs: Sequence[TrainedRun], key: str = ICL_ACC) -> list[float]:
    return [float("nan") if r.final.get(key) is None else float(r.final[key]) for r in runs]


def mean_or_nan(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------
# the full model and the simplified model with W_F (global-vs-icl, global-vs-icl-ffn, layers-full)
# ---------------------------------------------------------------------------------------------


def full_train() -> TrainConfig:
    return experiment_train(FULL)


def full_reference() -> TrainConfig:
    """The reference sizes, d = 128 and T = 256 (the preset's architecture and optimizer are the
    reference's), for twice the steps: at d = 128 the induction head forms later."""
    return full_train().replace(**REFERENCE_SIZES, steps=2 * FULL.optim.steps, eval_batch_size=512)


def ffn_train() -> TrainConfig:
    return experiment_train(SIMPLIFIED_FFN_PRESET)


def ffn_reference() -> TrainConfig:
    """The paper's simplified-model sizes (d = 256, T = 256, batch 512) with W_F, on all tokens."""
    return ffn_train().replace(d_model=256, seq_len=256, batch_size=512, eval_batch_size=512)


def check_global_vs_icl(config: Any) -> None:
    """A global-vs-icl run trains the bigram targets: its loss is on all tokens."""
    if config.train.optim.loss_on != "all":
        raise ValueError(
            f"--loss-on must be all (the bigram loss is trained on the counter-0 targets), "
            f"got {config.train.optim.loss_on!r}"
        )


@dataclass(frozen=True)
class GlobalVsIclResult(ExperimentResult):
    run: TrainedRun
    bigram_floor: float  # Bayes loss of the counter-0 targets of the evaluation batch (nats)
    tolerance: float  # "at the floor": bigram loss <= (1 + tolerance) · floor
    bigram_step: int | None  # first evaluation step with the bigram loss at its floor
    icl_steps: dict[str, int | None]  # "0.9", "0.99": first step with in-context accuracy >= level
    final_icl_acc: float
    final_bigram_loss: float
    target_met: bool  # final in-context accuracy >= 0.99 and final bigram loss at its floor

    @property
    def bigram_gap(self) -> float:
        """The final bigram loss above its floor, as a fraction of the floor."""
        return self.final_bigram_loss / self.bigram_floor - 1.0

    def headline(self) -> str:
        percent = f"{100 * self.tolerance:g}%"
        return (
            f"bigram loss within {percent} of its floor {self.bigram_floor:.3f} at step "
            f"{self.bigram_step}; in-context accuracy 0.9 at step {self.icl_steps['0.9']}, 0.99 at step "
            f"{self.icl_steps['0.99']}; final in-context accuracy {self.final_icl_acc:.4f}, bigram loss "
            f"{self.final_bigram_loss:.3f} ({100 * self.bigram_gap:+.1f}% of the floor): target "
            f"{'met' if self.target_met else 'NOT met'}"
        )


def global_vs_icl_run(config, out_dir: Path, name: str, log, progress: bool) -> dict:
    """Train the run, compute the floor on its evaluation batch and the crossing steps.

    The floor's batch is the evaluation batch drawn on the CPU (`eval_batch`): the loop's own when it
    trains on the CPU; on CUDA the loop draws a different batch of the same law (the floor moves by
    a few tenths of a percent between draws of 256 sequences)."""
    stats = load_stats()
    _, batch = eval_batch(config.train, stats)
    floor = bigram_floor(batch, stats.bigram_probs)
    log(f"[{name}] bigram floor (mean entropy H(π_b(·|z_t)) over the evaluation batch's counter-0 "
        f"targets): {floor:.4f} nats; at the floor within {100 * config.tolerance:g}%: <= "
        f"{floor * (1 + config.tolerance):.4f}")  # fmt: skip
    log(f"[{name}] {config.train.optim.steps} steps")
    run = train_run(config.train, out_dir, name, device=config.device, progress=progress, log=log)
    steps = run.steps()
    bigram = run.curve(BIGRAM_LOSS)
    icl = run.curve(ICL_ACC)
    final_icl, final_bigram = icl[-1], bigram[-1]
    at_floor = final_bigram <= floor * (1 + config.tolerance)
    return dict(
        run=run,
        bigram_floor=floor,
        tolerance=config.tolerance,
        bigram_step=first_crossing_below(steps, bigram, floor * (1 + config.tolerance)),
        icl_steps={f"{level:g}": first_crossing(steps, icl, level) for level in ICL_LEVELS},
        final_icl_acc=final_icl,
        final_bigram_loss=final_bigram,
        target_met=bool(final_icl >= ICL_LEVELS[-1] and at_floor),
    )


def plot_curves(ax_bigram, ax_icl, result: GlobalVsIclResult) -> None:
    run = result.run
    steps = run.steps()
    floor = result.bigram_floor
    ax_bigram.plot(steps, run.curve(BIGRAM_LOSS), color="tab:green", label="bigram loss (counter 0)")
    ax_bigram.axhline(floor, color="k", lw=1, label=f"floor {floor:.3f} (Bayes loss)")
    ax_bigram.axhline(floor * (1 + result.tolerance), color="gray", ls="--", lw=0.8,
                      label=f"floor + {100 * result.tolerance:g}%")  # fmt: skip
    ax_bigram.set_ylim(floor * 0.95, max(floor * 1.6, min(run.curve(BIGRAM_LOSS)[1:] or [floor]) * 1.1))
    ax_bigram.set_ylabel("held-out loss (nats)")
    ax_icl.plot(steps, run.curve(ICL_ACC), color="tab:blue", label="in-context accuracy")
    for level in ICL_LEVELS:
        ax_icl.axhline(level, color="gray", ls=":", lw=0.8)
    ax_icl.set_ylim(-0.02, 1.02)
    ax_icl.set_ylabel("in-context accuracy (counter >= 2)")
    marks = [(result.bigram_step, "tab:green", "--", "bigram at floor")]
    marks += [
        (s, "tab:blue", style, f"icl {level}")
        for (level, s), style in zip(result.icl_steps.items(), ("--", "-."))
    ]
    for ax in (ax_bigram, ax_icl):
        for step, color, style, label in marks:
            if step is not None:
                ax.axvline(step, color=color, ls=style, lw=0.8, alpha=0.8, label=f"{label} (step {step})")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
