"""d-and-T: the error of the thresholded scheme against d (several T) and T (several d), with fitted
slopes and the theory overlay p{x : q(x)² d < c ‖q‖²} + Σ_x p(x) e^{−T p(x)} with a fitted constant c.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device, resolve_device
from birth.base.validate import Int, Ints, Validated
from birth.experiments.common import Seed
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.scaling.common import (
    Alpha,
    FitRecord,
    Fraction,
    NumInputs,
    NumOutputs,
    Trials,
    band,
    check_threads,
    log_grid,
    mean_std,
    positive,
    report_fit,
    slope_text,
    task_errors,
    theory_line,
    tops,
)
from birth.memories.scaling_laws import (
    TheoryConstant,
    fit_theory_constant,
    predicted_error,
    q_threshold,
)
from tasks.zipf import ZipfAssociations


@dataclass(frozen=True)
class DAndTConfig(Validated):
    trials: Trials = 20  # independent draws of data and embeddings (>= 2: the CIs bootstrap over them)
    num_inputs: NumInputs = 1000  # N tokens
    num_outputs: NumOutputs = 5  # M outputs, f*(x) = x mod M
    alpha: Alpha = 2.0  # Zipf exponent of p(x)
    d_curves: Annotated[tuple[int, ...], Ints()] = (
        10,
        20,
        50,
        100,
        200,
        1000,
    )  # d of the T-curves; their range is the d-grid's
    t_curves: Annotated[tuple[int, ...], Ints()] = (
        10,
        100,
        1000,
        10_000,
    )  # T of the d-curves; their range is the T-grid's
    grid_points: Annotated[int, Int(2)] = 13  # log-spaced d and T values (added to the curves' values)
    top_fraction: Fraction = 0.125  # thresholded scheme keeps P = d * this (paper text 1/8, its code 1/12)
    float32: bool = False  # compute scores in float32 (faster)
    threads: int | None = None  # torch CPU threads (default: torch's own choice)
    seed: Seed = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        super().__post_init__()
        check_threads(self.threads)


@dataclass(frozen=True)
class DAndTResult(ExperimentResult):
    num_inputs: int
    num_outputs: int
    alpha: float
    trials: int
    top_fraction: float
    dims: list[int]
    sizes: list[int]  # finite T; the last row of the error arrays is T = ∞
    d_curves: list[int]
    t_curves: list[int]
    mean_error: list[list[float]]  # (len(sizes) + 1, len(dims))
    std_error: list[list[float]]
    fits: list[FitRecord]  # vs d at T = ∞, vs T at the largest d
    theory_c: TheoryConstant | None  # fitted on the T = ∞ curve
    predicted_error: list[list[float]] | None  # (len(sizes) + 1, len(dims)), the overlay

    def headline(self) -> str:
        d_fit, t_fit = self.fits
        text = (
            f"slope vs d (T=inf) {slope_text(d_fit)} theory {d_fit.theory:+.2f}; vs T (d={max(self.d_curves)}) "
            f"{slope_text(t_fit)} theory {t_fit.theory:+.2f}"
        )
        return text + (f"; theory overlay c = {self.theory_c.c:.3g}" if self.theory_c else "")


def plot_d_and_t(result: DAndTResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2, (5.5, 4.2))
    left, right = axes[0]
    mean, std = np.asarray(result.mean_error), np.asarray(result.std_error)
    dims, sizes, alpha = result.dims, result.sizes, result.alpha
    predicted = None if result.predicted_error is None else np.asarray(result.predicted_error)
    for t in result.t_curves:
        k = sizes.index(t)
        band(left, dims, mean[k], std[k], f"T={t:g}")
        if predicted is not None:
            left.plot(dims, positive(predicted[k]), ":", color=left.lines[-1].get_color(), lw=1.2)
    band(left, dims, mean[-1], std[-1], "T=inf", color="k")
    if predicted is not None:
        left.plot(dims, positive(predicted[-1]), "k:", lw=1.2, label="theory, fitted c (dotted)")
    ref = mean[-1, 0]
    left.plot(
        dims, [ref * (d / dims[0]) ** (-(alpha - 1)) for d in dims], "k--", lw=1, label=r"$d^{-\alpha+1}$"
    )
    for d in result.d_curves:
        k = dims.index(d)
        band(right, sizes, mean[:-1, k], std[:-1, k], f"d={d}")
        if predicted is not None:
            right.plot(sizes, positive(predicted[:-1, k]), ":", color=right.lines[-1].get_color(), lw=1.2)
    ref = mean[0, dims.index(max(result.d_curves))]
    right.plot(
        sizes,
        [ref * (t / sizes[0]) ** (-(1 - 1 / alpha)) for t in sizes],
        "k--",
        lw=1,
        label=r"$T^{-1+1/\alpha}$",
    )
    for ax, xlabel in ((left, "memory dimension d"), (right, "number of samples T")):
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="generalization error")
        ax.legend(fontsize=7)
    c_text = f", theory c = {result.theory_c.c:.3g}" if result.theory_c else ""
    fig.suptitle(
        f"Thresholded scheme (P = d/{1 / result.top_fraction:.3g}), N={result.num_inputs}, "
        f"M={result.num_outputs}, α={alpha:g}, {result.trials} trials{c_text}"
    )
    return save_figure(fig, out_dir, "d-and-T")


@register(
    "d-and-T",
    family="scaling",
    config=DAndTConfig,
    plot=plot_d_and_t,
    summary="error vs d (several T) and vs T (several d), thresholded scheme, with the theory overlay",
    full=lambda: DAndTConfig(trials=100, grid_points=20),
    small=lambda: DAndTConfig(
        trials=2, num_inputs=200, d_curves=(10, 20, 50, 100), t_curves=(10, 100, 1000), grid_points=5
    ),
)
def run_d_and_t(config: DAndTConfig, out_dir: Path, *, log=print, progress: bool = True) -> DAndTResult:
    device = resolve_device(config.device)
    task = ZipfAssociations(config.num_inputs, config.num_outputs, config.alpha)
    d_curves, t_curves = sorted(set(config.d_curves)), sorted(set(config.t_curves))
    dims = sorted(set(log_grid(min(d_curves), max(d_curves), config.grid_points)) | set(d_curves))
    sizes = sorted(set(log_grid(min(t_curves), max(t_curves), config.grid_points)) | set(t_curves))
    log(
        f"d-and-T: N={task.num_inputs}, M={task.num_outputs}, alpha={task.alpha:g}, P=d*{config.top_fraction:.4g}, "
        f"{config.trials} trials, {len(dims)} d x {len(sizes)} T (+ T=inf)"
    )
    counts = task.nested_counts(sizes, config.trials, seed=config.seed)  # (R, T, N)
    top = tops(dims, config.top_fraction)
    finite = q_threshold(counts, top)  # (R, T, D, N)
    at_infinity = q_threshold(task.probs(), top)  # (D, N): T = ∞, counts ∝ p
    err = task_errors(task, [finite, at_infinity[None, None]], dims, config.trials, config, device, progress)
    alpha = task.alpha
    fits = [report_fit("error vs d at T=inf", dims, err[:, -1], -(alpha - 1), config.seed, log)]
    widest = dims.index(max(d_curves))
    floor = err[:, -1, widest].mean()
    along_t = err[:, :-1, widest]
    # fit the T-slope where the finite-d floor (T = ∞ error) is < 1/3 of the error
    mask = (along_t.mean(0) > 3 * floor).tolist()
    fits.append(
        report_fit(
            f"error vs T at d={max(d_curves)} (points with error > 3x the T=inf floor)",
            sizes,
            along_t,
            -(1 - 1 / alpha),
            config.seed,
            log,
            mask=mask,
        )
    )
    theory_c, predicted = None, None
    try:
        theory_c = fit_theory_constant(at_infinity, task.probs(), dims, err[:, -1].mean(0))
        predicted = predicted_error(at_infinity, task.probs(), dims, theory_c.c, [*sizes, math.inf]).tolist()
        log(f"  theory p{{x: q(x)^2 d < c |q|^2}} + sum_x p(x) exp(-T p(x)): {theory_line(theory_c)}")
    except ValueError as err_c:
        log(f"  theory overlay: no fit ({err_c})")
    mean, std = mean_std(err)
    return DAndTResult(
        task.num_inputs,
        task.num_outputs,
        alpha,
        config.trials,
        config.top_fraction,
        dims,
        sizes,
        d_curves,
        t_curves,
        mean,
        std,
        fits,
        theory_c,
        predicted,
    )


# --------------------------------------------------------------------------------------------
