"""optimizers: lr × batch × {SGD, Adam} × LayerNorm grid of trained matrix memories (N = 100, M = 5,
α = 2, from W = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from tqdm import tqdm

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device, resolve_device, torch_threads
from birth.base.validate import Floats, Int, Ints, Validated, check_int
from birth.experiments.common import Seed
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.scaling.common import (
    Trials,
    band,
    check_threads,
    mean_std,
)
from birth.memories.problem import from_task
from tasks.zipf import ZipfAssociations
from training.memories import MemoryTrainConfig, train_memory


@dataclass(frozen=True)
class OptimizersConfig(Validated):
    trials: Trials = 3  # seeds per grid point
    samples: Annotated[int, Int(1)] = 10_240  # training samples T (steps = T / batch)
    dims: Annotated[tuple[int, ...], Ints()] = (10, 100)  # memory dimensions d
    lrs: Annotated[tuple[float, ...], Floats(0.0, open_low=True)] = (0.1, 1.0, 10.0, 100.0)  # learning rates
    batches: Annotated[tuple[int, ...], Ints()] = (16, 64, 256)  # batch sizes
    threads: int | None = None  # torch CPU threads (default 1: the small SGD steps are fastest on one)
    seed: Seed = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("--samples", self.samples, max(self.batches))  # at least one step of each batch size
        check_threads(self.threads)


@dataclass(frozen=True)
class OptimizerRun:
    d: int
    optimizer: str
    layer_norm: bool
    lr: float
    batch: int
    final_error_mean: float
    final_error_per_seed: list[float]


@dataclass(frozen=True)
class OptimizersResult(ExperimentResult):
    num_samples: int
    trials: int
    dims: list[int]
    lrs: list[float]
    batches: list[int]
    runs: list[OptimizerRun]

    def best(self) -> OptimizerRun:
        return min(self.runs, key=lambda r: r.final_error_mean)

    def headline(self) -> str:
        b = self.best()
        return (
            f"best: d={b.d}, {b.optimizer}, LayerNorm={b.layer_norm}, lr={b.lr:g}, batch={b.batch}: "
            f"error {b.final_error_mean:.4f}"
        )


COMBOS = [(opt, ln) for opt in ("sgd", "adam") for ln in (False, True)]


def plot_optimizers(result: OptimizersResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(len(result.dims), len(COMBOS), (3.4, 2.8))
    table = {
        (r.d, r.optimizer, r.layer_norm, r.lr, r.batch): torch.tensor(r.final_error_per_seed)
        for r in result.runs
    }
    for row, d in enumerate(result.dims):
        for col, (opt, ln) in enumerate(COMBOS):
            ax = axes[row][col]
            for b in result.batches:
                mean, std = mean_std(torch.stack([table[(d, opt, ln, lr, b)] for lr in result.lrs], 1))
                band(ax, result.lrs, mean, std, f"batch {b}")
            ax.set(xscale="log", yscale="log", title=f"d={d}, {opt}{' + LN' if ln else ''}")
            ax.title.set_fontsize(8)
            if row == len(result.dims) - 1:
                ax.set_xlabel("learning rate")
            if col == 0:
                ax.set_ylabel("error")
    axes[0][0].legend(fontsize=6)
    return save_figure(fig, out_dir, "optimizers")


@register(
    "optimizers",
    family="scaling",
    config=OptimizersConfig,
    plot=plot_optimizers,
    summary="lr x batch x {SGD, Adam} x LayerNorm on/off grid of trained memories",
    full=lambda: OptimizersConfig(trials=10, dims=(10, 30, 100, 300, 1000), batches=(16, 64, 256, 1024)),
    small=lambda: OptimizersConfig(trials=2, samples=256, dims=(10,), lrs=(1.0, 10.0), batches=(16, 64)),
)
def run_optimizers(
    config: OptimizersConfig, out_dir: Path, *, log=print, progress: bool = True
) -> OptimizersResult:
    device = resolve_device(config.device)
    task = ZipfAssociations(100, 5, 2.0)
    dims, lrs, batches = list(config.dims), list(config.lrs), list(config.batches)
    log(
        f"optimizers: N=100, M=5, alpha=2, T={config.samples} samples, d in {dims}, lr in {lrs}, "
        f"batch in {batches}, {{SGD, Adam}} x LayerNorm on/off, {config.trials} seeds"
    )
    grid = [(d, opt, ln, lr, b) for d in dims for opt, ln in COMBOS for lr in lrs for b in batches]
    results = {}
    with torch_threads(config.threads, default=1):
        for d, opt, ln, lr, b in tqdm(grid, desc="optimizer grid", disable=not progress):
            train = MemoryTrainConfig(opt, lr, b, config.samples // b, layer_norm=ln)
            problem = from_task(task, d, config.trials, seed=config.seed, device=device, dtype=torch.float32)
            results[(d, opt, ln, lr, b)] = train_memory(problem, train, seed=config.seed).error[-1]
    log(
        "  final error (mean over seeds), SGD batch 64, no LayerNorm "
        "(reference: 0.168 -> 0.046 at lr 0.1, 0.031 -> 0.002 at lr 100, for d = 10 -> 1000):"
    )
    for lr in lrs:
        if 64 in batches:
            line = ", ".join(f"d={d}: {results[(d, 'sgd', False, lr, 64)].mean():.4f}" for d in dims)
            log(f"    lr {lr:g}: {line}")
    runs = [
        OptimizerRun(d, opt, ln, lr, b, v.mean().item(), v.tolist())
        for (d, opt, ln, lr, b), v in results.items()
    ]
    result = OptimizersResult(config.samples, config.trials, dims, lrs, batches, runs)
    best = result.best()
    log(
        f"  best configuration: d={best.d}, {best.optimizer}, LayerNorm={best.layer_norm}, lr={best.lr:g}, "
        f"batch={best.batch}: error {best.final_error_mean:.4f}"
    )
    return result


# --------------------------------------------------------------------------------------------
