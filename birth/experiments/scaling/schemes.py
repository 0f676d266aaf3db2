"""schemes: T = ∞, q = 1, q = p, q = 1{x <= d/8} and q = p^ρ against d, fitted slopes against theory."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device, resolve_device
from birth.base.validate import Floats, Int, Ints, Validated
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
    check_range,
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
    q_power,
    q_threshold,
)
from tasks.zipf import ZipfAssociations


@dataclass(frozen=True)
class SchemesConfig(Validated):
    trials: Trials = 30  # independent embedding draws
    num_inputs: NumInputs = 1000  # N tokens
    num_outputs: NumOutputs = 5  # M outputs
    alpha: Alpha = 2.0  # Zipf exponent
    d_range: Annotated[tuple[int, int], Ints()] = (10, 1000)  # smallest and largest d
    grid_points: Annotated[int, Int(2)] = 20  # log-spaced values of d
    top_fraction: Fraction = 0.125  # thresholded scheme keeps P = d * this (paper text 1/8, its code 1/12)
    rhos: Annotated[tuple[float, ...], Floats(0.0, open_low=True, allow_empty=True)] = (
        0.5,
        0.75,
    )  # extra schemes q = p^ρ, one per ρ (theory slope −(α−1)/(2αρ))
    float32: bool = False  # compute scores in float32 (faster)
    threads: int | None = None  # torch CPU threads (default: torch's own choice)
    seed: Seed = 0  # seeds the embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        super().__post_init__()
        check_threads(self.threads)
        check_range("--d-range", self.d_range)


@dataclass(frozen=True)
class SchemesResult(ExperimentResult):
    num_inputs: int
    num_outputs: int
    alpha: float
    trials: int
    dims: list[int]
    schemes: list[str]  # q = 1, q = p, thresholded, then q = p^ρ
    mean_error: list[list[float]]  # (len(schemes), len(dims))
    std_error: list[list[float]]
    fits: list[FitRecord]  # q = 1, q = p, thresholded
    power_fits: list[FitRecord]  # q = p^ρ
    theory_c: list[TheoryConstant | None]  # per scheme, fitted on its curve
    predicted_error: list[list[float] | None]  # per scheme, the overlay

    def headline(self) -> str:
        return "slopes vs d at T=inf: " + "; ".join(
            f"{r.label} {slope_text(r)}" + ("" if r.theory is None else f" (theory {r.theory:+.3f})")
            for r in self.fits + self.power_fits
        )


def plot_schemes(result: SchemesResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 1, (6.5, 4.6))
    ax = axes[0][0]
    for s, label in enumerate(result.schemes):
        band(ax, result.dims, result.mean_error[s], result.std_error[s], label)
        color = ax.lines[-1].get_color()
        record = (result.fits + result.power_fits)[s]
        if record.fit is not None and record.theory is not None:
            ax.plot(
                result.dims,
                [math.exp(record.fit.intercept) * d**record.theory for d in result.dims],
                "--",
                color="k",
                lw=1,
            )
        if result.predicted_error[s] is not None:
            ax.plot(result.dims, positive(result.predicted_error[s]), ":", color=color, lw=1.2)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="d",
        ylabel="generalization error",
        title=f"T = ∞, N={result.num_inputs}, M={result.num_outputs}, α={result.alpha:g}, {result.trials} trials\n"
        "dashed: theory slopes; dotted: p{x: q(x)² d < c‖q‖²}, c fitted per scheme",
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "schemes")


@register(
    "schemes",
    family="scaling",
    config=SchemesConfig,
    plot=plot_schemes,
    summary="T = inf: q = 1, q = p, q = 1{x <= d/8}, q = p^rho vs d, fitted slopes against theory",
    full=lambda: SchemesConfig(trials=100),
    small=lambda: SchemesConfig(trials=2, num_inputs=300, d_range=(10, 300), grid_points=8, rhos=(0.5,)),
)
def run_schemes(config: SchemesConfig, out_dir: Path, *, log=print, progress: bool = True) -> SchemesResult:
    device = resolve_device(config.device)
    task = ZipfAssociations(config.num_inputs, config.num_outputs, config.alpha)
    dims = log_grid(*config.d_range, config.grid_points)
    probs = task.probs()
    log(
        f"schemes: N={task.num_inputs}, M={task.num_outputs}, alpha={task.alpha:g}, T=inf, {len(dims)} d in "
        f"[{dims[0]}, {dims[-1]}], {config.trials} trials"
    )

    flat = torch.stack([torch.ones_like(probs), probs])  # q = 1, q = p
    top = q_threshold(probs, tops(dims, config.top_fraction))  # q = 1{x <= P(d)}, (D, N)
    started = time.perf_counter()
    err = task_errors(
        task, [flat[None, :, None], top[None, None]], dims, config.trials, config, device, progress
    )
    log(f"  computed in {time.perf_counter() - started:.2f} s")
    alpha = task.alpha
    labels = ["q = 1", "q = p", f"q = 1{{x <= d*{config.top_fraction:.3g}}}"]
    theories = [None, -(alpha - 1) / (2 * alpha), -(alpha - 1)]
    fits = [
        report_fit(label, dims, err[:, s], th, config.seed, log)
        for s, (label, th) in enumerate(zip(labels, theories))
    ]
    weights = [flat[0], flat[1], top]
    power_fits = []
    if config.rhos:
        # their own call: the same embeddings, and the three schemes above computed exactly as alone
        powers = torch.stack([q_power(probs, rho) for rho in config.rhos])
        power_err = task_errors(task, powers[None, :, None], dims, config.trials, config, device, progress)
        for k, rho in enumerate(config.rhos):
            # q = p^ρ: lost when x^{−2αρ} d < c Σ p^{2ρ}, i.e. beyond x ∝ d^{1/(2αρ)}, if Σ p^{2ρ} converges
            theory = -(alpha - 1) / (2 * alpha * rho) if 2 * alpha * rho > 1 else None
            power_fits.append(report_fit(f"q = p^{rho:g}", dims, power_err[:, k], theory, config.seed, log))
            labels.append(f"q = p^{rho:g}")
            weights.append(powers[k])
        err = torch.cat([err, power_err], 1)
    theory_c, predicted = [], []
    for label, q, curve in zip(labels, weights, err.mean(0)):
        try:
            c = fit_theory_constant(q, probs, dims, curve)
        except ValueError:
            theory_c.append(None)
            predicted.append(None)
            continue
        theory_c.append(c)
        predicted.append(predicted_error(q, probs, dims, c.c)[0].tolist())
        log(f"  theory p{{x: q(x)^2 d < c |q|^2}} for {label}: {theory_line(c)}")
    mean, std = mean_std(err)
    return SchemesResult(
        task.num_inputs,
        task.num_outputs,
        alpha,
        config.trials,
        dims,
        labels,
        mean,
        std,
        fits,
        power_fits,
        theory_c,
        predicted,
    )


# --------------------------------------------------------------------------------------------
