"""`recall-dynamics`: the sequential learning of facts (Nichani, Lee, Bietti, ICLR 2025, section 5).
A one-layer transformer trained on the factual-recall task, its held-out answer loss and accuracy
over training against the relation-only baseline (the loss of the best predictor that sees the
relation alone, log D when the answers of a relation are spread evenly over its D answers).

Claim: learning is sequential; the model first predicts from the relation alone (answers in the
right answer set A_r, but not the subject's: the "hallucination" stage, the loss on a plateau at
the baseline) and only later uses the subject. Measured per seed: the plateau (evaluations where
the answer is in A_r for >= 90% of the sequences while the fact accuracy is below 50%, and the
loss within `tolerance` of the baseline), and the first step where the fact accuracy reaches 50%
(subject-specific recall starts) and 100%. Writes recall_dynamics.png.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from birth.base.io import new_figure, save_figure
from birth.base.validate import Float, Int
from birth.experiments.common import Positive, TrainedRun, train_run
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.recall_common import SMALL_FACTS, FactsConfig
from tasks.factual_recall import ANSWER_LOSS, FACT_ACC, RELATION_ACC, FactualRecall

RELATION_LEVEL = 0.9  # "predicts from the relation": this fraction of answers in the right set
RECALL_LEVEL = 0.5  # subject-specific recall has started once the fact accuracy reaches this


@dataclass(frozen=True)
class RecallDynamicsConfig(FactsConfig):
    """The task and the training (FactsConfig's fields, a smaller step and a finer cadence here),
    the model and the plateau's tolerance."""

    lr: Positive = 0.002  # AdamW learning rate (no weight decay)
    steps: Annotated[int, Int(1)] = 1500  # training steps per run
    eval_every: Annotated[int, Int(1)] = 10  # evaluation cadence of each run
    d_model: Annotated[int, Int(2)] = 32  # model width d
    mlp_multiple: Annotated[int, Int(0)] = 2  # MLP width m = k d (0: no MLP)
    seeds: Annotated[int, Int(1)] = 3  # runs (model seeds --seed, --seed + 1, ...)
    # plateau: |loss - baseline| <= tolerance x baseline
    tolerance: Annotated[float, Float(0.0, open_low=True)] = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_model % self.n_heads:
            raise ValueError(f"--n-heads {self.n_heads} must divide --d-model {self.d_model}")


@dataclass(frozen=True)
class SeedDynamics:
    seed: int
    steps: list[int]
    answer_loss: list[float]
    fact_acc: list[float]
    relation_acc: list[float]
    plateau: tuple[int, int] | None  # first and last evaluation step of the hallucination stage
    recall_start: int | None  # first step with fact accuracy >= RECALL_LEVEL
    recall_done: int | None  # first step with fact accuracy 1.0 on the held-out batch


@dataclass(frozen=True)
class RecallDynamicsResult(ExperimentResult):
    baseline_loss: float  # relation-only loss
    uniform_loss: float  # log D
    runs: list[SeedDynamics]

    def headline(self) -> str:
        seen = sum(r.plateau is not None for r in self.runs)
        parts = [
            f"plateau at the relation-only loss {self.baseline_loss:.3f} in {seen}/{len(self.runs)} seeds",
        ]
        for r in self.runs:
            span = "none" if r.plateau is None else f"{r.plateau[0]}-{r.plateau[1]}"
            parts.append(f"seed {r.seed}: plateau {span}, recall from step {r.recall_start}")
        return "; ".join(parts)


def dynamics_of(run: TrainedRun, baseline: float, tolerance: float) -> SeedDynamics:
    steps = run.steps()
    loss, fact, relation = (run.curve(k) for k in (ANSWER_LOSS, FACT_ACC, RELATION_ACC))
    stage = [
        s
        for s, l_, f, r in zip(steps, loss, fact, relation)
        if r >= RELATION_LEVEL and f < RECALL_LEVEL and abs(l_ - baseline) <= tolerance * baseline
    ]
    first = next((s for s, f in zip(steps, fact) if f >= RECALL_LEVEL), None)
    done = next((s for s, f in zip(steps, fact) if f >= 1.0), None)
    plateau = (stage[0], stage[-1]) if stage else None
    return SeedDynamics(run.seed, steps, loss, fact, relation, plateau, first, done)


def plot_recall_dynamics(result: RecallDynamicsResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2, (4.8, 3.6))
    left, right = axes[0]
    for r in result.runs:
        (line,) = left.plot(r.steps, r.answer_loss, label=f"seed {r.seed}")
        right.plot(r.steps, r.fact_acc, color=line.get_color(), label=f"facts, seed {r.seed}")
        right.plot(
            r.steps, r.relation_acc, ":", color=line.get_color(), label=f"answer in A_r, seed {r.seed}"
        )
        if r.plateau is not None:
            left.axvspan(*r.plateau, color=line.get_color(), alpha=0.1)
    left.axhline(result.baseline_loss, color="k", ls="--", lw=0.8, label="relation-only loss")
    left.set(xlabel="step", ylabel="held-out answer loss", title="loss vs the relation-only baseline")
    left.legend(fontsize=7)
    right.set(xlabel="step", ylabel="held-out accuracy", ylim=(0, 1.02), title="facts vs relation only")
    right.legend(fontsize=6)
    return save_figure(fig, out_dir, "recall_dynamics")


@register(
    "recall-dynamics",
    family="transformer",
    config=RecallDynamicsConfig,
    plot=plot_recall_dynamics,
    summary="factual recall over training: the relation-only (hallucination) plateau, then subject recall",
    full=lambda: RecallDynamicsConfig(
        n_subjects=128,
        n_relations=8,
        lr=0.001,
        steps=6000,
        eval_every=25,
        d_model=64,
        seeds=5,
    ),
    small=lambda: RecallDynamicsConfig(
        **SMALL_FACTS,
        eval_every=10,
        d_model=8,
        mlp_multiple=1,
        seeds=2,
    ),
)
def run_recall_dynamics(
    config: RecallDynamicsConfig, out_dir: Path, *, log=print, progress: bool = True
) -> RecallDynamicsResult:
    facts = config
    task = FactualRecall(facts.task())
    baseline, uniform = task.relation_only_loss(), math.log(facts.answers_per_relation)
    log(
        f"recall-dynamics: {facts.task().num_facts} facts, d={config.d_model}, MLP {config.mlp_multiple}d, "
        f"AdamW lr {facts.lr}; relation-only loss {baseline:.4f} (log D = {uniform:.4f})"
    )
    runs = []
    for seed in range(facts.seed, facts.seed + config.seeds):
        train = facts.train_config(config.d_model, config.mlp_multiple, seed)
        run = train_run(train, out_dir, f"seed{seed}", device="cpu", progress=False, log=lambda _: None)
        dyn = dynamics_of(run, baseline, config.tolerance)
        runs.append(dyn)
        log(
            f"  seed {seed}: plateau {dyn.plateau}, fact acc >= {RECALL_LEVEL} from step {dyn.recall_start}, "
            f"1.0 from {dyn.recall_done}; final loss {dyn.answer_loss[-1]:.4f}, min loss before recall "
            f"{np.nanmin([l_ for s, l_ in zip(dyn.steps, dyn.answer_loss) if dyn.recall_start is None or s < dyn.recall_start]):.4f}"
        )
    return RecallDynamicsResult(baseline, uniform, runs)
