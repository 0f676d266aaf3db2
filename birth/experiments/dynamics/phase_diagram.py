"""phase-diagram: first step at accuracy 1 over (cosine, imbalance, η) of the two-token problem,
full-batch GD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from birth.base.io import new_figure, save_figure
from birth.base.validate import Float, Int, Validated, check_float
from birth.experiments.dynamics.common import (
    colormap,
    descend,
    rounded,
    step_text,
)
from birth.experiments.registry import ExperimentResult, register
from birth.memories import dynamics as dyn
from birth.memories import problem as mp


@dataclass(frozen=True)
class PhaseDiagram:
    """First step at accuracy 1 (-1: never) and final accuracy over (cosine, p, lr) grids."""

    cosines: torch.Tensor  # (A,)
    p_first: torch.Tensor  # (P,)
    lrs: torch.Tensor  # (L,)
    first_step: torch.Tensor  # (A, P, L) long, -1 where accuracy 1 is never reached
    final_accuracy: torch.Tensor  # (A, P, L)
    spikes: torch.Tensor  # (A, P, L) count_spikes of each loss curve


def phase_diagram(
    cosines: Sequence[float],
    p_first: Sequence[float],
    lrs: Sequence[float],
    steps: int,
    *,
    spike_factor: float = 2.0,
    spike_floor: float = 1e-3,
) -> PhaseDiagram:
    """Full-batch GD from W = 0 on the two-token problem at every (cosine, p, lr), all at once; the
    first step at accuracy 1 and the spikes are tracked along the way (no curve is stored)."""
    c = torch.as_tensor(cosines, dtype=torch.float64)
    p = torch.as_tensor(p_first, dtype=torch.float64)
    lr = torch.as_tensor(lrs, dtype=torch.float64)
    A, P, L = len(c), len(p), len(lr)
    # E (A, 1, 1, 2, 2): rows e_0 = (1, 0), e_1 = (c, √(1-c²)), the reference's embeddings
    E = torch.zeros(A, 2, 2, dtype=torch.float64)
    E[:, 0, 0] = 1.0
    E[:, 1, 0] = c
    E[:, 1, 1] = (1.0 - c * c).clamp_min(0.0).sqrt()
    probs = torch.stack([p, 1.0 - p], -1)  # (P, 2)
    problem = mp.MemoryProblem(
        E[:, None, None], torch.eye(2, dtype=torch.float64), probs[None, :, None], torch.arange(2)
    )
    first = torch.full((A, P, L), -1, dtype=torch.long)
    spikes = dyn.SpikeCounter(first.shape, spike_factor, spike_floor)

    def observe(step: int, W: torch.Tensor) -> None:
        spikes.update(mp.memory_loss(W, problem))
        now = mp.all_recalled(mp.margins(W, problem), problem.probs) & (first < 0)
        first[now] = step

    observe(0, torch.zeros(A, P, L, 2, 2, dtype=torch.float64))
    W = descend(problem, lr, steps, eval_steps=(0,), callback=observe).memory
    return PhaseDiagram(c, p, lr, first, mp.accuracy(W, problem), spikes.count)


@dataclass(frozen=True)
class PhaseDiagramConfig(Validated):
    cosine_min: Annotated[float, Float(-1.0, 1.0, open_low=True)] = (
        0.5  # smallest cosine between the two input embeddings
    )
    cosine_max: float = 1.0  # largest (1: the tokens coincide, accuracy 1 is impossible)
    n_cosines: Annotated[int, Int(1)] = 10  # cosines, evenly spaced
    log_odds_min: Annotated[
        float, Float()
    ] = -0.5  # imbalance log(p / (1-p)) of token 0, smallest (p = σ(log-odds))
    log_odds_max: float = 0.5  # largest
    n_log_odds: Annotated[int, Int(1)] = 10  # imbalances, evenly spaced
    lr_min: Annotated[float, Float(0.0, open_low=True)] = 0.1  # smallest step size
    lr_max: float = 10.0  # largest
    n_lrs: Annotated[int, Int(1)] = 10  # step sizes, log-spaced
    steps: Annotated[int, Int(1)] = 1000  # full-batch steps from W = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("cosine_max", self.cosine_max, self.cosine_min, 1.0)
        check_float("log_odds_max", self.log_odds_max, self.log_odds_min)
        check_float("lr_max", self.lr_max, self.lr_min)

    def grids(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cosines = torch.linspace(self.cosine_min, self.cosine_max, self.n_cosines, dtype=torch.float64)
        log_odds = torch.linspace(self.log_odds_min, self.log_odds_max, self.n_log_odds, dtype=torch.float64)
        lrs = torch.logspace(
            math.log10(self.lr_min), math.log10(self.lr_max), self.n_lrs, dtype=torch.float64
        )
        return cosines, log_odds, lrs


@dataclass(frozen=True)
class PhaseDiagramResult(ExperimentResult):
    cosines: list[float]
    log_odds: list[float]
    p_first: list[float]
    lrs: list[float]
    steps: int
    first_step: list  # [cosine][log-odds][lr], None: never at accuracy 1
    final_accuracy: list
    spikes: list
    reached: list[float]  # [lr]: fraction of (cosine, log-odds) points reaching accuracy 1
    one_step: float  # fraction of (cosine, log-odds) points at accuracy 1 after the first step (any η)
    hard_median_first: list[float | None]  # [lr]: median first step over the other points (None: never)

    def headline(self) -> str:
        ends = (0, len(self.lrs) - 1)
        parts = [f"η={self.lrs[k]:.3g}: {step_text(self.hard_median_first[k])}" for k in ends]
        return (
            f"{self.one_step:.0%} of (cos, p) points are solved by the first step whatever η; median first "
            f"step at accuracy 1 of the others: "
            + ", ".join(parts)
            + f"; reached within {self.steps} steps: {self.reached[0]:.0%} (η={self.lrs[0]:.3g}), "
            f"{self.reached[-1]:.0%} (η={self.lrs[-1]:.3g})"
        )


def plot_phase_diagram(result: PhaseDiagramResult, out_dir: Path) -> list[Path]:
    picks = sorted({round(k * (len(result.cosines) - 1) / 3) for k in range(4)})
    fig, axes = new_figure(1, len(picks) + 1, (3.8, 3.4))
    from matplotlib.colors import LogNorm

    norm = LogNorm(1, result.steps)
    for ax, j in zip(axes[0], picks):
        grid = np.asarray(
            [[math.nan if v is None else v for v in row] for row in result.first_step[j]], dtype=float
        )  # (P, L)
        ax.set_facecolor("0.8")  # never: grey
        image = ax.pcolormesh(result.lrs, result.log_odds, grid, norm=norm, cmap="viridis", shading="nearest")
        ax.set_xscale("log")
        ax.set_xlabel("step size η")
        ax.set_ylabel("log-odds of p(token 0)")
        ax.set_title(f"cos {result.cosines[j]:.3g}: first step at accuracy 1", fontsize=9)
    fig.colorbar(image, ax=axes[0][len(picks) - 1], label="step (grey: never)")
    ax = axes[0][len(picks)]
    for j, cos in enumerate(result.cosines):
        med = []
        for k in range(len(result.lrs)):
            vals = [row[k] for row in result.first_step[j] if row[k] is not None]
            med.append(float(np.median(vals)) if vals else math.nan)
        ax.plot(
            result.lrs,
            med,
            "o-",
            ms=2.5,
            lw=1.0,
            color=colormap("viridis")(j / max(len(result.cosines) - 1, 1)),
            label=f"cos {cos:.2g}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step size η")
    ax.set_title("median first step over imbalances", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, out_dir, "phase_diagram")


@register(
    "phase-diagram",
    family="dynamics",
    summary="two-token problem: first step at accuracy 1 over (cosine, imbalance, η), full-batch GD",
    config=PhaseDiagramConfig,
    plot=plot_phase_diagram,
    full=lambda: PhaseDiagramConfig(
        n_cosines=20, n_log_odds=20, log_odds_min=-3.0, log_odds_max=3.0, n_lrs=20, lr_max=100.0, steps=10_000
    ),
    small=lambda: PhaseDiagramConfig(n_cosines=3, n_log_odds=3, n_lrs=3, steps=50),
)
def run_phase_diagram(
    config: PhaseDiagramConfig, out_dir: Path, *, log=print, progress: bool = True
) -> PhaseDiagramResult:
    cosines, log_odds, lrs = config.grids()
    p_first = torch.sigmoid(log_odds)
    diagram = phase_diagram(cosines, p_first, lrs, config.steps)
    first = diagram.first_step  # (A, P, L)
    reached = (first >= 0).double().mean((0, 1))
    # from W = 0 the first step is η times a fixed matrix: whether it already recalls both tokens
    # does not depend on η. The step sizes differ on the other points.
    one_step = first[..., 0] == 1  # (A, P)
    medians = []
    for k in range(len(lrs)):
        hard = first[..., k][~one_step].double()
        hard = torch.where(hard < 0, math.inf, hard).sort().values
        median = float(hard[(len(hard) - 1) // 2]) if len(hard) else math.nan
        medians.append(int(median) if math.isfinite(median) else None)
    for k, lr in enumerate(lrs.tolist()):
        log(
            f"  η={lr:<7.3g} reach accuracy 1: {float(reached[k]):.0%} of the grid; median first step where one "
            f"step is not enough: {step_text(medians[k])}; loss spikes at "
            f"{float((diagram.spikes[..., k] > 0).double().mean()):.0%} of the points"
        )
    return PhaseDiagramResult(
        cosines=cosines.tolist(),
        log_odds=log_odds.tolist(),
        p_first=p_first.tolist(),
        lrs=lrs.tolist(),
        steps=config.steps,
        first_step=[[[None if v < 0 else int(v) for v in row] for row in block] for block in first.tolist()],
        final_accuracy=rounded(diagram.final_accuracy, 4),
        spikes=diagram.spikes.tolist(),
        reached=reached.tolist(),
        one_step=float(one_step.double().mean()),
        hard_median_first=medians,
    )
