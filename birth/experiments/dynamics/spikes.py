"""spikes: correlated embeddings + imbalance + large steps: oscillating, spiking losses, and the steps
to 100% accuracy against η.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from birth.base.io import new_figure, save_figure
from birth.base.validate import Float, Floats, Int, Validated, check_floats
from birth.experiments.common import Seed
from birth.experiments.dynamics.common import (
    colormap,
    descend,
    rounded,
    step_text,
)
from birth.experiments.registry import ExperimentResult, register
from birth.memories import dynamics as dyn
from birth.memories import problem as mp
from tasks.zipf import zipf_probs

LOG2_3 = math.log2(3.0)  # Zipf exponent giving p = (0.75, 0.25) on two tokens (the reference's p)


def _correlated_problem(n: int, m: int, cosines: torch.Tensor, zipf: float) -> mp.MemoryProblem:
    """n inputs with pairwise cosine c (one problem per cosine, leading dimension), outputs the first
    m basis vectors of R^n (U = I for n = m), p ∝ (x+1)^-zipf, f*(x) = x mod m."""
    inputs = torch.stack([mp.correlated_embeddings(n, float(c)) for c in cosines])
    return mp.MemoryProblem(
        inputs, torch.eye(n, dtype=torch.float64)[:m], zipf_probs(n, zipf), torch.arange(n) % m
    )


@dataclass(frozen=True)
class SpikesConfig(Validated):
    n_tokens: Annotated[int, Int(2)] = 2  # n input tokens (embeddings in R^n with equal pairwise cosines)
    n_outputs: Annotated[int, Int(2)] = 2  # m outputs (the first m basis vectors), f*(x) = x mod m
    cosines: tuple[float, ...] = (-0.5, 0.5, 0.95)  # cosine between input embeddings (reference values)
    zipf: Annotated[float, Float(0.0)] = (
        LOG2_3  # p ∝ (x+1)^-zipf; the default gives p = (0.75, 0.25) on two tokens
    )
    lrs: Annotated[tuple[float, ...], Floats(0.0, open_low=True)] = (
        0.1,
        0.3,
        1.0,
        3.0,
        10.0,
        30.0,
        100.0,
    )  # step sizes η
    steps: Annotated[int, Int(1)] = 1000  # gradient steps
    batch_size: Annotated[int, Int(0)] = 0  # 0: full batch (the reference); b > 0: SGD on b tokens per step
    spike_factor: Annotated[float, Float(1.0, open_low=True)] = (
        2.0  # a spike: the loss above spike_factor × its running minimum
    )
    spike_floor: Annotated[float, Float(0.0)] = 1e-3  # ... and above this absolute level
    plot_steps: Annotated[int, Int(1)] = 60  # steps drawn and stored as curves
    seed: Seed = 0  # seeds the SGD draws

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_outputs > self.n_tokens:
            raise ValueError(f"--n-outputs must be <= --n-tokens (outputs live in R^n), got {self.n_outputs}")
        # n unit vectors with equal pairwise cosines c exist for -1/(n-1) < c < 1
        check_floats("cosines", self.cosines, -1.0 / (self.n_tokens - 1), 1.0, open_low=True, open_high=True)


@dataclass(frozen=True)
class SpikesResult(ExperimentResult):
    cosines: list[float]
    lrs: list[float]
    probs: list[float]
    first_perfect: list[list[int | None]]  # [cosine][lr]: first step at accuracy 1
    settled: list[list[int | None]]  # [cosine][lr]: first step from which accuracy stays 1
    spikes: list[list[int]]  # [cosine][lr]: count_spikes of the loss curve
    increases: list[list[int]]  # [cosine][lr]: steps at which the loss went up
    max_loss: list[list[float]]  # [cosine][lr]: largest loss after step 0
    final_loss: list[list[float]]
    loss: list  # [cosine][lr][step], the first plot_steps steps
    accuracy: list  # [cosine][lr][step]

    def headline(self) -> str:
        k = len(self.cosines) - 1
        parts = [
            f"η={lr:g}: {step_text(st)}" + (f" (first {f}, {sp} spikes)" if sp or f != st else "")
            for lr, f, st, sp in zip(self.lrs, self.first_perfect[k], self.settled[k], self.spikes[k])
        ]
        return f"cos {self.cosines[k]:g}, steps until accuracy stays 100%: " + ", ".join(parts)


def plot_spikes(result: SpikesResult, out_dir: Path) -> list[Path]:
    n_cos = len(result.cosines)
    fig, axes = new_figure(2, n_cos + 1, (3.8, 3.0))
    cmap = colormap("plasma")
    for j, cos in enumerate(result.cosines):
        for k, lr in enumerate(result.lrs):
            color = cmap(0.9 * k / max(len(result.lrs) - 1, 1))
            loss = result.loss[j][k]
            axes[0][j].plot(range(len(loss)), loss, color=color, lw=1.1, label=f"η = {lr:g}")
            axes[1][j].plot(range(len(loss)), result.accuracy[j][k], color=color, lw=1.1)
        axes[0][j].set_yscale("log")
        axes[0][j].set_title(f"cos(e₀, e₁) = {cos:g}: loss", fontsize=9)
        axes[1][j].set_title("accuracy Σ p(x) 1{recalled}", fontsize=9)
        axes[1][j].set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    ax = axes[0][n_cos]
    horizon = 2 * max((s for row in result.first_perfect for s in row if s is not None), default=1)
    for j, cos in enumerate(result.cosines):
        ys = [horizon if s is None else s for s in result.first_perfect[j]]
        (line,) = ax.plot(result.lrs, ys, "o-", ms=3, label=f"cos {cos:g}")
        ys = [horizon if s is None else s for s in result.settled[j]]
        ax.plot(result.lrs, ys, "s--", ms=3, color=line.get_color(), lw=0.9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step size η")
    ax.set_title(f"accuracy 1: first step (—), for good (--); never: {horizon}", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1][n_cos]
    for j, cos in enumerate(result.cosines):
        ax.plot(result.lrs, result.spikes[j], "o-", ms=3, label=f"cos {cos:g}")
    ax.set_xscale("log")
    ax.set_xlabel("step size η")
    ax.set_title("loss spikes", fontsize=9)
    return save_figure(fig, out_dir, "spikes")


@register(
    "spikes",
    family="dynamics",
    summary="correlated embeddings + imbalance + large η: oscillating, spiking losses; steps to 100% accuracy vs η",
    config=SpikesConfig,
    plot=plot_spikes,
    full=lambda: SpikesConfig(
        cosines=(-0.5, 0.5, 0.9, 0.95, 0.99), steps=100_000, lrs=tuple(10.0 ** (k / 4) for k in range(-8, 13))
    ),
    small=lambda: SpikesConfig(cosines=(0.95,), lrs=(1.0, 10.0), steps=40, plot_steps=20),
)
def run_spikes(config: SpikesConfig, out_dir: Path, *, log=print, progress: bool = True) -> SpikesResult:
    c = config
    problem = _correlated_problem(c.n_tokens, c.n_outputs, torch.tensor(c.cosines), c.zipf)
    lrs = torch.tensor(c.lrs, dtype=torch.float64)[:, None]  # batch (L, C)
    traj = descend(problem, lrs, c.steps, batch_size=c.batch_size, seed=c.seed)
    perfect = mp.all_recalled(traj.margins, problem.probs)  # (S, L, C)
    first, settled, spikes, increases, max_loss, final_loss = ([] for _ in range(6))
    for j, cos in enumerate(c.cosines):
        rows = [[] for _ in range(6)]
        for k in range(len(c.lrs)):
            loss = traj.loss[:, k, j]
            rows[0].append(dyn.first_step_at(traj.steps, perfect[:, k, j].double(), 1.0))
            rows[1].append(dyn.first_step_at(traj.steps, perfect[:, k, j].double(), 1.0, stays=True))
            rows[2].append(dyn.count_spikes(loss, c.spike_factor, c.spike_floor))
            rows[3].append(int((loss[1:] > loss[:-1]).sum()))
            rows[4].append(float(loss[1:].max()))
            rows[5].append(float(loss[-1]))
        for dest, row in zip((first, settled, spikes, increases, max_loss, final_loss), rows):
            dest.append(row)
        log(
            f"  cos {cos:g}: "
            + "; ".join(
                f"η={lr:g} first {step_text(f)} settled {step_text(s)} spikes {sp} ups {u}"
                for lr, f, s, sp, u in zip(c.lrs, rows[0], rows[1], rows[2], rows[3])
            )
        )
    keep = min(c.plot_steps, c.steps) + 1
    return SpikesResult(
        cosines=list(c.cosines),
        lrs=list(c.lrs),
        probs=problem.probs.tolist(),
        first_perfect=first,
        settled=settled,
        spikes=spikes,
        increases=increases,
        max_loss=max_loss,
        final_loss=final_loss,
        loss=rounded(traj.loss[:keep].permute(2, 1, 0), 6),
        accuracy=rounded(traj.accuracy[:keep].permute(2, 1, 0), 4),
    )
