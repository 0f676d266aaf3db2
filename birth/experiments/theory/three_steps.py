"""`three-steps`: the three gradient steps in the theorem's setting (`theorem`), which give a
working induction head, and the same steps with one of the theorem's assumptions removed at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, get_args

from birth.base.io import new_figure, save_figure
from birth.base.validate import Choices, Int, Validated
from birth.experiments.common import Train
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.theory.common import check_simplified_two_layers, gradient_train, orthogonal_train
from birth.experiments.theory.steps import (
    ORTHOGONAL_STEP_NORMS,
    PAPER_ORDER,
    Data,
    StepNorms,
    StepRecord,
    StepsConfig,
    run_gradient_steps,
)
from birth.experiments.theory.theorem import THEOREM_STEP_NORMS
from birth.models.targets import Memory
from training.config import TrainConfig

Variant = Literal["theorem", "no-symmetry", "no-restriction", "identity-value", "task-data", "paper-setting"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
THREE_STEPS_TARGET = 0.9  # the in-context accuracy asked of the construction


@dataclass(frozen=True)
class VariantPlan:
    """One setting of the three steps: the theorem's unless a field says otherwise."""

    description: str  # one line: what differs from the theorem's setting
    data: Data = "theorem"  # theorem (the second output token, `theorem.theorem_batch`) or task
    value_tokens: bool = True  # layer 2's value reads the token part only (else W_V² = I)
    restrict: tuple[Memory, ...] = PAPER_ORDER  # memories stepped on their theorem block only
    symmetric: bool = True  # gradients averaged over the token relabelings that keep the law
    # the update norm of each step (a grid: line search on held-out sequences)
    step_norms: StepNorms = field(default_factory=lambda: dict(THEOREM_STEP_NORMS))


VARIANT_PLANS: dict[Variant, VariantPlan] = {
    "theorem": VariantPlan("the theorem's setting"),
    "no-symmetry": VariantPlan("sampled gradients, not averaged over relabelings", symmetric=False),
    "no-restriction": VariantPlan("every block of W_K¹ and W_K² steps", restrict=()),
    "identity-value": VariantPlan(
        "W_V² = I and every block of W_O² steps: the value carries layer 1's output",
        value_tokens=False,
        restrict=("W_KQ2", "W_KQ1"),
    ),
    "task-data": VariantPlan("the task's sequences, loss on every counter >= 2 target", data="task"),
    "paper-setting": VariantPlan(
        "gradient-steps' orthogonal run: task data, W_V² = I, no simplification",
        data="task",
        value_tokens=False,
        restrict=(),
        symmetric=False,
        step_norms=dict(ORTHOGONAL_STEP_NORMS),
    ),
}


def _three_steps_train() -> TrainConfig:
    # d = 384 fits the orthogonal embeddings at T = 64 (3N + 2T = 323); 512 held-out sequences hold
    # about 1000 counter >= 2 targets
    return gradient_train().replace(d_model=384, eval_batch_size=512)


@dataclass(frozen=True)
class ThreeStepsConfig(Validated):
    train: Train = field(default_factory=_three_steps_train)  # model, task, held-out batch (d raised to fit)
    # theorem data: sequences per first-occurrence position (T − 2 of them) per step
    per_position: Annotated[int, Int(1)] = 8
    task_sequences: Annotated[int, Int(1)] = 4096  # task data: sequences per step
    # the settings to run, each a row of the result
    variants: Annotated[tuple[Variant, ...], Choices(VARIANTS)] = VARIANTS

    def __post_init__(self) -> None:
        super().__post_init__()
        check_simplified_two_layers(self.train)
        if self.train.task.trigger_mode != "fixed":
            raise ValueError(
                f"--trigger-mode must be fixed (the theorem's data), got {self.train.task.trigger_mode!r}"
            )
        if self.train.optim.loss_on != "outputs":
            raise ValueError(
                f"--loss-on must be outputs (the theorem's loss), got {self.train.optim.loss_on!r}"
            )


@dataclass(frozen=True)
class VariantRun:
    """The three steps in one setting."""

    variant: str
    description: str
    data: str
    value_tokens: bool
    restrict: tuple[str, ...]  # the memories stepped on their theorem block only
    symmetric: bool
    d_model: int
    n_sequences: int  # sequences per gradient step
    seconds: float  # wall time of the three steps and their measurements
    records: list[StepRecord]  # the initial state, then the state after each step

    @property
    def recalls(self) -> list[float]:
        """R of the memory stepped, after each step."""
        return [r.probes[r.matrix] for r in self.records[1:]]

    @property
    def icl_acc(self) -> float:
        return self.records[-1].icl_acc

    def summary(self) -> str:
        return f"R = {', '.join(f'{v:.2f}' for v in self.recalls)}, icl {self.icl_acc:.3f}"


@dataclass(frozen=True)
class ThreeStepsResult(ExperimentResult):
    d_model: int
    seq_len: int
    target: float  # the in-context accuracy the construction should reach
    runs: list[VariantRun]

    def run(self, variant: str) -> VariantRun:
        return next(r for r in self.runs if r.variant == variant)

    def headline(self) -> str:
        rows = "; ".join(f"{r.variant}: {r.summary()}" for r in self.runs)
        return f"three gradient steps (orthogonal embeddings, d={self.d_model}, T={self.seq_len}): {rows}"


def plot_three_steps(result: ThreeStepsResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2, size=(6.0, 4.2))
    ax = axes[0][0]
    for run in result.runs:
        ax.plot(range(len(run.records)), [r.icl_acc for r in run.records], marker="o", label=run.variant)
    ax.axhline(result.target, color="gray", ls=":", lw=0.8)
    ax.set_xticks(range(4), ["init", *PAPER_ORDER])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("in-context accuracy")
    ax.set_title(f"after each step (d={result.d_model}, T={result.seq_len})", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0][1]
    keys = [*PAPER_ORDER, "icl"]
    width = 0.8 / len(result.runs)
    for i, run in enumerate(result.runs):
        values = [*run.recalls, run.icl_acc]
        ax.bar(
            [k + (i - (len(result.runs) - 1) / 2) * width for k in range(len(keys))],
            values,
            width,
            label=run.variant,
        )
    ax.set_xticks(range(len(keys)), ["R(W_OV2)", "R(W_KQ2)", "R(W_KQ1)", "icl acc"])
    ax.set_ylim(0, 1.05)
    ax.set_title("after the three steps", fontsize=9)
    return save_figure(fig, out_dir, "three_steps")


@register(
    "three-steps",
    family="theory",
    summary="3 gradient steps in the theorem's setting (a working induction head) and without each assumption",
    config=ThreeStepsConfig,
    plot=plot_three_steps,
    full=lambda: ThreeStepsConfig(per_position=64, task_sequences=16384),
    small=lambda: ThreeStepsConfig(
        train=gradient_train().replace(d_model=32, seq_len=16, eval_batch_size=32),
        per_position=1,
        task_sequences=128,  # second occurrences are rare at T = 16
        variants=("theorem", "task-data"),
    ),
)
def run_three_steps(
    config: ThreeStepsConfig, out_dir: Path, *, log=print, progress: bool = True
) -> ThreeStepsResult:
    train = orthogonal_train(config.train)
    T, d = train.task.seq_len, train.model.d_model
    runs = []
    for variant in config.variants:
        plan = VARIANT_PLANS[variant]
        n = config.per_position * (T - 2) if plan.data == "theorem" else config.task_sequences
        log(f"[three-steps] {variant} ({plan.description}): d={d}, T={T}, {n} sequences per step")
        start = time.perf_counter()
        steps = StepsConfig(
            order=PAPER_ORDER,
            n_sequences=n,
            embeddings="orthogonal",
            step_norms=plan.step_norms,
            data=plan.data,
            value_tokens=plan.value_tokens,
            restrict=plan.restrict,
            symmetric=plan.symmetric,
        )
        records = run_gradient_steps(train, steps, progress=log if progress else None)
        seconds = time.perf_counter() - start
        options = {
            k: getattr(plan, k) for k in ("description", "data", "value_tokens", "restrict", "symmetric")
        }
        runs.append(
            VariantRun(variant=variant, **options, d_model=d, n_sequences=n, seconds=seconds, records=records)
        )
    return ThreeStepsResult(d_model=d, seq_len=T, target=THREE_STEPS_TARGET, runs=runs)
