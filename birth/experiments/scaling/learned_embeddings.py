"""learned-embeddings: error against d and against M with learned E and U against random ones
(Proposition 5), and the capacity gain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from tqdm import tqdm

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
    band,
    check_threads,
    mean_std,
    positive,
)
from birth.memories.problem import from_task
from tasks.zipf import ZipfAssociations
from training.memories import MemoryTrainConfig, Optimizer, train_memory


@dataclass(frozen=True)
class LearnedEmbeddingsConfig(Validated):
    trials: Annotated[int, Int(1)] = 3  # seeds per point
    num_inputs: NumInputs = 100  # N tokens
    num_outputs: NumOutputs = 5  # M outputs of the error-vs-d curve
    alpha: Alpha = 2.0  # Zipf exponent
    dims: Annotated[tuple[int, ...], Ints()] = (1, 2, 3, 5, 10, 20, 50, 100)  # d of the error-vs-d curve
    outputs_grid: Annotated[tuple[int, ...], Ints(2)] = (2, 5, 10, 20, 50, 100)  # M of the error-vs-M curve
    d_for_outputs: Annotated[int, Int(1)] = 5  # d of the error-vs-M curve
    optimizer: Optimizer = "adam"  # the same for both arms (Adam: the seed's best)
    lr: Annotated[float, Float(0.0, open_low=True)] = 0.01  # step size
    batch_size: Annotated[int, Int(1)] = 16  # samples per step
    steps: Annotated[int, Int(1)] = 2000  # optimization steps (fresh samples each)
    tolerance: Fraction = 0.01  # the capacity gain compares the smallest d reaching error <= this
    threads: int | None = None  # torch CPU threads (default 1: the small steps are fastest on one)
    seed: Seed = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        super().__post_init__()
        check_threads(self.threads)


@dataclass(frozen=True)
class ErrorCurve:
    xs: list[int]
    learned_mean: list[float]  # E, U and W trained
    learned_std: list[float]
    random_mean: list[float]  # E, U random (fixed), W trained
    random_std: list[float]


def smallest_reaching(xs: list[int], errors: list[float], tolerance: float) -> int | None:
    """The first x (in increasing order) whose error is <= tolerance, None if none."""
    for x, e in sorted(zip(xs, errors)):
        if e <= tolerance:
            return x
    return None


def largest_reaching(xs: list[int], errors: list[float], tolerance: float) -> int | None:
    """The largest x such that every x' <= x has error <= tolerance (None if the first fails)."""
    best = None
    for x, e in sorted(zip(xs, errors)):
        if e > tolerance:
            break
        best = x
    return best


@dataclass(frozen=True)
class LearnedEmbeddingsResult(ExperimentResult):
    num_inputs: int
    num_outputs: int
    alpha: float
    d_for_outputs: int
    tolerance: float
    vs_d: ErrorCurve
    vs_outputs: ErrorCurve
    d_learned: int | None  # smallest d with error <= tolerance
    d_random: int | None
    capacity_gain: (
        float | None
    )  # d_random / d_learned; max d / d_learned (a bound) if random never gets there
    gain_is_lower_bound: bool
    m_learned: int | None  # largest M (at d_for_outputs) up to which the error stays <= tolerance
    m_random: int | None

    def headline(self) -> str:
        def show(v):
            return "none" if v is None else str(v)

        gain = (
            "n/a"
            if self.capacity_gain is None
            else f"{'> ' if self.gain_is_lower_bound else ''}{self.capacity_gain:g}x"
        )
        return (
            f"smallest d with error <= {self.tolerance:g} (M={self.num_outputs}): learned {show(self.d_learned)}, "
            f"random {show(self.d_random)}: capacity gain {gain}; largest M at d={self.d_for_outputs}: learned "
            f"{show(self.m_learned)}, random {show(self.m_random)}"
        )


def plot_learned_embeddings(result: LearnedEmbeddingsResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2, (5.0, 4.0))
    for ax, curve, xlabel, title in (
        (axes[0][0], result.vs_d, "memory dimension d", f"M={result.num_outputs}"),
        (axes[0][1], result.vs_outputs, "number of outputs M", f"d={result.d_for_outputs}"),
    ):
        band(ax, curve.xs, positive(curve.learned_mean), curve.learned_std, "learned E, U")
        band(ax, curve.xs, positive(curve.random_mean), curve.random_std, "random E, U (W trained)")
        ax.axhline(result.tolerance, color="k", lw=0.8, ls=":")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel=xlabel,
            ylabel="generalization error",
            title=f"N={result.num_inputs}, α={result.alpha:g}, {title}",
        )
        ax.legend(fontsize=7)
    gain = (
        ""
        if result.capacity_gain is None
        else (f": capacity gain {'> ' if result.gain_is_lower_bound else ''}{result.capacity_gain:g}x in d")
    )
    fig.suptitle(f"Learned vs random embeddings{gain}")
    return save_figure(fig, out_dir, "learned_embeddings")


@register(
    "learned-embeddings",
    family="scaling",
    config=LearnedEmbeddingsConfig,
    plot=plot_learned_embeddings,
    summary="error vs d and vs M with learned E and U against random ones (Proposition 5), capacity gain",
    full=lambda: LearnedEmbeddingsConfig(
        trials=10, steps=10_000, dims=(1, 2, 3, 5, 10, 20, 50, 100, 200, 500)
    ),
    small=lambda: LearnedEmbeddingsConfig(
        trials=2, num_inputs=30, dims=(2, 8), outputs_grid=(2, 5), steps=300, tolerance=0.05
    ),
)
def run_learned_embeddings(
    config: LearnedEmbeddingsConfig, out_dir: Path, *, log=print, progress: bool = True
) -> LearnedEmbeddingsResult:
    device = resolve_device(config.device)
    log(
        f"learned-embeddings: N={config.num_inputs}, alpha={config.alpha:g}, {config.optimizer} lr {config.lr:g}, "
        f"batch {config.batch_size}, {config.steps} steps, {config.trials} seeds; error vs d at M={config.num_outputs}, "
        f"vs M at d={config.d_for_outputs}"
    )
    points = [("d", d, config.num_outputs) for d in config.dims]
    points += [("M", config.d_for_outputs, m) for m in config.outputs_grid]
    finals: dict[tuple[str, int, int, bool], torch.Tensor] = {}
    with torch_threads(config.threads, default=1):
        for axis, d, m in tqdm(points, desc="learned vs random", disable=not progress):
            task = ZipfAssociations(config.num_inputs, m, config.alpha)
            for learn in (True, False):
                features = "learned" if learn else "matrix"
                train = MemoryTrainConfig(
                    config.optimizer, config.lr, config.batch_size, config.steps, features=features
                )
                problem = from_task(task, d, config.trials, seed=config.seed, device=device)
                finals[(axis, d, m, learn)] = train_memory(problem, train, seed=config.seed).error[-1]

    def curve(axis: str, xs: list[int], key) -> ErrorCurve:
        parts = []
        for learn in (True, False):
            stacked = torch.stack([finals[key(x) + (learn,)] for x in xs], 1)  # (R, X)
            parts += list(mean_std(stacked))
        return ErrorCurve(xs, *parts)

    vs_d = curve("d", list(config.dims), lambda d: ("d", d, config.num_outputs))
    vs_m = curve("M", list(config.outputs_grid), lambda m: ("M", config.d_for_outputs, m))
    for name, c in (("d", vs_d), ("M", vs_m)):
        for x, le, ra in zip(c.xs, c.learned_mean, c.random_mean):
            log(f"  {name}={x}: error learned {le:.4f}, random {ra:.4f}")
    d_learned = smallest_reaching(vs_d.xs, vs_d.learned_mean, config.tolerance)
    d_random = smallest_reaching(vs_d.xs, vs_d.random_mean, config.tolerance)
    gain, lower = None, False
    if d_learned is not None:
        if d_random is not None:
            gain = d_random / d_learned
        else:  # random never reached the tolerance on the grid
            gain, lower = max(vs_d.xs) / d_learned, True
    m_learned = largest_reaching(vs_m.xs, vs_m.learned_mean, config.tolerance)
    m_random = largest_reaching(vs_m.xs, vs_m.random_mean, config.tolerance)
    result = LearnedEmbeddingsResult(
        config.num_inputs,
        config.num_outputs,
        config.alpha,
        config.d_for_outputs,
        config.tolerance,
        vs_d,
        vs_m,
        d_learned,
        d_random,
        gain,
        lower,
        m_learned,
        m_random,
    )
    log(f"  {result.headline()}")
    return result


# --------------------------------------------------------------------------------------------
