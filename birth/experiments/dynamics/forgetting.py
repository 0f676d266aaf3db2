"""forgetting: per-token recall over time at a small and a large step: which stored memories large
steps erase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from birth.base.io import new_figure, save_figure
from birth.base.validate import Float, Floats, Int, Validated
from birth.experiments.common import Seed
from birth.experiments.dynamics.common import (
    Outputs,
    check_outputs,
    descend,
    sphere_problem,
    stacked_problem,
)
from birth.experiments.registry import ExperimentResult, register
from birth.memories import dynamics as dyn


@dataclass(frozen=True)
class ForgettingConfig(Validated):
    n_tokens: Annotated[int, Int(2)] = 30  # n tokens, p(x) ∝ (x+1)^-zipf
    dim: Annotated[int, Int(1)] = (
        2  # d (d = 2, n = 30: more associations than the memory holds, as the reference)
    )
    n_outputs: Annotated[int, Int(2)] = 2  # m, f*(x) = x mod m
    outputs: Outputs = "identity"  # output embeddings: orthonormal, or uniform on the sphere
    zipf: Annotated[float, Float(0.0)] = 1.0  # Zipf exponent
    lrs: Annotated[tuple[float, ...], Floats(0.0, open_low=True)] = (
        1.0,
        30.0,
    )  # step sizes η; the smallest defines the stored memories
    steps: Annotated[int, Int(2)] = 2000  # gradient steps
    batch_size: Annotated[int, Int(0)] = 0  # 0: full batch; b > 0: SGD on b tokens per step
    trials: Annotated[int, Int(1)] = 8  # embedding draws (all trained at once)
    late_from: Annotated[float, Float(0.0, 1.0, open_high=True)] = (
        0.5  # retention is measured over the steps >= late_from * steps
    )
    map_every: Annotated[int, Int(1)] = 5  # the stored recall map (trial 0) keeps every this many steps
    seed: Seed = 0  # seeds the embeddings and the SGD draws

    def __post_init__(self) -> None:
        super().__post_init__()
        check_outputs(self.outputs, self.n_outputs, self.dim)


@dataclass(frozen=True)
class ForgettingResult(ExperimentResult):
    lrs: list[float]
    probs: list[float]
    stored: list[list[int]]  # [trial]: tokens recalled at the end of the smallest-η run
    retention_frequent: list[float]  # [lr]: mean recall over late steps, frequent half of the stored tokens
    retention_rare: list[float]  # [lr]: same, rare half
    retention_by_token: list[list[float | None]]  # [lr][token] mean over trials where the token is stored
    forgetting_frequent: list[float]  # [lr]: recalled → not recalled events per stored token (frequent half)
    forgetting_rare: list[float]
    late_accuracy: list[float]  # [lr]: mean accuracy over late steps and trials
    map_steps: list[int]
    recall_map: list  # [lr][step][token] of trial 0 (0/1)

    def headline(self) -> str:
        parts = [
            f"η={lr:g}: frequent {f:.0%}, rare {r:.0%}"
            for lr, f, r in zip(self.lrs, self.retention_frequent, self.retention_rare)
        ]
        return "stored memories still recalled over the late steps — " + "; ".join(parts)


def plot_forgetting(result: ForgettingResult, out_dir: Path) -> list[Path]:
    L = len(result.lrs)
    fig, axes = new_figure(1, L + 1, (4.2, 3.6))
    for k, lr in enumerate(result.lrs):
        ax = axes[0][k]
        grid = np.asarray(result.recall_map[k], dtype=float).T  # (token, step)
        steps = result.map_steps
        ax.imshow(
            grid,
            aspect="auto",
            interpolation="nearest",
            cmap="Greys",
            vmin=0,
            vmax=1,
            extent=(steps[0], steps[-1], grid.shape[0] - 0.5, -0.5),
        )
        ax.set_xlabel("step")
        ax.set_ylabel("token x (0 = most frequent)")
        ax.set_title(f"η = {lr:g}: recall (black) of trial 0", fontsize=9)
    ax = axes[0][L]
    for k, lr in enumerate(result.lrs):
        ys = [math.nan if v is None else v for v in result.retention_by_token[k]]
        ax.plot(result.probs, ys, "o-", ms=3, label=f"η = {lr:g}")
    ax.set_xscale("log")
    ax.set_xlabel("token frequency p(x)")
    ax.set_ylabel("fraction of late steps recalled")
    ax.set_title("stored memories kept (mean over trials)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "forgetting")


@register(
    "forgetting",
    family="dynamics",
    summary="per-token recall over time at a small and a large step: which stored memories large steps erase",
    config=ForgettingConfig,
    plot=plot_forgetting,
    full=lambda: ForgettingConfig(trials=32, steps=10_000, lrs=(1.0, 10.0, 20.0, 30.0, 100.0), map_every=20),
    small=lambda: ForgettingConfig(n_tokens=8, trials=2, steps=40, map_every=2),
)
def run_forgetting(
    config: ForgettingConfig, out_dir: Path, *, log=print, progress: bool = True
) -> ForgettingResult:
    c = config
    problem = stacked_problem(
        [
            sphere_problem(c.n_tokens, c.dim, c.n_outputs, c.zipf, c.seed, trial, c.outputs)
            for trial in range(c.trials)
        ]
    )
    lrs = torch.tensor(c.lrs, dtype=torch.float64)[:, None]  # batch (L, R)
    traj = descend(problem, lrs, c.steps, batch_size=c.batch_size, seed=c.seed)
    recall = traj.recall()  # (S, L, R, n)
    late = traj.steps >= c.late_from * c.steps
    reference = int(torch.tensor(c.lrs).argmin())
    stored = recall[-1, reference]  # (R, n): what the smallest step size stores
    kept = recall[late].double().mean(0)  # (L, R, n)
    events = dyn.forgetting_events(recall.reshape(len(traj.steps), -1)).reshape(
        len(c.lrs), c.trials, c.n_tokens
    )
    # frequent / rare halves of each trial's stored set, by frequency rank (token index)
    frequent = torch.zeros_like(stored)
    for r in range(c.trials):
        tokens = torch.nonzero(stored[r]).flatten()
        frequent[r, tokens[: (len(tokens) + 1) // 2]] = True
    rare = stored & ~frequent

    def mean_over(mask: torch.Tensor, values: torch.Tensor) -> list[float]:
        w = mask.double()
        return ((values * w).sum((-1, -2)) / w.sum().clamp_min(1)).tolist()

    by_token = []
    for k in range(len(c.lrs)):
        counts = stored.double().sum(0)
        means = (kept[k] * stored).sum(0) / counts.clamp_min(1)
        by_token.append([float(v) if n > 0 else None for v, n in zip(means, counts)])
    result = ForgettingResult(
        lrs=list(c.lrs),
        probs=problem.probs.tolist(),
        stored=[torch.nonzero(stored[r]).flatten().tolist() for r in range(c.trials)],
        retention_frequent=mean_over(frequent, kept),
        retention_rare=mean_over(rare, kept),
        retention_by_token=by_token,
        forgetting_frequent=mean_over(frequent, events.double()),
        forgetting_rare=mean_over(rare, events.double()),
        late_accuracy=traj.accuracy[late].mean((0, 2)).tolist(),
        map_steps=traj.steps[:: c.map_every].tolist(),
        recall_map=recall[:: c.map_every, :, 0].permute(1, 0, 2).int().tolist(),
    )
    for k, lr in enumerate(c.lrs):
        log(
            f"  η={lr:<6g} stored memories kept: frequent half {result.retention_frequent[k]:.3f}, rare half "
            f"{result.retention_rare[k]:.3f}; forgetting events per stored token {result.forgetting_frequent[k]:.1f}"
            f" / {result.forgetting_rare[k]:.1f}; late accuracy {result.late_accuracy[k]:.3f}"
        )
    return result
