"""heatmap: the error over a (d, T) grid for q0 = 1{seen}, q1 = p̂, q = 1{seen >= s} and q = p̂^ρ (α < 1:
regimes, no power law).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device, resolve_device
from birth.base.validate import Floats, Int, Ints, Validated, check_ints
from birth.experiments.common import Seed
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.scaling.common import (
    Alpha,
    NumInputs,
    NumOutputs,
    Trials,
    check_range,
    check_threads,
    log_grid,
    task_errors,
)
from birth.memories.scaling_laws import (
    q_frequency,
    q_power,
    q_seen,
)
from tasks.zipf import ZipfAssociations


@dataclass(frozen=True)
class HeatmapConfig(Validated):
    trials: Trials = 20  # independent draws of data and embeddings
    num_inputs: NumInputs = 100  # N tokens
    num_outputs: NumOutputs = 5  # M outputs
    alpha: Alpha = 0.5  # Zipf exponent (< 1: no power law, regimes)
    d_range: Annotated[tuple[int, int], Ints()] = (10, 1000)  # smallest and largest d
    t_range: Annotated[tuple[int, int], Ints()] = (10, 10_000)  # smallest and largest T
    grid_points: Annotated[int, Int(2)] = 30  # log-spaced values of d and of T
    min_counts: tuple[int, ...] = (2,)  # extra schemes q = 1{x seen at least s times}, one per s
    rhos: Annotated[tuple[float, ...], Floats(0.0, allow_empty=True)] = (
        0.5,
    )  # extra schemes q = p̂^ρ, one per ρ
    float32: bool = False  # compute scores in float32 (faster)
    threads: int | None = None  # torch CPU threads (default: torch's own choice)
    seed: Seed = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        super().__post_init__()
        check_threads(self.threads)
        check_range("--d-range", self.d_range)
        check_range("--t-range", self.t_range)
        if self.min_counts:  # empty: no extra scheme
            check_ints("--min-counts", self.min_counts, 2)


@dataclass(frozen=True)
class HeatmapResult(ExperimentResult):
    num_inputs: int
    num_outputs: int
    alpha: float
    trials: int
    dims: list[int]
    sizes: list[int]
    schemes: list[str]  # q0, q1, then the extra schemes
    mean_error: dict[str, list[list[float]]]  # scheme -> (len(sizes), len(dims)), mean over trials
    fraction_q1_better: float
    best_scheme: list[list[int]]  # index into schemes of the smallest error at each (T, d)
    best_fraction: dict[str, float]  # share of the grid where each scheme is best

    def headline(self) -> str:
        best = ", ".join(f"{s} {100 * f:.0f}%" for s, f in self.best_fraction.items())
        return f"q1=p_hat beats q0=1{{seen}} on {100 * self.fraction_q1_better:.0f}% of the grid; best scheme: {best}"


def plot_heatmap(result: HeatmapResult, out_dir: Path) -> list[Path]:
    from matplotlib.colors import ListedColormap

    panels = len(result.schemes) + 2
    cols = 3
    rows = math.ceil(panels / cols)
    fig, axes = new_figure(rows, cols, (4.6, 4.0))
    flat = [ax for row in axes for ax in row]
    x, y = np.array(result.dims), np.array(result.sizes)
    q0, q1 = (np.asarray(result.mean_error[s]) for s in result.schemes[:2])
    items = [
        (result.schemes[0], q0, "RdBu_r", (0, 1)),
        (result.schemes[1], q1, "RdBu_r", (0, 1)),
        ("error(q0) − error(q1)", q0 - q1, "PuOr", (-0.5, 0.5)),
    ]
    items += [(s, np.asarray(result.mean_error[s]), "RdBu_r", (0, 1)) for s in result.schemes[2:]]
    for ax, (title, values, cmap, lims) in zip(flat, items):
        mesh = ax.pcolormesh(x, y, values, cmap=cmap, vmin=lims[0], vmax=lims[1], shading="nearest")
        ax.set(xscale="log", yscale="log", xlabel="d", ylabel="T", title=title)
        fig.colorbar(mesh, ax=ax)
    ax = flat[len(items)]
    colors = ListedColormap([f"C{k}" for k in range(len(result.schemes))])
    mesh = ax.pcolormesh(
        x,
        y,
        np.asarray(result.best_scheme),
        cmap=colors,
        vmin=-0.5,
        vmax=len(result.schemes) - 0.5,
        shading="nearest",
    )
    ax.set(xscale="log", yscale="log", xlabel="d", ylabel="T", title="scheme with the smallest error")
    bar = fig.colorbar(mesh, ax=ax, ticks=range(len(result.schemes)))
    bar.ax.set_yticklabels(result.schemes, fontsize=7)
    for ax in flat[len(items) + 1 :]:
        ax.axis("off")
    fig.suptitle(
        f"Zipf α={result.alpha:g}, N={result.num_inputs}, M={result.num_outputs}, {result.trials} trials"
    )
    return save_figure(fig, out_dir, "heatmap")


@register(
    "heatmap",
    family="scaling",
    config=HeatmapConfig,
    plot=plot_heatmap,
    summary="error over a (d, T) grid for q0 = 1{seen}, q1 = p_hat, 1{seen >= s} and p_hat^rho (alpha = 0.5)",
    full=lambda: HeatmapConfig(trials=100),
    small=lambda: HeatmapConfig(trials=2, d_range=(10, 200), t_range=(10, 1000), grid_points=6),
)
def run_heatmap(config: HeatmapConfig, out_dir: Path, *, log=print, progress: bool = True) -> HeatmapResult:
    device = resolve_device(config.device)
    task = ZipfAssociations(config.num_inputs, config.num_outputs, config.alpha)
    dims, sizes = log_grid(*config.d_range, config.grid_points), log_grid(*config.t_range, config.grid_points)
    log(
        f"heatmap: N={task.num_inputs}, M={task.num_outputs}, alpha={task.alpha:g}, {config.trials} trials, "
        f"{len(dims)} d x {len(sizes)} T"
    )
    counts = task.nested_counts(sizes, config.trials, seed=config.seed)

    def errors(weights: torch.Tensor) -> torch.Tensor:  # (R, k·T, 1, N) -> (k, T, D), mean over trials
        err = task_errors(task, weights, dims, config.trials, config, device, progress).mean(0)
        return err.reshape(-1, len(sizes), len(dims))

    q0, q1 = errors(torch.cat([q_seen(counts), q_frequency(counts)], 1)[:, :, None])
    better = (q1 < q0 - 1e-12).float().mean().item()
    log(
        f"  q0=1{{seen}}: error {q0.min():.3f}..{q0.max():.3f}; q1=p_hat: error {q1.min():.3f}..{q1.max():.3f}"
    )
    log(
        f"  q1 beats q0 on {100 * better:.0f}% of the grid (small d, large T); q0 reaches error "
        f"{q0[-1, -1]:.3f} at d={dims[-1]}, T={sizes[-1]} vs q1 {q1[-1, -1]:.3f}"
    )
    log("  (no power-law theory for alpha < 1: the figure shows the regimes, not a slope)")
    schemes = ["q0 = 1{seen}", "q1 = p_hat"]
    tables = [q0, q1]
    extra = [(f"q = 1{{seen >= {s}}}", q_seen(counts, s)) for s in config.min_counts]
    extra += [(f"q = p_hat^{rho:g}", q_power(counts, rho)) for rho in config.rhos]
    if extra:
        # the extra schemes in their own call: the same embeddings (same seed), and q0, q1 computed
        # exactly as without them
        tables += list(errors(torch.cat([w for _, w in extra], 1)[:, :, None]))
        schemes += [label for label, _ in extra]
    stacked = torch.stack(tables)  # (S, T, D)
    best = stacked.argmin(0)
    fractions = {s: float((best == k).double().mean()) for k, s in enumerate(schemes)}
    for label, table in zip(schemes[2:], tables[2:]):
        log(
            f"  {label}: error {table.min():.3f}..{table.max():.3f}; best scheme on {100 * fractions[label]:.0f}% "
            "of the grid"
        )
    return HeatmapResult(
        task.num_inputs,
        task.num_outputs,
        task.alpha,
        config.trials,
        dims,
        sizes,
        schemes,
        {s: t.tolist() for s, t in zip(schemes, tables)},
        better,
        best.tolist(),
        fractions,
    )


# --------------------------------------------------------------------------------------------
