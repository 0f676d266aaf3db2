"""`recall-tradeoff`: where a one-layer transformer stores facts (Nichani, Lee, Bietti, ICLR 2025,
section 4). A grid of model widths d (the attention: heads x head width = d, 4 d^2 parameters, 2 d^2
in its value path) and MLP widths m = k d (k = 0: no MLP; 2 m d parameters) trained at a fixed
number S R of facts; per grid point the exact accuracy over every fact, with the MLP's output
zeroed (what the attention alone holds) and with the attention's values zeroed (the value path, the
only route of the subject to the last position in one layer). The frontier: per d the smallest MLP
reaching 100%. Claim: 100% once either the attention or the MLP parameters reach about S R (up to
log factors), so a wider MLP lets a smaller attention suffice. Writes recall_tradeoff.png.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from birth.base.io import new_figure, save_figure
from birth.base.validate import Int, Ints
from birth.experiments.common import train_run
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.recall_common import (
    FactsConfig,
    fact_accuracy,
    parameter_counts,
    run_model,
)
from tasks.factual_recall import FactualRecall


@dataclass(frozen=True)
class RecallTradeoffConfig(FactsConfig):
    """The task and the training (FactsConfig's fields, trained longer here) and the grid."""

    steps: Annotated[int, Int(1)] = 1500  # training steps per run
    dims: Annotated[tuple[int, ...], Ints(1, distinct=True)] = (8, 16, 32)  # model widths d
    # MLP widths m = k d (k = 0: no MLP)
    mlp_multiples: Annotated[tuple[int, ...], Ints(0, distinct=True)] = (0, 1, 4)
    seeds: Annotated[int, Int(1)] = 1  # runs per grid point (accuracies averaged)

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(d % self.n_heads for d in self.dims):
            raise ValueError(f"--n-heads {self.n_heads} must divide every --dims value, got {self.dims}")


@dataclass(frozen=True)
class GridPoint:
    d_model: int
    mlp_multiple: int
    parameters: dict[str, int]  # attention, value_path, mlp
    fact_acc: float  # exact accuracy over every fact (mean over seeds)
    relation_acc: float
    mlp_ablated: float  # fact accuracy with the MLP's output zeroed
    value_ablated: float  # fact accuracy with the attention's values zeroed


@dataclass(frozen=True)
class RecallTradeoffResult(ExperimentResult):
    num_facts: int
    answers_per_relation: int
    points: list[GridPoint]
    frontier: dict[str, int | None]  # d -> smallest MLP multiple at 100% (None: none of the grid)

    def headline(self) -> str:
        perfect = sum(p.fact_acc == 1.0 for p in self.points)
        frontier = ", ".join(f"d={d}: {'-' if k is None else f'{k}d'}" for d, k in self.frontier.items())
        return (
            f"{self.num_facts} facts: {perfect}/{len(self.points)} grid points at 100%; "
            f"smallest MLP at 100% per d: {frontier}"
        )


def plot_recall_tradeoff(result: RecallTradeoffResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 3, (4.0, 3.6))
    dims = sorted({p.d_model for p in result.points})
    multiples = sorted({p.mlp_multiple for p in result.points})
    for ax, key, title in zip(
        axes[0],
        ("fact_acc", "mlp_ablated", "value_ablated"),
        ("accuracy over all facts", "MLP output zeroed", "attention values zeroed"),
    ):
        grid = np.full((len(dims), len(multiples)), np.nan)
        for p in result.points:
            grid[dims.index(p.d_model), multiples.index(p.mlp_multiple)] = getattr(p, key)
        image = ax.imshow(grid, vmin=0, vmax=1, origin="lower", cmap="viridis", aspect="auto")
        for i in range(len(dims)):
            for j in range(len(multiples)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=7)
        ax.set(
            xticks=range(len(multiples)),
            xticklabels=[f"{k}d" for k in multiples],
            yticks=range(len(dims)),
            yticklabels=dims,
            xlabel="MLP width m",
            ylabel="d (attention: heads x head width)",
            title=title,
        )
    fig.colorbar(image, ax=axes[0, -1])
    return save_figure(fig, out_dir, "recall_tradeoff")


@register(
    "recall-tradeoff",
    family="transformer",
    config=RecallTradeoffConfig,
    plot=plot_recall_tradeoff,
    summary="factual recall: one-layer transformers over attention size x MLP width, with MLP / value ablations",
    full=lambda: RecallTradeoffConfig(
        n_subjects=128,
        n_relations=8,
        steps=3000,
        dims=(8, 16, 24, 32, 48, 64),
        mlp_multiples=(0, 1, 2, 4, 8),
        seeds=3,
    ),
    small=lambda: RecallTradeoffConfig(
        n_subjects=8,
        n_relations=2,
        answers_per_relation=4,
        n_noise=4,
        seq_len=4,
        steps=150,
        dims=(4, 16),
        mlp_multiples=(0, 2),
    ),
)
def run_recall_tradeoff(
    config: RecallTradeoffConfig, out_dir: Path, *, log=print, progress: bool = True
) -> RecallTradeoffResult:
    facts = config
    task = FactualRecall(facts.task())
    log(
        f"recall-tradeoff: {facts.task().num_facts} facts (S={facts.n_subjects}, R={facts.n_relations}, "
        f"D={facts.answers_per_relation}), layout {facts.layout}, {facts.steps} AdamW steps, {config.seeds} seed(s)"
    )
    points = []
    for d in config.dims:
        for k in config.mlp_multiples:
            readings = []
            for seed in range(facts.seed, facts.seed + config.seeds):
                name = f"d{d}_mlp{k}_seed{seed}"
                train_run(
                    facts.train_config(d, k, seed),
                    out_dir,
                    name,
                    device="cpu",
                    progress=False,
                    log=lambda _: None,
                )
                model = run_model(out_dir, name)
                whole = fact_accuracy(model, task)
                readings.append(
                    (
                        whole["fact_acc"],
                        whole["relation_acc"],
                        fact_accuracy(model, task, "mlp")["fact_acc"] if k else whole["fact_acc"],
                        fact_accuracy(model, task, "value")["fact_acc"],
                    )
                )
            acc, rel, no_mlp, no_value = (float(np.mean(v)) for v in zip(*readings))
            points.append(GridPoint(d, k, parameter_counts(d, k), acc, rel, no_mlp, no_value))
            log(
                f"  d={d:3d} m={k}d: all facts {acc:.3f} (relation {rel:.3f}); MLP zeroed {no_mlp:.3f}, "
                f"values zeroed {no_value:.3f}"
            )
    frontier = {
        str(d): min((p.mlp_multiple for p in points if p.d_model == d and p.fact_acc == 1.0), default=None)
        for d in config.dims
    }
    return RecallTradeoffResult(facts.task().num_facts, facts.answers_per_relation, points, frontier)
