"""underparameterized: d < N, cross-entropy over-optimization hurts; the error against the steps and
its best early-stopping point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from birth.base.io import new_figure, save_figure
from birth.base.validate import Float, Int, Ints, Validated
from birth.experiments.common import Seed
from birth.experiments.dynamics.common import (
    colormap,
    descend,
    null_formatter,
    rounded,
    sphere_problem,
    stacked_problem,
)
from birth.experiments.registry import ExperimentResult, register
from birth.memories import dynamics as dyn


@dataclass(frozen=True)
class UnderparameterizedConfig(Validated):
    n_tokens: Annotated[int, Int(2)] = 20  # N tokens, p(x) ∝ (x+1)^-zipf
    n_outputs: Annotated[int, Int(2)] = 20  # M outputs, f*(x) = x mod M
    dims: Annotated[tuple[int, ...], Ints(1)] = (
        2,
        3,
        4,
        8,
        32,
    )  # d; d < N is under-parameterized (32 >= N: the control)
    zipf: Annotated[float, Float(0.0)] = 1.5  # Zipf exponent
    lr: Annotated[float, Float(0.0, open_low=True)] = 1.0  # step size η
    steps: Annotated[int, Int(2)] = 10_000  # full-batch gradient steps
    trials: Annotated[int, Int(1)] = 16  # embedding draws per d (uniform on the sphere)
    records: Annotated[int, Int(5)] = 80  # about this many log-spaced recorded steps
    seed: Seed = 0  # seeds the embeddings


@dataclass(frozen=True)
class UnderparameterizedRun:
    dim: int
    error: list[float]  # mean over trials at each recorded step
    first_step_error: float  # after one step (≈ the q = p scheme)
    best_error: float  # mean over trials of each trial's best recorded error
    final_error: float
    best_step: int  # median over trials of the best step
    worse_at_end: float  # fraction of trials ending > 0.01 above their best


@dataclass(frozen=True)
class UnderparameterizedResult(ExperimentResult):
    n_tokens: int
    steps: list[int]
    runs: list[UnderparameterizedRun]

    def headline(self) -> str:
        parts = [
            f"d={r.dim}: best {r.best_error:.3f} at ~{r.best_step} vs final {r.final_error:.3f}"
            for r in self.runs
        ]
        return (
            f"error with early stopping vs after {self.steps[-1]} steps (N={self.n_tokens}) — "
            + "; ".join(parts)
        )


def plot_underparameterized(result: UnderparameterizedResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2, (4.8, 3.6))
    cmap = colormap("viridis")
    ax = axes[0][0]
    steps = result.steps[1:]
    for k, run in enumerate(result.runs):
        color = cmap(0.9 * k / max(len(result.runs) - 1, 1))
        ax.plot(steps, run.error[1:], color=color, lw=1.2, label=f"d = {run.dim}")
        j = min(range(1, len(run.error)), key=lambda i: run.error[i])
        ax.plot([result.steps[j]], [run.error[j]], "v", color=color, ms=6)
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("error Σ p(x) 1{wrong} (mean over trials)")
    ax.set_title(f"N = {result.n_tokens}: ▼ best early-stopping point of the mean", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0][1]
    dims = [r.dim for r in result.runs]
    ax.plot(dims, [r.best_error for r in result.runs], "o-", label="best (early stopping)")
    ax.plot(dims, [r.final_error for r in result.runs], "s-", label="final")
    ax.plot(dims, [r.first_step_error for r in result.runs], "^-", label="after one step")
    ax.set_xscale("log")
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.xaxis.set_minor_formatter(null_formatter())
    ax.set_xlabel("d")
    ax.set_title("error per trial, mean over trials", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "underparameterized")


@register(
    "underparameterized",
    family="dynamics",
    summary="d < N: cross-entropy over-optimization hurts; error vs steps and its best early-stopping point",
    config=UnderparameterizedConfig,
    plot=plot_underparameterized,
    full=lambda: UnderparameterizedConfig(
        n_tokens=100, n_outputs=100, dims=(2, 3, 4, 6, 8, 16, 32, 128), trials=100, steps=100_000, records=150
    ),
    small=lambda: UnderparameterizedConfig(
        n_tokens=8, n_outputs=8, dims=(2, 16), trials=2, steps=30, records=10
    ),
)
def run_underparameterized(
    config: UnderparameterizedConfig, out_dir: Path, *, log=print, progress: bool = True
) -> UnderparameterizedResult:
    c = config
    record = dyn.log_spaced_steps(c.steps, c.records)
    runs = []
    for d in c.dims:
        problem = stacked_problem(
            [sphere_problem(c.n_tokens, d, c.n_outputs, c.zipf, c.seed, trial) for trial in range(c.trials)]
        )
        traj = descend(problem, c.lr, c.steps, eval_steps=record)
        error = 1.0 - traj.accuracy  # (S, R)
        stops = [dyn.early_stopping(traj.steps[1:], error[1:, r]) for r in range(c.trials)]
        best = torch.tensor([s.best_error for s in stops])
        final = torch.tensor([s.final_error for s in stops])
        run = UnderparameterizedRun(
            dim=d,
            error=rounded(error.mean(1), 6),
            first_step_error=float(error[1].mean()),
            best_error=float(best.mean()),
            final_error=float(final.mean()),
            best_step=int(torch.tensor([s.best_step for s in stops]).median()),
            worse_at_end=float((final > best + 0.01).double().mean()),
        )
        runs.append(run)
        log(
            f"  d={d:<4d} one step {run.first_step_error:.3f}, best {run.best_error:.3f} (median step "
            f"{run.best_step}), final {run.final_error:.3f}; {run.worse_at_end:.0%} of trials end worse than their best"
        )
    return UnderparameterizedResult(c.n_tokens, traj.steps.tolist(), runs)
