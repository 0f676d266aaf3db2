"""The training studies of *Birth of a Transformer* beyond the main claims: which matrices train and
when (joint), the data distribution (n-triggers, trigger-frequency, held-out-outputs) and the
learning order under two readings of the probes (order-readings).

Every experiment trains the simplified model on the triggered-bigram task from a base training
config (the quick preset by default, minutes on a 2-core CPU; `full()` the paper preset and more
seeds) and keeps its runs under `out_dir/runs/`. "Steps to X" is the first evaluation step at which
a held-out metric reaches X (None: never within the run).

- `joint` (seed talk, "Empirically probing the dynamics": *joint learning is faster*): the three
  memories W_O² (W_OV²), W_K² (W_KQ²), W_K¹ (W_KQ¹) trained jointly; one at a time with the other
  two held at their hand-built targets; in sequence top-down (W_O² → W_K² → W_K¹) and bottom-up.
- `n-triggers`: K ∈ {1, 2, 5, 10, 20}, fixed and random triggers.
- `trigger-frequency`: fixed triggers taken further down the frequency ranking (`--trigger-offset`).
- `held-out-outputs`: outputs from the first 75% of the token ids in training, evaluated on the
  other 25% (the reference's `train_test`): does the induction head copy tokens it never copied?
- `order-readings`: the learning order under the recall probes, the recall against all tokens and
  the normalized margin (`probes.margins`), at the quick and the paper preset.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch

from birth.base.io import new_figure, save_figure
from birth.base.validate import check_float, check_int
from birth.experiments.common import (
    Device,
    TrainedRun,
    check_device,
    check_seeds,
    check_train,
    eval_batch,
    experiment_train,
    probe_triggers,
    run_seeds,
    train_run,
)
from birth.experiments.registry import ExperimentResult, register
from birth.metrics import evaluate, first_crossing
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import TriggeredBigram, output_split_range
from training.config import PAPER, QUICK, TrainConfig

THRESHOLD = 0.9  # a memory "is learned" once its probe reaches this (as in `birth train`)
ICL_LEVELS = (0.9, 0.99)  # in-context accuracy levels whose first step is reported
MEMORIES = ("W_OV2", "W_KQ2", "W_KQ1")
MATRIX_OF = {"W_OV2": "W_O2", "W_KQ2": "W_K2", "W_KQ1": "W_K1"}  # the trained matrix storing each memory
PAPER_SEEDS = 3  # seeds of the full-size multi-seed experiments


def _quick(**changes) -> TrainConfig:
    return experiment_train(QUICK).replace(**changes)


def _tiny(**changes) -> TrainConfig:
    """A few steps of a tiny model: seconds, for the tests (the numbers mean nothing)."""
    return _quick(d_model=16, seq_len=16, batch_size=8, steps=6, eval_every=2, eval_batch_size=8).replace(
        **changes
    )


def _check_base(train: TrainConfig, option: str = "train") -> None:
    check_train(train, option)
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


def _icl_crossings(runs: Sequence[TrainedRun]) -> dict[str, Crossings]:
    return {
        f"{level:g}": Crossings.of([crossing(r, "eval/icl_acc", level) for r in runs]) for level in ICL_LEVELS
    }


def _probe_crossings(runs: Sequence[TrainedRun]) -> dict[str, Crossings]:
    return {m: Crossings.of([crossing(r, f"probes/{m}", THRESHOLD) for r in runs]) for m in MEMORIES}


def _mean_curve(runs: Sequence[TrainedRun], key: str) -> tuple[list[int], list[float]]:
    """Seed-mean of a metric at the evaluation steps all runs share."""
    steps = runs[0].steps()
    curves = [r.curve(key) for r in runs]
    return steps, [statistics.fmean(c[i] for c in curves) for i in range(len(steps))]


def _final(runs: Sequence[TrainedRun], key: str = "eval/icl_acc") -> list[float]:
    return [float("nan") if r.final.get(key) is None else float(r.final[key]) for r in runs]


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------
# joint: joint learning vs one at a time vs in sequence
# ---------------------------------------------------------------------------------------------

Condition = Literal["joint", "only_W_OV2", "only_W_KQ2", "only_W_KQ1", "top_down", "bottom_up"]
CONDITIONS: tuple[str, ...] = get_args(Condition)
Sequencing = Literal["phases", "cumulative"]
TOP_DOWN = ("W_O2", "W_K2", "W_K1")  # W_OV² → W_KQ² → W_KQ¹, the theory's order


def _joint_train() -> TrainConfig:
    # fixed triggers (the paper's Fig. 3 task): the induction head forms within ~200 steps here
    return _quick(trigger_mode="fixed", steps=600)


def condition_changes(condition: str, phase_steps: int, sequencing: str) -> dict[str, str]:
    """The --schedule and --init-at-target of a condition (the joint run changes nothing).

    only_M: M trains from its initialization, the other two start at their hand-built targets and
    never train. top_down / bottom_up: W_O², W_K², W_K¹ (or the reverse) each train for
    `phase_steps` in turn (`phases`; the last one then trains to the end) or each from the start of
    its phase to the end (`cumulative`).
    """
    if condition == "joint":
        return {}
    if condition.startswith("only_"):
        kept = MATRIX_OF[condition.removeprefix("only_")]
        others = [m for m in TOP_DOWN if m != kept]
        return {"init_at_target": ",".join(others), "schedule": ",".join(f"{m}:off" for m in others)}
    order = TOP_DOWN if condition == "top_down" else tuple(reversed(TOP_DOWN))
    parts = []
    for i, matrix in enumerate(order):
        start = i * phase_steps
        if sequencing == "cumulative" or i == len(order) - 1:
            parts.append(f"{matrix}:{start}")
        else:
            parts.append(f"{matrix}:{start}-{start + phase_steps}")
    return {"schedule": ",".join(parts)}


@dataclass(frozen=True)
class JointConfig:
    train: TrainConfig = field(default_factory=_joint_train)  # base run; each condition sets its schedule
    conditions: tuple[Condition, ...] = CONDITIONS  # which conditions to run
    phase_steps: int = 200  # top_down / bottom_up: steps of each matrix's turn
    sequencing: Sequencing = "phases"  # phases: one matrix at a time; cumulative: each keeps on once started
    seeds: int = 2  # runs per condition, seeds --seed, --seed + 1, ...
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check_base(self.train)
        check_seeds(self.seeds)
        check_device(self.device)
        check_int("phase_steps", self.phase_steps, 1)
        if not self.conditions or any(c not in CONDITIONS for c in self.conditions):
            raise ValueError(
                f"--conditions must be a non-empty subset of {CONDITIONS}, got {self.conditions!r}"
            )
        if self.sequencing not in get_args(Sequencing):
            raise ValueError(f"--sequencing must be one of {get_args(Sequencing)}, got {self.sequencing!r}")
        if {"top_down", "bottom_up"} & set(self.conditions) and self.train.optim.steps < 3 * self.phase_steps:
            raise ValueError(
                f"--phase-steps {self.phase_steps}: the three turns of top_down / bottom_up need "
                f"--steps >= {3 * self.phase_steps}, got {self.train.optim.steps}"
            )


@dataclass(frozen=True)
class JointCondition:
    schedule: str  # the --schedule of the condition's runs
    init_at_target: str  # its --init-at-target
    icl: dict[str, Crossings]  # "0.9", "0.99": steps to that in-context accuracy
    probes: dict[str, Crossings]  # memory -> steps to its probe's 0.9
    final_icl: list[float]  # per seed
    runs: list[TrainedRun]


@dataclass(frozen=True)
class JointResult(ExperimentResult):
    conditions: dict[str, JointCondition]
    target_icl: float  # in-context accuracy with all three memories at their targets, untrained
    phase_steps: int
    sequencing: str

    def headline(self) -> str:
        parts = [f"{name} {c.icl['0.99'].text()}" for name, c in self.conditions.items()]
        seeds = len(next(iter(self.conditions.values())).runs)
        return (
            f"steps to in-context accuracy 0.99 (median over {seeds} seed(s)): "
            + ", ".join(parts)
            + f"; all three memories at their targets, untrained: {self.target_icl:.3f}"
        )


def plot_joint(result: JointResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2, size=(5.5, 4.0))
    ax = axes[0][0]
    for name, cond in result.conditions.items():
        ax.plot(*_mean_curve(cond.runs, "eval/icl_acc"), label=name)
    if {"top_down", "bottom_up"} & set(result.conditions):
        for i in (1, 2):
            ax.axvline(i * result.phase_steps, color="gray", ls=":", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("in-context accuracy (seed mean)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"joint vs one at a time vs in sequence ({result.sequencing})")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    names = list(result.conditions)
    horizon = max(max(r.steps()) for c in result.conditions.values() for r in c.runs)
    for j, level in enumerate(("0.9", "0.99")):
        for i, name in enumerate(names):
            x, h = i + (j - 0.5) * 0.38, result.conditions[name].icl[level].median
            never = h is None  # drawn as a hatched bar up to the run length
            ax.bar(x, horizon if never else h, width=0.36, color=f"C{j}", alpha=0.25 if never else 0.9,
                   hatch="//" if never else None, label=f"icl {level}" if i == 0 else None)  # fmt: skip
            ax.text(x, horizon if never else h, "never" if never else f"{h:g}", ha="center", va="bottom",
                    fontsize=7, rotation=90)  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.18 * horizon)  # room for the labels above the bars
    ax.set_ylabel("steps (median over seeds)")
    ax.set_title("steps to in-context accuracy")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "joint")


@register(
    "joint",
    family="transformer",
    summary="joint vs one-at-a-time vs top-down / bottom-up training: steps to in-context accuracy",
    config=JointConfig,
    plot=plot_joint,
    full=lambda: JointConfig(train=experiment_train(PAPER), phase_steps=300, seeds=PAPER_SEEDS),
    small=lambda: JointConfig(
        train=_tiny(trigger_mode="fixed", steps=6), phase_steps=2, seeds=1, device="cpu"
    ),
)
def run_joint(config: JointConfig, out_dir: Path, *, log=print, progress: bool = True) -> JointResult:
    from training.schedule import TARGETS, init_at_target

    stats = load_stats()
    task, batch = eval_batch(config.train, stats)
    triggers = probe_triggers(config.train, task)
    model = config.train.build_model(stats.vocab_size)
    init_at_target(model, TARGETS, triggers, config.train.optim.target_scale)
    target_icl = evaluate(model, batch, probe_triggers=triggers)["eval/icl_acc"]
    log(f"[joint] all three memories at their targets, untrained: in-context accuracy {target_icl:.3f}")
    conditions: dict[str, JointCondition] = {}
    for name in config.conditions:
        changes = condition_changes(name, config.phase_steps, config.sequencing)
        runs = []
        for seed in run_seeds(config.train, config.seeds):
            train = config.train.replace(seed=seed, **changes)
            log(
                f"[joint] {name} ({train.optim.schedule or 'all train'}), seed {seed}: {train.optim.steps} steps"
            )
            runs.append(train_run(train, out_dir, f"{name}-seed{seed}", device=config.device, progress=progress,
                                  log=log))  # fmt: skip
        conditions[name] = JointCondition(
            schedule=changes.get("schedule", ""),
            init_at_target=changes.get("init_at_target", ""),
            icl=_icl_crossings(runs),
            probes=_probe_crossings(runs),
            final_icl=_final(runs),
            runs=runs,
        )
        log(f"[joint] {name}: steps to icl 0.9 {conditions[name].icl['0.9'].text()}, "
            f"0.99 {conditions[name].icl['0.99'].text()}")  # fmt: skip
    return JointResult(conditions, target_icl, config.phase_steps, config.sequencing)


# ---------------------------------------------------------------------------------------------
# n-triggers: the number of triggers K
# ---------------------------------------------------------------------------------------------

TriggerMode = Literal["fixed", "random"]


@dataclass(frozen=True)
class NTriggersConfig:
    train: TrainConfig = field(default_factory=lambda: _quick(steps=1000))  # base run; K and the mode vary
    ks: tuple[int, ...] = (1, 2, 5, 10, 20)  # numbers of triggers K
    modes: tuple[TriggerMode, ...] = ("fixed", "random")  # trigger modes
    seeds: int = 1  # runs per (mode, K)
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check_base(self.train)
        check_seeds(self.seeds)
        check_device(self.device)
        if not self.ks:
            raise ValueError("--ks must name at least one K")
        for k in self.ks:
            check_int("ks", k, 1)
            for mode in self.modes:
                dataclasses.replace(self.train.task, n_triggers=k, trigger_mode=mode).validate(65)
        if not self.modes or any(m not in get_args(TriggerMode) for m in self.modes):
            raise ValueError(
                f"--modes must be a non-empty subset of {get_args(TriggerMode)}, got {self.modes!r}"
            )


@dataclass(frozen=True)
class TriggerPoint:
    mode: str  # fixed or random
    k: int  # number of triggers (fixed: its trigger offset is the base run's)
    targets_per_sequence: float  # held-out targets after a 2nd+ occurrence, per sequence
    final_icl: list[float]  # per seed
    icl: dict[str, Crossings]  # "0.9", "0.99"
    probes: dict[str, Crossings]  # memory -> steps to its probe's 0.9
    runs: list[TrainedRun]


def _targets_per_sequence(train: TrainConfig, stats) -> float:
    _, batch = eval_batch(train, stats)
    return float((batch.counter >= 2).sum()) / batch.counter.shape[0]


@dataclass(frozen=True)
class NTriggersResult(ExperimentResult):
    points: list[TriggerPoint]

    def headline(self) -> str:
        parts = []
        for mode in dict.fromkeys(p.mode for p in self.points):
            pts = [p for p in self.points if p.mode == mode]
            acc = ", ".join(f"K={p.k} {_mean(p.final_icl):.3f} ({p.icl['0.99'].text()})" for p in pts)
            parts.append(f"{mode}: {acc}")
        return "final in-context accuracy (steps to 0.99) — " + "; ".join(parts)


def plot_n_triggers(result: NTriggersResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2)
    for mode in dict.fromkeys(p.mode for p in result.points):
        pts = [p for p in result.points if p.mode == mode]
        ks = [p.k for p in pts]
        axes[0][0].plot(ks, [_mean(p.final_icl) for p in pts], "o-", label=f"{mode} triggers")
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
    full=lambda: NTriggersConfig(train=experiment_train(PAPER), seeds=PAPER_SEEDS),
    small=lambda: NTriggersConfig(train=_tiny(), ks=(1, 3), seeds=1, device="cpu"),
)
def run_n_triggers(
    config: NTriggersConfig, out_dir: Path, *, log=print, progress: bool = True
) -> NTriggersResult:
    stats = load_stats()
    points = []
    for mode in config.modes:
        for k in config.ks:
            base = config.train.replace(trigger_mode=mode, n_triggers=k)
            runs = []
            for seed in run_seeds(base, config.seeds):
                log(f"[n-triggers] {mode} K={k}, seed {seed}: {base.optim.steps} steps")
                runs.append(train_run(base.replace(seed=seed), out_dir, f"{mode}-K{k}-seed{seed}",
                                      device=config.device, progress=progress, log=log))  # fmt: skip
            points.append(TriggerPoint(mode, k, _targets_per_sequence(base, stats), _final(runs),
                                       _icl_crossings(runs), _probe_crossings(runs), runs))  # fmt: skip
    return NTriggersResult(points)


# ---------------------------------------------------------------------------------------------
# trigger-frequency: frequent vs rare fixed triggers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TriggerFrequencyConfig:
    train: TrainConfig = field(default_factory=lambda: _quick(trigger_mode="fixed", steps=1000))  # base run
    offsets: tuple[int, ...] = (0, 5, 10, 20, 30)  # fixed triggers: skip this many most frequent tokens
    seeds: int = 1  # runs per offset
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check_base(self.train)
        check_seeds(self.seeds)
        check_device(self.device)
        if not self.offsets:
            raise ValueError("--offsets must name at least one offset")
        k = self.train.task.n_triggers
        if k < 1:
            raise ValueError("--n-triggers must be >= 1 for trigger-frequency")
        for offset in self.offsets:
            check_int("offsets", offset, 0)
            if offset + k > 65:
                raise ValueError(f"--offsets: {offset} + K={k} triggers exceed the 65 tokens")


@dataclass(frozen=True)
class FrequencyPoint:
    offset: int  # rank of the first trigger in the frequency ranking (0: the most frequent)
    triggers: str  # the K trigger characters
    unigram_mass: float  # their total unigram probability
    targets_per_sequence: float  # held-out targets after a 2nd+ occurrence, per sequence
    final_icl: list[float]  # per seed
    icl: dict[str, Crossings]  # "0.9", "0.99"
    probes: dict[str, Crossings]  # memory -> steps to its probe's 0.9
    runs: list[TrainedRun]


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
        axes[0][0].plot(*_mean_curve(p.runs, "eval/icl_acc"), label=f"offset {p.offset} ({p.triggers!r})")
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
        train=experiment_train(PAPER), offsets=(0, 5, 10, 20, 30, 40), seeds=PAPER_SEEDS
    ),  # fmt: skip
    small=lambda: TriggerFrequencyConfig(train=_tiny(trigger_mode="fixed"), offsets=(0, 10), device="cpu"),
)
def run_trigger_frequency(
    config: TriggerFrequencyConfig, out_dir: Path, *, log=print, progress: bool = True
) -> TriggerFrequencyResult:
    stats = load_stats()
    points = []
    for offset in config.offsets:
        base = config.train.replace(trigger_mode="fixed", trigger_offset=offset)
        task = TriggeredBigram(base.task, stats)
        chars = "".join(stats.decode(task.fixed_triggers.tolist()))
        mass = float(stats.unigram_probs[task.fixed_triggers].sum())
        runs = []
        for seed in run_seeds(base, config.seeds):
            log(f"[trigger-frequency] offset {offset} ({chars!r}, mass {mass:.3f}), seed {seed}")
            runs.append(train_run(base.replace(seed=seed), out_dir, f"offset{offset}-seed{seed}",
                                  device=config.device, progress=progress, log=log))  # fmt: skip
        points.append(FrequencyPoint(offset, chars, mass, _targets_per_sequence(base, stats), _final(runs),
                                     _icl_crossings(runs), _probe_crossings(runs), runs))  # fmt: skip
    return TriggerFrequencyResult(points)


# ---------------------------------------------------------------------------------------------
# held-out-outputs: outputs never copied in training
# ---------------------------------------------------------------------------------------------

SPLITS = ("train", "test")  # outputs from the first 75% of the ids (seen) / the other 25% (held out)


@dataclass(frozen=True)
class HeldOutConfig:
    train: TrainConfig = field(
        default_factory=lambda: _quick(steps=1000)
    )  # base run (on --output-split train)
    points: int = 10  # checkpoints evaluated on both splits along the run
    seeds: int = 1  # runs, seeds --seed, --seed + 1, ...
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check_base(self.train)
        check_seeds(self.seeds)
        check_device(self.device)
        check_int("points", self.points, 1)
        if self.train.task.output_mode == "bigram":
            raise ValueError("--output-mode bigram cannot be split into seen and held-out outputs")


@dataclass(frozen=True)
class HeldOutRun:
    run: TrainedRun
    steps: list[int]  # checkpoint steps
    icl: dict[str, list[float]]  # split -> in-context accuracy at each checkpoint
    ov2_recall: dict[str, list[float]]  # split -> W_OV2 recall over that split's token ids
    # split -> layer 2's argmax follows an earlier occurrence of the trigger (attn/score2_acc) and
    # the token it attends to is the prediction (attn/pred_attended_acc): where the head looks vs
    # whether it copies what it finds
    score2: dict[str, list[float]]
    pred_attended: dict[str, list[float]]


@dataclass(frozen=True)
class HeldOutResult(ExperimentResult):
    runs: list[HeldOutRun]
    final_icl: dict[str, float]  # split -> seed mean at the last checkpoint
    final_ov2: dict[str, float]  # split -> seed mean W_OV2 recall over the split's ids
    final_score2: dict[str, float]  # split -> seed mean attn/score2_acc at the last checkpoint
    final_pred_attended: dict[str, float]  # split -> seed mean attn/pred_attended_acc

    def headline(self) -> str:
        return (
            f"in-context accuracy on outputs seen in training {self.final_icl['train']:.3f}, on held-out "
            f"outputs {self.final_icl['test']:.3f}; layer 2 attends after the previous trigger "
            f"{self.final_score2['train']:.2f} vs {self.final_score2['test']:.2f}, predicts the attended "
            f"token {self.final_pred_attended['train']:.2f} vs {self.final_pred_attended['test']:.2f}; W_OV2 "
            f"recall over those tokens {self.final_ov2['train']:.2f} vs {self.final_ov2['test']:.2f}"
        )


def plot_held_out(result: HeldOutResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2)
    panels = (
        (axes[0][0], "icl", "-", "in-context accuracy"),
        (axes[0][0], "score2", ":", "layer 2 attends after the trigger"),
        (axes[0][0], "pred_attended", "--", "prediction = attended token"),
        (axes[0][1], "ov2_recall", "-", "W_OV2 recall over the split's tokens"),
    )
    for split, color in zip(SPLITS, ("tab:blue", "tab:red")):
        name = "seen outputs" if split == "train" else "held-out outputs"
        for i, r in enumerate(result.runs):
            for ax, key, style, what in panels:
                label = f"{what}, {name}" if i == 0 else None
                ax.plot(r.steps, getattr(r, key)[split], style, marker="o", ms=3, color=color, label=label)
    axes[0][1].set_ylabel("W_OV2 recall over the split's tokens")
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "held_out_outputs")


def _ov2_recall_over(model, ids: torch.Tensor) -> float:
    from probes.recall import memory_recall

    layer = model.cfg.n_layers - 1
    ids = ids.to(model.W_E.device)
    return memory_recall(model.OV[layer, 0], model.W_E[ids], model.W_U.T, ids)


@register(
    "held-out-outputs",
    family="transformer",
    summary="outputs from 75% of the tokens in training, the other 25% at test: both in-context accuracies",
    config=HeldOutConfig,
    plot=plot_held_out,
    full=lambda: HeldOutConfig(train=experiment_train(PAPER), seeds=PAPER_SEEDS),
    small=lambda: HeldOutConfig(train=_tiny(), points=2, device="cpu"),
)
def run_held_out(config: HeldOutConfig, out_dir: Path, *, log=print, progress: bool = True) -> HeldOutResult:
    from birth.experiments.common import RUNS
    from birth.models.transformer import native
    from training.checkpoint import list_checkpoints, load_checkpoint, load_model_state

    stats = load_stats()
    steps = config.train.optim.steps
    base = config.train.replace(output_split="train", checkpoint_every=max(1, steps // config.points))
    batches = {split: eval_batch(base.replace(output_split=split), stats) for split in SPLITS}
    ids = {split: torch.arange(*output_split_range(split, stats.vocab_size)) for split in SPLITS}
    runs = []
    for seed in run_seeds(base, config.seeds):
        train = base.replace(seed=seed)
        log(f"[held-out-outputs] training outputs: token ids {int(ids['train'][0])}-{int(ids['train'][-1])}, "
            f"held out: {int(ids['test'][0])}-{int(ids['test'][-1])}; seed {seed}")  # fmt: skip
        run = train_run(train, out_dir, f"seed{seed}", device=config.device, progress=progress, log=log)
        model = train.build_model(stats.vocab_size)
        model.eval()
        curve_steps = []
        icl, ov2, score2, attended = ({s: [] for s in SPLITS} for _ in range(4))
        for step, path in list_checkpoints(Path(out_dir) / RUNS / f"seed{seed}"):
            load_model_state(native(model), load_checkpoint(path)["model"], path)
            curve_steps.append(step)
            for split, (task, batch) in batches.items():
                row = evaluate(
                    model, batch, probe_triggers=probe_triggers(train, task), attention_probes=True
                )
                icl[split].append(row["eval/icl_acc"])
                ov2[split].append(_ov2_recall_over(model, ids[split]))
                score2[split].append(row["attn/score2_acc"])
                attended[split].append(row["attn/pred_attended_acc"])
        runs.append(HeldOutRun(run, curve_steps, icl, ov2, score2, attended))
        log(f"[held-out-outputs] seed {seed}: in-context accuracy seen {icl['train'][-1]:.3f}, "
            f"held out {icl['test'][-1]:.3f}")  # fmt: skip

    def final(curve: str) -> dict[str, float]:  # seed mean at the last checkpoint, per split
        return {s: _mean([getattr(r, curve)[s][-1] for r in runs]) for s in SPLITS}

    return HeldOutResult(runs, final("icl"), final("ov2_recall"), final("score2"), final("pred_attended"))


# ---------------------------------------------------------------------------------------------
# order-readings: the learning order under two readings of the probes
# ---------------------------------------------------------------------------------------------

Arm = Literal["quick", "quick-fixed", "paper"]
ARMS: tuple[str, ...] = get_args(Arm)
READINGS = ("recall", "recall_all", "margin")


def reading_keys(reading: str) -> dict[str, str]:
    """The metric each memory is read from under a reading."""
    if reading == "recall":
        return {m: f"probes/{m}" for m in MEMORIES}
    if reading == "recall_all":  # W_OV2 and W_KQ1 already rank every token / position
        return {"W_OV2": "probes/W_OV2", "W_KQ2": "recall_all/W_KQ2", "W_KQ1": "probes/W_KQ1"}
    return {m: f"margin/{m}" for m in MEMORIES}


def margin_level(values: Sequence[float], fraction: float, min_rise: float) -> float | None:
    """The margin reading's level for one memory: m(0) + fraction (m(end) - m(0)), the point where
    the memory has covered `fraction` of its rise over the run; None when it rose by less than
    `min_rise` (the memory did not form). The margins of learned memories end at different heights
    (W_KQ¹'s neighbouring positions score close to the right one), so one absolute level would
    compare heights, not times; a random init starts every margin near -0.5, a zero init at 0."""
    start, end = values[0], values[-1]
    if any(v != v for v in (start, end)) or end - start < min_rise:
        return None
    return start + fraction * (end - start)


def order_under(
    run: TrainedRun, reading: str, fraction: float = 0.5, min_rise: float = 0.1
) -> tuple[dict[str, int | None], dict[str, float | None]]:
    """(memory -> first step reaching its level, memory -> level) under a reading: the recalls
    at 0.9, the margins at `margin_level`."""
    order, levels = {}, {}
    for memory, key in reading_keys(reading).items():
        level = margin_level(run.curve(key), fraction, min_rise) if reading == "margin" else THRESHOLD
        levels[memory] = level
        order[memory] = None if level is None else crossing(run, key, level)
    return order, levels


def order_text(order: dict[str, int | None]) -> str:
    reached = sorted((s, m) for m, s in order.items() if s is not None)
    text = " → ".join(f"{m} ({s})" for s, m in reached)
    missing = [m for m, s in order.items() if s is None]
    return text + (("; " if text else "") + "not reached: " + ", ".join(missing) if missing else "")


def is_paper_order(order: dict[str, int | None]) -> bool:
    """W_OV2 → W_KQ2 → W_KQ1 with W_OV2 first at a distinct step; W_KQ1 may be unreached (last)."""
    ov, kq2, kq1 = (order[m] for m in MEMORIES)
    if ov is None or kq2 is None or not ov < kq2:
        return False
    return kq1 is None or kq2 < kq1


@dataclass(frozen=True)
class OrderReadingsConfig:
    train: TrainConfig = field(default_factory=_quick)  # the quick arm (quick-fixed: with fixed triggers)
    # the paper arm is the paper preset cut to its first steps (1.3 s/step on 2 CPU cores; W_OV2 and
    # W_KQ2 cross within 300); full() runs its whole 1000 steps
    paper_steps: int = 300  # steps of the paper arm (the paper preset, fixed triggers)
    arms: tuple[Arm, ...] = ARMS  # quick, quick-fixed (the quick arm with fixed triggers), paper
    margin_fraction: float = 0.5  # margin reading: first step covering this fraction of the margin's rise
    min_rise: float = 0.1  # margin reading: a margin rising less than this over the run is "not learned"
    seeds: int = 1  # runs per arm
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check_base(self.train)
        check_int("paper_steps", self.paper_steps, 1)
        check_seeds(self.seeds)
        check_device(self.device)
        check_float("margin_fraction", self.margin_fraction, 0.0, 1.0, open_low=True)
        check_float("min_rise", self.min_rise, 0.0, 2.0)
        if not self.arms or any(a not in ARMS for a in self.arms):
            raise ValueError(f"--arms must be a non-empty subset of {ARMS}, got {self.arms!r}")


@dataclass(frozen=True)
class ArmOrders:
    trigger_mode: str  # fixed or random
    orders: dict[str, list[dict[str, int | None]]]  # reading -> per seed, memory -> crossing step
    levels: dict[str, list[dict[str, float | None]]]  # reading -> per seed, memory -> the level crossed
    paper_order: dict[str, int]  # reading -> seeds whose order is W_OV2 → W_KQ2 → W_KQ1
    runs: list[TrainedRun]


@dataclass(frozen=True)
class OrderReadingsResult(ExperimentResult):
    arms: dict[str, ArmOrders]
    margin_fraction: float

    def headline(self) -> str:
        parts = []
        for arm, a in self.arms.items():
            first = {r: order_text(a.orders[r][0]) for r in READINGS}
            parts.append(f"{arm}: " + " | ".join(f"{r}: {t}" for r, t in first.items()))
        return "learning order (first seed) — " + "; ".join(parts)


def plot_order_readings(result: OrderReadingsResult, out_dir: Path) -> list[Path]:
    arms = list(result.arms)
    fig, axes = new_figure(len(arms), len(READINGS), size=(4.2, 3.0))
    for i, arm in enumerate(arms):
        run = result.arms[arm].runs[0]
        for j, reading in enumerate(READINGS):
            ax = axes[i][j]
            order = result.arms[arm].orders[reading][0]
            levels = result.arms[arm].levels[reading][0]
            for k, (memory, key) in enumerate(reading_keys(reading).items()):
                ax.plot(run.steps(), run.curve(key), color=f"C{k}", label=memory)
                if order[memory] is not None:
                    ax.axvline(order[memory], color=f"C{k}", ls=":", lw=0.8)
                    ax.plot([order[memory]], [levels[memory]], "o", color=f"C{k}", ms=4)
            if reading != "margin":
                ax.axhline(THRESHOLD, color="gray", lw=0.6)
            ax.set_ylim(-1.02 if reading == "margin" else -0.02, 1.02)
            ax.set_title(f"{arm} ({result.arms[arm].trigger_mode} triggers): {reading}", fontsize=9)
            ax.set_xlabel("step")
            if j == 0:
                ax.legend(fontsize=7)
    paths = save_figure(fig, out_dir, "order_readings")
    # the W_KQ1 probe by position bin: late positions learn last (their gradient is ∝ 1/t)
    fig, axes = new_figure(1, len(arms), size=(4.2, 3.2))
    for i, arm in enumerate(arms):
        run, ax = result.arms[arm].runs[0], axes[0][i]
        bins = sorted(k for k in run.history[-1] if k.startswith("kq1/pos_"))
        for k, key in enumerate(bins):
            color = (k / max(1, len(bins) - 1), 0.2, 1 - k / max(1, len(bins) - 1))
            ax.plot(run.steps(), run.curve(key), color=color, label=key.removeprefix("kq1/pos_"))
        ax.set_xlabel("step")
        ax.set_ylabel("W_KQ1 recall of the positions t in the bin")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{arm}: W_KQ1 by position", fontsize=9)
        ax.legend(fontsize=6, title="t", title_fontsize=7)
    return paths + save_figure(fig, out_dir, "kq1_positions")


@register(
    "order-readings",
    family="transformer",
    summary="learning order under the recall probes, recall against all tokens and margins (quick, paper)",
    config=OrderReadingsConfig,
    plot=plot_order_readings,
    full=lambda: OrderReadingsConfig(paper_steps=PAPER.optim.steps, seeds=PAPER_SEEDS),
    small=lambda: OrderReadingsConfig(
        train=_tiny(), paper_steps=1, arms=("quick", "quick-fixed"), device="cpu"
    ),
)
def run_order_readings(
    config: OrderReadingsConfig, out_dir: Path, *, log=print, progress: bool = True
) -> OrderReadingsResult:
    arms: dict[str, ArmOrders] = {}
    for arm in config.arms:
        base = {
            "quick": config.train,
            "quick-fixed": config.train.replace(trigger_mode="fixed"),
            "paper": experiment_train(PAPER).replace(steps=config.paper_steps),
        }[arm]
        runs = []
        for seed in run_seeds(base, config.seeds):
            log(
                f"[order-readings] {arm} ({base.task.trigger_mode} triggers), seed {seed}: {base.optim.steps} steps"
            )
            runs.append(train_run(base.replace(seed=seed), out_dir, f"{arm}-seed{seed}", device=config.device,
                                  progress=progress, log=log))  # fmt: skip
        read = {
            r: [order_under(run, r, config.margin_fraction, config.min_rise) for run in runs]
            for r in READINGS
        }
        orders = {r: [o for o, _ in read[r]] for r in READINGS}
        levels = {r: [lv for _, lv in read[r]] for r in READINGS}
        paper = {r: sum(is_paper_order(o) for o in orders[r]) for r in READINGS}
        arms[arm] = ArmOrders(base.task.trigger_mode, orders, levels, paper, runs)
        for r in READINGS:
            log(f"[order-readings] {arm} {r}: {order_text(orders[r][0])}")
    return OrderReadingsResult(arms, config.margin_fraction)
