"""`joint`: which matrices train, and when (Bietti's talk *Transformers and Associative Memories*,
"Empirically probing the dynamics": *joint learning is faster*): the three memories W_O² (W_OV²), W_K² (W_KQ²), W_K¹ (W_KQ¹) trained jointly;
one at a time with the other two held at their hand-built targets; in sequence top-down
(W_O² → W_K² → W_K¹) and bottom-up. "Steps to X" is the first evaluation step at which a held-out
metric reaches X (None: never within the run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, get_args

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Choices, Int, Validated
from birth.experiments.common import (
    Seeds,
    Train,
    TrainedRun,
    eval_batch,
    probe_triggers,
    run_seeds,
    train_run,
)
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import (
    STUDY_SEEDS,
    Crossings,
    check_studied_model,
    final_values,
    icl_crossings,
    mean_curve,
    paper,
    probe_crossings,
    quick,
    study_tiny,
)
from tasks.protocol import MemoryTargets
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import ICL_ACC
from training.config import TrainConfig
from training.evaluation import evaluate, standard_groups
from training.schedule import TARGETS, init_at_target

Condition = Literal["joint", "only_W_OV2", "only_W_KQ2", "only_W_KQ1", "top_down", "bottom_up"]
CONDITIONS: tuple[Condition, ...] = get_args(Condition)
Sequencing = Literal["phases", "cumulative"]
TOP_DOWN = ("W_O2", "W_K2", "W_K1")  # W_OV² → W_KQ² → W_KQ¹, the theory's order
MATRIX_OF = {"W_OV2": "W_O2", "W_KQ2": "W_K2", "W_KQ1": "W_K1"}  # the trained matrix storing each memory


def _joint_train() -> TrainConfig:
    # fixed triggers (the paper's Fig. 3 task): the induction head forms within ~200 steps here
    return quick(trigger_mode="fixed", steps=600)


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
class JointConfig(Validated):
    train: Train = field(default_factory=_joint_train)  # base run; each condition sets its schedule
    conditions: Annotated[tuple[Condition, ...], Choices(CONDITIONS)] = CONDITIONS  # which conditions to run
    phase_steps: Annotated[int, Int(1)] = 200  # top_down / bottom_up: steps of each matrix's turn
    sequencing: Sequencing = "phases"  # phases: one matrix at a time; cumulative: each keeps on once started
    seeds: Seeds = 2  # runs per condition, seeds --seed, --seed + 1, ...
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_studied_model(self.train)
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
        ax.plot(*mean_curve(cond.runs, ICL_ACC), label=name)
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
    full=lambda: JointConfig(train=paper(), phase_steps=300, seeds=STUDY_SEEDS),
    small=lambda: JointConfig(
        train=study_tiny(trigger_mode="fixed", steps=6), phase_steps=2, seeds=1, device="cpu"
    ),
)
def run_joint(config: JointConfig, out_dir: Path, *, log=print, progress: bool = True) -> JointResult:
    stats = load_stats()
    task, batch = eval_batch(config.train, stats)
    triggers = probe_triggers(config.train, task)
    model = config.train.build_model(stats.vocab_size)
    init_at_target(model, TARGETS, triggers, config.train.optim.target_scale)
    target_icl = evaluate(model, batch, standard_groups(task, targets=MemoryTargets(triggers)))[ICL_ACC]
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
            icl=icl_crossings(runs),
            probes=probe_crossings(runs),
            final_icl=final_values(runs),
            runs=runs,
        )
        log(f"[joint] {name}: steps to icl 0.9 {conditions[name].icl['0.9'].text()}, "
            f"0.99 {conditions[name].icl['0.99'].text()}")  # fmt: skip
    return JointResult(conditions, target_icl, config.phase_steps, config.sequencing)
