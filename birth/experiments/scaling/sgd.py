"""sgd: SGD on W against the decoupled q update on the same samples (figure 4), and the q_γ curves
(figure 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device, resolve_device, torch_threads
from birth.base.validate import Int, Validated
from birth.experiments.common import Seed
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.scaling.common import (
    Trials,
    band,
    check_threads,
    dtype_of,
    log_grid,
    mean_std,
    task_errors,
)
from birth.memories.problem import from_task
from birth.memories.scaling_laws import (
    sgd_scheme_table,
)
from tasks.zipf import ZipfAssociations
from training.memories import MemoryTrainConfig, approximate_q_dynamics, train_memory


@dataclass(frozen=True)
class SgdConfig(Validated):
    trials: Trials = 10  # runs averaged in the panels after the first (one run)
    steps: Annotated[int, Int(1)] = 2000  # SGD steps (batch 1 or 16)
    float32: bool = False  # train and compute scores in float32 (faster)
    threads: int | None = None  # torch CPU threads (default 1: the small SGD steps are fastest on one)
    seed: Seed = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        super().__post_init__()
        check_threads(self.threads)


@dataclass(frozen=True)
class SgdRun:
    title: str
    d: int
    batch: int
    lr: float
    trials: int
    steps: list[int]
    sgd_error: list[float]  # mean over trials at each step
    sgd_std: list[float]
    approx_error: list[float]  # the q-update approximation on the same samples
    approx_std: list[float]
    mean_abs_gap: float


@dataclass(frozen=True)
class SgdResult(ExperimentResult):
    num_steps: int
    runs: list[SgdRun]
    gammas: list[float]
    q_gamma_curves: dict[str, list[float]]  # γ -> F(n), n = 0..max count
    counts: list[int]  # n_x ∝ (x+3)^-2 with n_N = 1, the right panel of figure 5

    def headline(self) -> str:
        return "mean |SGD − q-approximation| error gap: " + ", ".join(
            f"d={r.d} batch {r.batch} γ={r.lr:g} {r.mean_abs_gap:.4f}" for r in self.runs
        )


def plot_sgd(result: SgdResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, len(result.runs), (4.0, 3.6))
    for ax, run in zip(axes[0], result.runs):
        steps = run.steps[1:]
        band(ax, steps, run.sgd_error[1:], run.sgd_std[1:], "SGD on W")
        band(ax, steps, run.approx_error[1:], run.approx_std[1:], "q-update approximation", ls="--")
        ax.set(xscale="log", yscale="log", xlabel="SGD steps", title=run.title)
        ax.title.set_fontsize(8)
    axes[0][0].set_ylabel("generalization error")
    axes[0][0].legend(fontsize=7)
    paths = save_figure(fig, out_dir, "sgd")

    fig5, axes5 = new_figure(1, 2, (5.0, 4.0))
    left, right = axes5[0]
    for gamma in result.gammas:
        table = result.q_gamma_curves[str(gamma)]
        left.plot(np.arange(1, len(table)), table[1:], label=f"γ={gamma:g}")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="n (occurrences)",
        ylabel=r"$f^n(0)$",
        title="q after n SGD updates",
    )
    left.legend(fontsize=7)
    counts = np.asarray(result.counts)
    xs = np.arange(1, len(counts) + 1)
    for gamma, rho in ((10.0, 0.05), (1e-1, 0.35), (1e-3, 1.0)):
        if str(gamma) not in result.q_gamma_curves:
            continue
        q_gamma = np.asarray(result.q_gamma_curves[str(gamma)])[counts]
        (line,) = right.plot(xs, q_gamma / q_gamma.max(), label=f"$q_\\gamma$, γ={gamma:g}")
        p_rho = (xs + 3.0) ** (-2.0 * rho)
        right.plot(xs, p_rho / p_rho.max(), "--", color=line.get_color(), label=f"$q_\\rho$, ρ={rho:g}")
    right.set(
        xscale="log",
        yscale="log",
        xlabel="x",
        ylabel="q(x) / max q",
        title=r"$n_x \propto (x+3)^{-2}$, $n_N = 1$",
    )
    right.legend(fontsize=7)
    return paths + save_figure(fig5, out_dir, "q_gamma")


@register(
    "sgd",
    family="scaling",
    config=SgdConfig,
    plot=plot_sgd,
    summary="SGD on W vs the q-update approximation (d = N, d = N/10, batch 1 and 16), q_gamma curves",
    full=lambda: SgdConfig(trials=100, steps=10_000),
    small=lambda: SgdConfig(trials=2, steps=150, float32=True),
)
def run_sgd(config: SgdConfig, out_dir: Path, *, log=print, progress: bool = True) -> SgdResult:
    device = resolve_device(config.device)
    dtype = dtype_of(config)
    task = ZipfAssociations(100, 5, 2.0)
    trials, num_steps = config.trials, config.steps
    checkpoints = [0] + log_grid(1, num_steps, 25)
    runs = [  # (title, d, batch, lr, trials)
        ("one run, d=N=100, batch 1, γ=10", 100, 1, 10.0, 1),
        (f"d=N=100, batch 1, γ=1, {trials} runs", 100, 1, 1.0, trials),
        (f"d=N/10=10, batch 1, γ=1, {trials} runs", 10, 1, 1.0, trials),
        (f"d=N=100, batch 16, γ=1, {trials} runs", 100, 16, 1.0, trials),
    ]
    log(f"sgd: N=100, M=5, alpha=2, {num_steps} steps, SGD from W=0 vs the decoupled q update")
    records = []
    with torch_threads(config.threads, default=1):
        for title, dim, batch, lr, n in runs:
            train = MemoryTrainConfig("sgd", lr, batch, num_steps, eval_steps=tuple(checkpoints))
            problem = from_task(task, dim, n, seed=config.seed, device=device, dtype=dtype)
            trained = train_memory(problem, train, seed=config.seed)
            sgd_error = trained.error.T  # (R, C)
            q = approximate_q_dynamics(
                trained.batches, task.num_inputs, task.num_outputs, lr, trained.steps.tolist()
            )
            approx = task_errors(task, q[:, :, None], [dim], n, config, device, progress, trial_chunk=n)[
                :, :, 0
            ]
            gap = (sgd_error - approx).abs().mean(0)
            log(
                f"  {title}: final error SGD {sgd_error[:, -1].mean():.4f} vs approximation "
                f"{approx[:, -1].mean():.4f}; mean |gap| over the curve {gap.mean():.4f}"
            )
            sgd_mean, sgd_std = mean_std(sgd_error)
            approx_mean, approx_std = mean_std(approx)
            records.append(
                SgdRun(
                    title,
                    dim,
                    batch,
                    lr,
                    n,
                    trained.steps.tolist(),
                    sgd_mean,
                    sgd_std,
                    approx_mean,
                    approx_std,
                    gap.mean().item(),
                )
            )

    # figure 5: F^n(0) for several γ, and q_γ(x) with n_x ∝ (x+3)^-α, n_N = 1, against q_ρ = p^ρ
    gammas = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    num = 100
    counts = np.round(((np.arange(1, num + 1) + 3.0) / (num + 3.0)) ** -2.0).astype(int)
    curves = {str(g): sgd_scheme_table(int(counts.max()), g, 5).tolist() for g in gammas}  # fresh per γ
    return SgdResult(num_steps, records, gammas, curves, counts.tolist())


# --------------------------------------------------------------------------------------------
