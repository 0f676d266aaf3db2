"""per-token-q: the coefficient of u_{f*(x)} e_xᵀ in SGD-trained W against the q_γ prediction F(n_x),
token by token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device, resolve_device, torch_threads
from birth.base.validate import Floats, Int, Validated
from birth.experiments.common import Seed
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.scaling.common import (
    Alpha,
    NumInputs,
    NumOutputs,
    check_threads,
)
from birth.memories.problem import from_task
from birth.memories.scaling_laws import (
    memory_coefficients,
    sgd_scheme_table,
)
from tasks.zipf import ZipfAssociations
from training.memories import MemoryTrainConfig, train_memory


@dataclass(frozen=True)
class PerTokenQConfig(Validated):
    trials: Annotated[int, Int(1)] = 1  # independent runs per γ (their tokens are pooled)
    num_inputs: NumInputs = 100  # N tokens
    num_outputs: NumOutputs = 5  # M outputs
    alpha: Alpha = 2.0  # Zipf exponent
    d: Annotated[int, Int(1)] = 200  # memory dimension, >= N so that the coefficients of W are unique
    steps: Annotated[int, Int(1)] = 10_000  # SGD steps of batch 1 from W = 0
    gammas: Annotated[tuple[float, ...], Floats(0.0, open_low=True)] = (0.1, 1.0, 10.0)  # step sizes γ
    threads: int | None = None  # torch CPU threads (default 1: the small SGD steps are fastest on one)
    seed: Seed = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d < max(self.num_inputs, self.num_outputs):
            raise ValueError(
                f"--d must be >= --num-inputs ({self.num_inputs}) for the coefficients of W to be "
                f"unique, got {self.d}"
            )
        check_threads(self.threads)


@dataclass(frozen=True)
class PerTokenQ:
    gamma: float
    counts: list[int]  # n_x, every run's tokens one after the other
    coefficients: list[float]  # Q[f*(x), x] of the trained W
    predicted: list[float]  # F(n_x), the slides' f(q) = q + γ / (1 + e^q / M)
    predicted_orthonormal: list[float]  # F(n_x) with the exact orthonormal-embedding update
    median_relative_gap: float  # median over seen tokens of |Q − F| / F
    median_relative_gap_orthonormal: float
    correlation: float  # Pearson correlation of Q and F over seen tokens
    error: float  # final error of the trained memory, mean over runs


@dataclass(frozen=True)
class PerTokenQResult(ExperimentResult):
    num_inputs: int
    num_outputs: int
    alpha: float
    d: int
    steps: int
    per_gamma: list[PerTokenQ]

    def headline(self) -> str:
        return "median |Q[f*(x), x] − F(n_x)| / F: " + ", ".join(
            f"γ={g.gamma:g} {g.median_relative_gap:.3f} (corr {g.correlation:.3f})" for g in self.per_gamma
        )


def plot_per_token_q(result: PerTokenQResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, len(result.per_gamma), (4.0, 3.6))
    for ax, g in zip(axes[0], result.per_gamma):
        n, q = np.asarray(g.counts), np.asarray(g.coefficients)
        seen = n > 0
        ax.plot(n[seen], q[seen], ".", ms=4, alpha=0.6, label="SGD: Q[f*(x), x]")
        order = np.argsort(n[seen])
        ax.plot(n[seen][order], np.asarray(g.predicted)[seen][order], "k-", lw=1, label="F(n_x) (slides)")
        ax.plot(
            n[seen][order],
            np.asarray(g.predicted_orthonormal)[seen][order],
            "k:",
            lw=1,
            label="F(n_x), orthonormal",
        )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="occurrences n_x",
            title=f"γ={g.gamma:g}: median gap {100 * g.median_relative_gap:.0f}%, corr {g.correlation:.2f}",
        )
        ax.title.set_fontsize(8)
    axes[0][0].set_ylabel("coefficient of $u_{f*(x)} e_x^T$")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        f"Per-token q: N={result.num_inputs}, M={result.num_outputs}, α={result.alpha:g}, d={result.d}, "
        f"{result.steps} SGD steps of batch 1"
    )
    return save_figure(fig, out_dir, "per_token_q")


@register(
    "per-token-q",
    family="scaling",
    config=PerTokenQConfig,
    plot=plot_per_token_q,
    summary="coefficient of u_f*(x) e_x^T in SGD-trained W against the q_gamma prediction F(n_x), token by token",
    full=lambda: PerTokenQConfig(trials=10, steps=100_000, gammas=(0.01, 0.1, 1.0, 10.0, 100.0)),
    small=lambda: PerTokenQConfig(num_inputs=20, d=40, steps=300, gammas=(1.0,)),
)
def run_per_token_q(
    config: PerTokenQConfig, out_dir: Path, *, log=print, progress: bool = True
) -> PerTokenQResult:
    device = resolve_device(config.device)
    task = ZipfAssociations(config.num_inputs, config.num_outputs, config.alpha)
    M, targets = task.num_outputs, task.targets()
    log(
        f"per-token-q: N={task.num_inputs}, M={M}, alpha={task.alpha:g}, d={config.d}, {config.steps} SGD steps "
        f"of batch 1 from W=0, {config.trials} run(s) per γ"
    )
    per_gamma = []
    with torch_threads(config.threads, default=1):
        for gamma in config.gammas:
            train = MemoryTrainConfig("sgd", gamma, 1, config.steps)
            problem = from_task(
                task, config.d, config.trials, seed=config.seed, device=device, dtype=torch.float64
            )
            out = train_memory(problem, train, seed=config.seed)
            q = memory_coefficients(out.memory, out.inputs, out.outputs)  # (R, M, N)
            on_target = q[:, targets, torch.arange(task.num_inputs)]  # (R, N)
            counts = torch.stack(
                [torch.bincount(b.flatten(), minlength=task.num_inputs) for b in out.batches]
            )
            top = int(counts.max())
            predicted = sgd_scheme_table(top, gamma, M)[counts]
            orthonormal = sgd_scheme_table(top, gamma, M, orthonormal=True)[counts]
            seen = counts > 0
            gap = ((on_target - predicted).abs() / predicted)[seen]
            gap_orth = ((on_target - orthonormal).abs() / orthonormal)[seen]
            corr = float(torch.corrcoef(torch.stack([on_target[seen], predicted[seen]]))[0, 1])
            record = PerTokenQ(
                gamma,
                counts.flatten().tolist(),
                on_target.flatten().tolist(),
                predicted.flatten().tolist(),
                orthonormal.flatten().tolist(),
                float(gap.median()),
                float(gap_orth.median()),
                corr,
                float(out.error[-1].mean()),
            )
            log(
                f"  γ={gamma:g}: median |Q - F(n_x)| / F over {int(seen.sum())} seen tokens "
                f"{record.median_relative_gap:.3f} (orthonormal F: {record.median_relative_gap_orthonormal:.3f}), "
                f"correlation {corr:.3f}; error {record.error:.4f}"
            )
            per_gamma.append(record)
    return PerTokenQResult(task.num_inputs, M, task.alpha, config.d, config.steps, per_gamma)
