"""`gradient-steps`: three large-batch gradient steps from zero (paper, Theorem 3) on W_OV², W_KQ²,
W_KQ¹ in turn, against the reverse order, with random and with exactly orthogonal embeddings
(the procedure: `birth.experiments.theory.steps`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from birth.base.io import new_figure, save_figure
from birth.base.validate import Int, Validated
from birth.experiments.common import Train
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.theory.common import check_simplified_two_layers, gradient_train, orthogonal_train
from birth.experiments.theory.steps import (
    ORTHOGONAL_STEP_NORMS,
    PAPER_ORDER,
    REVERSE_ORDER,
    StepRecord,
    StepsConfig,
    run_gradient_steps,
)
from birth.models.targets import MEMORIES


@dataclass(frozen=True)
class GradientStepsConfig(Validated):
    train: Train = field(default_factory=gradient_train)  # model, task and held-out batch
    # the loss is on second occurrences only (≈ 2 targets per sequence at T=64): many sequences
    sequences: Annotated[int, Int(1)] = 4096  # sequences per gradient step (random embeddings)
    # without cross-talk step 3 is limited by sampling noise (its signal is ∝ 1/t)
    orthogonal_factor: Annotated[int, Int(1)] = (
        4  # the orthogonal-embedding run uses this many times --sequences
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_simplified_two_layers(self.train)


@dataclass(frozen=True)
class StepRun:
    """One application of the three-step procedure."""

    label: str  # paper, reverse, orthogonal
    order: tuple[str, ...]  # the memories stepped, in turn
    embeddings: str  # random (the model's N(0, I/d)) or orthogonal (the infinite-width idealization)
    d_model: int
    n_sequences: int  # sequences per gradient step
    title: str
    records: list[StepRecord]  # the initial state, then the state after each step

    def recalls(self) -> str:
        steps = ", ".join(f"{r.matrix} {r.probes[r.matrix]:.2f}" for r in self.records[1:])
        return f"{steps} (icl {self.records[-1].icl_acc:.3f})"


@dataclass(frozen=True)
class GradientStepsResult(ExperimentResult):
    base: str  # distribution of the non-trigger transitions (the theorem's: uniform)
    runs: list[StepRun]  # paper order, reverse order, paper order with orthogonal embeddings

    def run(self, label: str) -> StepRun:
        return next(r for r in self.runs if r.label == label)

    def headline(self) -> str:
        ortho = self.run("orthogonal")
        return (
            f"R after steps 1-3, paper order: {self.run('paper').recalls()}; reverse order: "
            f"{self.run('reverse').recalls()}; orthogonal embeddings (d={ortho.d_model}), paper order: "
            f"{ortho.recalls()}"
        )


def plot_gradient_steps(result: GradientStepsResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, len(result.runs), size=(5.0, 4.0))
    for ax, run in zip(axes[0], result.runs):
        xs = list(range(len(run.records)))
        for key in MEMORIES:
            ax.plot(xs, [r.probes[key] for r in run.records], marker="o", label=key)
        ax.plot(xs, [r.icl_acc for r in run.records], "k--", marker="x", label="icl acc")
        ax.set_xticks(xs, ["init"] + [r.matrix for r in run.records[1:]])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(run.title, fontsize=9)
        ax.set_ylabel("memory recall R")
        ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "gradient_steps")


@register(
    "gradient-steps",
    family="theory",
    summary="3 large-batch gradient steps from zero (W_OV2, W_KQ2, W_KQ1) vs reverse order",
    config=GradientStepsConfig,
    plot=plot_gradient_steps,
    full=lambda: GradientStepsConfig(sequences=32768),
    small=lambda: GradientStepsConfig(
        train=gradient_train().replace(d_model=32, seq_len=24, eval_batch_size=16),
        sequences=64,
        orthogonal_factor=1,
    ),
)
def run_gradient_steps_experiment(
    config: GradientStepsConfig, out_dir: Path, *, log=print, progress: bool = True
) -> GradientStepsResult:
    train, n = config.train, config.sequences
    # the theorem's infinite-width idealization: exactly orthogonal embeddings, d rounded up to 128
    ortho = orthogonal_train(train)
    d, d_ortho = train.model.d_model, ortho.model.d_model
    # label, order, training config, embeddings, step norms (None: the defaults), sequences, title
    plans = (
        ("paper", PAPER_ORDER, train, "random", None, n, f"paper order, d={d}"),
        ("reverse", REVERSE_ORDER, train, "random", None, n, f"reverse order, d={d}"),
        ("orthogonal", PAPER_ORDER, ortho, "orthogonal", ORTHOGONAL_STEP_NORMS, config.orthogonal_factor * n,
         f"paper order, orthogonal embeddings, d={d_ortho}"),
    )  # fmt: skip
    runs = []
    for label, order, cfg, embeddings, norms, sequences, title in plans:
        log(
            f"[gradient-steps] {label}: order {' → '.join(order)}, {embeddings} embeddings, "
            f"d={cfg.model.d_model}, {sequences} sequences per step"
        )
        steps = StepsConfig(order=order, n_sequences=sequences, embeddings=embeddings, step_norms=norms)
        records = run_gradient_steps(cfg, steps, progress=log)
        runs.append(StepRun(label, order, embeddings, cfg.model.d_model, sequences, title, records))
    return GradientStepsResult(base="uniform", runs=runs)
