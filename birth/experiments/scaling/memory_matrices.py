"""memory-matrices: u_yᵀ W e_x and W in the (u, e) basis for each storage scheme and for SGD over
training, next to the target associations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device, resolve_device, torch_threads
from birth.base.validate import Float, Int, Ints, Validated
from birth.experiments.common import Seed
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.scaling.common import (
    Alpha,
    Fraction,
    NumInputs,
    NumOutputs,
    check_threads,
)
from birth.memories.problem import from_task, sample_batches
from birth.memories.scaling_laws import (
    coefficient_scores,
    draw_embeddings,
    errors_from_scores,
    memory_scores_bruteforce,
    q_frequency,
    q_power,
    q_seen,
    q_sgd,
    q_threshold,
    scheme_coefficients,
)
from tasks.zipf import ZipfAssociations
from training.memories import MemoryTrainConfig, train_memory


@dataclass(frozen=True)
class MemoryMatricesConfig(Validated):
    num_inputs: NumInputs = 100  # N tokens
    num_outputs: NumOutputs = 5  # M outputs, f*(x) = x mod M
    alpha: Alpha = 0.5  # Zipf exponent (the heatmap's regime)
    d: Annotated[int, Int(1)] = 50  # memory dimension (d < N: the memories interfere)
    samples: Annotated[int, Int(1)] = (
        1000  # T samples; the schemes count them, SGD (batch 1) takes one step per sample
    )
    top_fraction: Fraction = 1 / 8  # thresholded scheme keeps P = d * this many tokens
    rho: Annotated[float, Float(0.0)] = 0.5  # the q = p̂^ρ scheme
    min_count: Annotated[int, Int(1)] = 2  # the q = 1{seen >= s} scheme
    lr: Annotated[float, Float(0.0, open_low=True)] = (
        1.0  # SGD step γ (also the γ of the q_γ = F(n_x) scheme)
    )
    checkpoints: Annotated[tuple[int, ...], Ints()] = (10, 100)  # SGD steps shown besides the last one
    threads: int | None = None  # torch CPU threads (default 1: the small SGD steps are fastest on one)
    seed: Seed = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        super().__post_init__()
        if max(self.checkpoints) > self.samples:
            raise ValueError(f"--checkpoints must be <= --samples ({self.samples}), got {self.checkpoints}")
        check_threads(self.threads)


@dataclass(frozen=True)
class MemoryMatrix:
    label: str
    scores: list[list[float]]  # u_yᵀ W e_x, (M, N)
    coefficients: list[list[float]]  # Q with W = Σ Q[y, x] u_y e_xᵀ, (M, N)
    error: float  # Σ_x p(x) 1{argmax_y u_yᵀ W e_x ≠ f*(x)} (a tie counts as wrong)
    # the same with argmax_y Q[y, x]: the error with orthonormal embeddings (no interference), i.e.
    # the mass of the tokens not stored; error − this is what the interference costs
    coefficient_error: float


@dataclass(frozen=True)
class MemoryMatricesResult(ExperimentResult):
    num_inputs: int
    num_outputs: int
    alpha: float
    d: int
    samples: int
    target: list[list[float]]  # 1{y = f*(x)}, (M, N)
    counts: list[int]  # n_x in the T samples
    matrices: list[MemoryMatrix]  # the schemes, then SGD at each checkpoint

    def headline(self) -> str:
        errors = ", ".join(f"{m.label} {m.error:.3f} ({m.coefficient_error:.3f})" for m in self.matrices)
        return f"error at d={self.d}, T={self.samples} (without interference): {errors}"


def plot_memory_matrices(result: MemoryMatricesResult, out_dir: Path) -> list[Path]:
    rows = [("target f*(x) = x mod M", np.asarray(result.target), np.asarray(result.target), None)]
    rows += [(m.label, np.asarray(m.scores), np.asarray(m.coefficients), m.error) for m in result.matrices]
    fig, axes = new_figure(len(rows), 2, (6.0, 1.25))
    for (label, scores, coefficients, error), (left, right) in zip(rows, axes):
        for ax, values, what in (
            (left, scores, "u_yᵀ W e_x"),
            (right, coefficients, "W in the (u, e) basis"),
        ):
            scale = np.abs(values).max() or 1.0
            ax.imshow(values / scale, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
            ax.set_yticks(range(values.shape[0]))
            ax.tick_params(labelsize=6)
            title = f"{label}: {what}" + ("" if error is None else f" (error {error:.3f})")
            ax.set_title(title, fontsize=7)
        if error is not None:  # the read-out: argmax_y of each column
            left.plot(np.arange(scores.shape[1]), scores.argmax(0), "k.", ms=1.5)
    for ax in axes[-1]:
        ax.set_xlabel("input x (most frequent first)", fontsize=7)
    fig.suptitle(
        f"Memory matrices, N={result.num_inputs}, M={result.num_outputs}, α={result.alpha:g}, "
        f"d={result.d}, T={result.samples} (each panel scaled by its largest |value|; dots: argmax)",
        fontsize=8,
    )
    return save_figure(fig, out_dir, "memory_matrices")


@register(
    "memory-matrices",
    family="scaling",
    config=MemoryMatricesConfig,
    plot=plot_memory_matrices,
    summary="heatmaps of u_y^T W e_x and of W in the (u, e) basis for each scheme and for SGD over training",
    full=lambda: MemoryMatricesConfig(samples=10_000, checkpoints=(10, 100, 1000)),
    small=lambda: MemoryMatricesConfig(num_inputs=20, d=10, samples=100, checkpoints=(10,)),
)
def run_memory_matrices(
    config: MemoryMatricesConfig, out_dir: Path, *, log=print, progress: bool = True
) -> MemoryMatricesResult:
    device = resolve_device(config.device)
    task = ZipfAssociations(config.num_inputs, config.num_outputs, config.alpha)
    probs, targets, M = task.probs(), task.targets(), task.num_outputs
    log(
        f"memory-matrices: N={task.num_inputs}, M={M}, alpha={task.alpha:g}, d={config.d}, T={config.samples}"
    )
    # the samples SGD trains on (batch 1): the schemes count the same ones
    batches = sample_batches(task.probs(), 1, config.samples, 1, config.seed)
    counts = torch.bincount(batches.flatten(), minlength=task.num_inputs).to(torch.float64)
    # the embeddings SGD trains with (from_task draws them from the same seed), float64
    inputs, outputs = (
        t[0].cpu() for t in draw_embeddings([0], task.num_inputs, M, [config.d], seed=config.seed).at(0)
    )

    def summary(label: str, scores: torch.Tensor, coefficients: torch.Tensor) -> MemoryMatrix:
        _, error = errors_from_scores(scores, targets, probs, 0)
        _, without = errors_from_scores(coefficients, targets, probs, 0)
        log(
            f"  {label}: error {float(error):.4f}; with orthonormal embeddings (no interference) {float(without):.4f}"
        )
        return MemoryMatrix(label, scores.tolist(), coefficients.tolist(), float(error), float(without))

    top = max(1, int(config.d * config.top_fraction))
    schemes = [
        ("q = 1{seen}", q_seen(counts)),
        ("q = p_hat", q_frequency(counts)),
        (f"q = 1{{top {top} seen}}", q_threshold(counts, top)),
        (f"q = p_hat^{config.rho:g}", q_power(counts, config.rho)),
        (f"q = 1{{seen >= {config.min_count}}}", q_seen(counts, config.min_count)),
        (f"q_gamma = F(n_x), γ={config.lr:g}", q_sgd(counts, config.lr, M)),
    ]
    matrices = [
        summary(
            label, memory_scores_bruteforce(q, targets, inputs, outputs), scheme_coefficients(q, targets, M)
        )
        for label, q in schemes
    ]
    train = MemoryTrainConfig(
        "sgd",
        config.lr,
        1,
        config.samples,
        eval_steps=tuple(sorted(set(config.checkpoints))),
        track_coefficients=True,
    )
    with torch_threads(config.threads, default=1):
        problem = from_task(task, config.d, 1, seed=config.seed, device=device, dtype=torch.float64)
        trained = train_memory(problem, train, seed=config.seed, batches=batches)
    for k, step in enumerate(trained.steps.tolist()):
        q = trained.coefficients[k, 0]
        matrices.append(
            summary(f"SGD γ={config.lr:g}, step {step}", coefficient_scores(q, inputs, outputs), q)
        )
    target = target_matrix(targets, M)
    return MemoryMatricesResult(
        task.num_inputs,
        M,
        task.alpha,
        config.d,
        config.samples,
        target.tolist(),
        counts.long().tolist(),
        matrices,
    )


def target_matrix(targets: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """The target association matrix 1{y = f*(x)}, (M, N), float64."""
    return scheme_coefficients(torch.ones(len(targets), dtype=torch.float64), targets, num_outputs)


# --------------------------------------------------------------------------------------------
