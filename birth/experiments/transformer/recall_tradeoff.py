"""`recall-tradeoff`: where a one-layer transformer stores facts (Nichani, Lee, Bietti, ICLR 2025,
section 4). A grid of model widths d, attention sizes (heads x head width a = H d_h, d by default:
4 d a parameters, 2 d a in its value path) and MLP widths m = k d (k = 0: no MLP; 2 m d
parameters) trained at a fixed number S R of facts; per grid point the exact accuracy over every
fact, with the MLP's output zeroed (what the attention alone holds) and with the attention's values
zeroed (the value path, the only route of the subject to the last position in one layer).
Reported: per attention (d, H x d_h) the smallest MLP reaching 100%; the fewest attention
parameters storing every fact without an MLP; the fewest MLP parameters storing them beside an
attention that alone does not. Claim: 100% once either the attention or the MLP parameters reach
about S R (up to log factors), so a wider MLP lets a smaller attention suffice. Writes
recall_tradeoff.png.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from birth.base.io import new_figure, save_figure
from birth.base.validate import Int, Ints, check_ints
from birth.experiments.common import train_run, trained_model
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.recall_common import (
    SMALL_FACTS,
    FactsConfig,
    fact_accuracy,
    parameter_counts,
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
    head_counts: tuple[int, ...] = ()  # attention heads H of the grid (empty: --n-heads alone)
    head_widths: tuple[int, ...] = ()  # head widths d_h of the grid (empty: d / H)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("head_counts", "head_widths"):
            if getattr(self, name):
                check_ints(name, getattr(self, name), 1, distinct=True)
        if not self.head_widths:
            for heads in self.heads():
                if any(d % heads for d in self.dims):
                    flag = "--head-counts" if self.head_counts else "--n-heads"
                    raise ValueError(f"{flag} {heads} must divide every --dims value, got {self.dims}")

    def heads(self) -> tuple[int, ...]:
        return self.head_counts or (self.n_heads,)

    def attentions(self) -> list[tuple[int, int, int | None]]:
        """(d, heads, head width or None for d / heads) of every attention of the grid."""
        widths: tuple[int | None, ...] = self.head_widths or (None,)
        return [(d, h, w) for d in self.dims for h in self.heads() for w in widths]


@dataclass(frozen=True)
class GridPoint:
    d_model: int
    mlp_multiple: int
    n_heads: int
    d_head: int
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
    # attention label (d, H x d_h) -> smallest MLP multiple at 100% (None: none of the grid)
    frontier: dict[str, int | None]
    attention_alone: int | None  # fewest attention parameters storing every fact without an MLP
    mlp_beside_short_attention: int | None  # fewest MLP parameters at 100% where the attention alone is not

    def headline(self) -> str:
        perfect = sum(p.fact_acc == 1.0 for p in self.points)
        frontier = ", ".join(f"{a}: {'-' if k is None else f'{k}d'}" for a, k in self.frontier.items())
        alone = ", ".join(
            f"{what} from {n} parameters ({n / self.num_facts:.1f} per fact)"
            for what, n in (
                ("attention alone", self.attention_alone),
                ("MLP", self.mlp_beside_short_attention),
            )
            if n is not None
        )
        return (
            f"{self.num_facts} facts: {perfect}/{len(self.points)} grid points at 100%"
            + (f"; {alone}" if alone else "")
            + f"; smallest MLP at 100% per attention: {frontier}"
        )


def attention_label(d_model: int, n_heads: int, d_head: int) -> str:
    return f"d={d_model} {n_heads}x{d_head}"


def storage_thresholds(points: list[GridPoint]) -> tuple[int | None, int | None]:
    """(fewest attention parameters at 100% without an MLP, fewest MLP parameters at 100% beside
    an attention whose MLP-free point of the grid stays below 100%)."""
    attention_alone = [p.parameters["attention"] for p in points if p.mlp_multiple == 0 and p.fact_acc == 1.0]
    short = {(p.d_model, p.n_heads, p.d_head) for p in points if p.mlp_multiple == 0 and p.fact_acc < 1.0}
    mlp = [
        p.parameters["mlp"]
        for p in points
        if p.mlp_multiple and p.fact_acc == 1.0 and (p.d_model, p.n_heads, p.d_head) in short
    ]
    return min(attention_alone, default=None), min(mlp, default=None)


def plot_recall_tradeoff(result: RecallTradeoffResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 3, (4.0, 3.6))
    rows = list(dict.fromkeys(attention_label(p.d_model, p.n_heads, p.d_head) for p in result.points))
    multiples = sorted({p.mlp_multiple for p in result.points})
    for ax, key, title in zip(
        axes[0],
        ("fact_acc", "mlp_ablated", "value_ablated"),
        ("accuracy over all facts", "MLP output zeroed", "attention values zeroed"),
    ):
        grid = np.full((len(rows), len(multiples)), np.nan)
        for p in result.points:
            row = rows.index(attention_label(p.d_model, p.n_heads, p.d_head))
            grid[row, multiples.index(p.mlp_multiple)] = getattr(p, key)
        image = ax.imshow(grid, vmin=0, vmax=1, origin="lower", cmap="viridis", aspect="auto")
        for i in range(len(rows)):
            for j in range(len(multiples)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=7)
        ax.set(
            xticks=range(len(multiples)),
            xticklabels=[f"{k}d" for k in multiples],
            yticks=range(len(rows)),
            yticklabels=rows,
            xlabel="MLP width m",
            ylabel="d, attention heads x head width",
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
        **SMALL_FACTS,
        lr=0.03,
        batch_size=64,
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
    for d, heads, width in config.attentions():
        d_head = d // heads if width is None else width
        for k in config.mlp_multiples:
            readings = []
            for seed in range(facts.seed, facts.seed + config.seeds):
                name = f"d{d}_h{heads}x{d_head}_mlp{k}_seed{seed}"
                train_run(
                    facts.train_config(d, k, seed, n_heads=heads, head_width=width),
                    out_dir,
                    name,
                    device="cpu",
                    progress=False,
                    log=lambda _: None,
                )
                model = trained_model(out_dir, name)
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
            counts = parameter_counts(d, k, heads * d_head)
            points.append(GridPoint(d, k, heads, d_head, counts, acc, rel, no_mlp, no_value))
            log(
                f"  d={d:3d} {heads}x{d_head:<3d} m={k}d ({counts['attention']} + {counts['mlp']} "
                f"parameters): all facts {acc:.3f} (relation {rel:.3f}); MLP zeroed {no_mlp:.3f}, "
                f"values zeroed {no_value:.3f}"
            )
    at_100: dict[str, list[int]] = {attention_label(p.d_model, p.n_heads, p.d_head): [] for p in points}
    for p in points:
        if p.fact_acc == 1.0:
            at_100[attention_label(p.d_model, p.n_heads, p.d_head)].append(p.mlp_multiple)
    frontier = {label: min(ks, default=None) for label, ks in at_100.items()}
    return RecallTradeoffResult(
        facts.task().num_facts, facts.answers_per_relation, points, frontier, *storage_thresholds(points)
    )
