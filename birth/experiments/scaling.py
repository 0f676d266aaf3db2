"""Scaling laws of associative memories (Cabannes, Dohmatob, Bietti, ICLR 2024; Cabannes, Simsek,
Bietti, ICML 2024): the error of W = Σ_x q(x) u_{f*(x)} e_xᵀ against d and T, storage schemes, SGD.

Experiments (family "scaling"; `birth scaling NAME`):
  - d-and-T: error vs d (several T) and vs T (several d), thresholded scheme, fitted slopes, and the
    theory overlay p{x : q(x)² d < c ‖q‖²} + Σ_x p(x) e^{−T p(x)} with a fitted constant c;
  - heatmap: error over a (d, T) grid for q0 = 1{seen}, q1 = p̂, q = 1{seen >= s} and q = p̂^ρ;
  - schemes: T = ∞, q = 1, q = p, q = 1{x <= d/8} and q = p^ρ vs d, slopes against theory;
  - sgd: SGD on W against the decoupled q update, and the q_γ curves;
  - optimizers: lr x batch x {SGD, Adam} x LayerNorm grid;
  - memory-matrices: u_yᵀ W e_x and W in the (u, e) basis for each scheme and for SGD over training;
  - learned-embeddings: error vs d and vs M with learned E, U against random ones (Proposition 5);
  - per-token-q: the coefficient of u_{f*(x)} e_xᵀ in SGD-trained W against F(n_x), token by token.
The science (schemes, exact errors, fits, theory) is in birth/memories/scaling_laws.py and training/memory_sgd.py;
this module sizes the runs, prints the numbers and draws the figures.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from birth.base.io import new_figure, save_figure
from birth.base.runtime import resolve_device, torch_threads
from birth.base.seeds import check_seed
from birth.base.validate import check_float, check_floats, check_int, check_ints
from birth.experiments.common import Device, check_device
from birth.experiments.registry import ExperimentResult, register
from birth.memories.scaling_laws import (
    PowerLawFit,
    TheoryConstant,
    coefficient_scores,
    draw_embeddings,
    errors_from_scores,
    fit_power_law,
    fit_theory_constant,
    memory_coefficients,
    memory_errors,
    memory_scores_bruteforce,
    predicted_error,
    q_frequency,
    q_power,
    q_seen,
    q_sgd,
    q_threshold,
    scheme_coefficients,
    sgd_scheme_table,
)
from tasks.zipf import ZipfAssociations
from training.memory_sgd import (
    OPTIMIZERS,
    MemoryOptimizer,
    MemoryTrainConfig,
    approximate_q_dynamics,
    sample_batches,
    train_memory,
)

# --------------------------------------------------------------------------------------------
# validation and run settings shared by the scaling and capacity experiments


def log_grid(low: float, high: float, count: int) -> list[int]:
    """count log-spaced integers in [low, high], duplicates removed."""
    return sorted(set(np.round(np.logspace(math.log10(low), math.log10(high), count)).astype(int).tolist()))


def tops(dims: list[int], top_fraction: float) -> list[int]:
    """P = d · fraction tokens kept by the thresholded scheme (at least 1)."""
    return [max(1, int(d * top_fraction)) for d in dims]


def _check_common(config, *, float32: bool = True) -> None:
    check_int("--trials", config.trials, 2)  # the fits bootstrap over trials
    check_seed(config.seed)
    check_device(config.device)
    if float32 and not isinstance(config.float32, bool):
        raise ValueError(f"--float32 must be true or false, got {config.float32!r}")


def _check_threads(config) -> None:
    if config.threads is not None:
        check_int("--threads", config.threads)


def _check_task(config) -> None:
    check_int("--num-inputs", config.num_inputs)
    check_int("--num-outputs", config.num_outputs, 2)
    check_float("--alpha", config.alpha, 0.0)


def _dtype(config) -> torch.dtype:
    return torch.float32 if config.float32 else torch.float64


def task_errors(
    task: ZipfAssociations, weights, dims: list[int], trials: int, config, device: str, progress: bool, **kw
) -> torch.Tensor:
    """Exact errors (R, B, D) of the memories `weights` on the task (memory_errors' "error"), with
    the config's seed, dtype and threads."""
    with torch_threads(config.threads, default=None):
        return memory_errors(
            weights,
            task.targets(),
            task.probs(),
            dims,
            num_trials=trials,
            seed=config.seed,
            num_outputs=task.num_outputs,
            device=device,
            dtype=_dtype(config),
            progress=progress,
            **kw,
        )["error"]


# --------------------------------------------------------------------------------------------
# fits and figure pieces


@dataclass(frozen=True)
class FitRecord:
    label: str
    theory: float | None  # the theory's slope (None: no power-law theory)
    fit: PowerLawFit | None  # None when fewer than 2 points have a non-zero error


def report_fit(
    label: str, xs, errors: torch.Tensor, theory: float | None, seed: int, log, mask=None
) -> FitRecord:
    """Fit a power law with a bootstrap CI over trials, print one line, return the record."""
    try:
        fit = fit_power_law(xs, errors, seed=seed, mask=mask)
    except ValueError as err:
        log(f"  {label}: no fit ({err})")
        return FitRecord(label, theory, None)
    theory_text = "—" if theory is None else f"{theory:+.3f}"
    inside = ""
    if theory is not None:
        inside = "  (theory inside CI)" if fit.ci_low <= theory <= fit.ci_high else "  (theory outside CI)"
    log(
        f"  {label}: slope {fit.slope:+.3f}  95% CI [{fit.ci_low:+.3f}, {fit.ci_high:+.3f}]  "
        f"theory {theory_text}  ({fit.num_points} points){inside}"
    )
    return FitRecord(label, theory, fit)


def _slope_text(record: FitRecord) -> str:
    if record.fit is None:
        return "no fit"
    return f"{record.fit.slope:+.3f} [{record.fit.ci_low:+.3f}, {record.fit.ci_high:+.3f}]"


def _mean_std(errors: torch.Tensor) -> tuple[list, list]:
    """Mean and (unbiased) standard deviation over the trial axis 0."""
    std = errors.std(0) if errors.shape[0] > 1 else torch.zeros_like(errors[0])
    return errors.mean(0).tolist(), std.tolist()


def band(ax, xs, mean, std, label: str, color=None, **kw) -> None:
    """Mean ± one standard deviation over trials."""
    mean, std = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
    (line,) = ax.plot(xs, mean, label=label, color=color, **kw)
    # on log axes mean − std can reach 0: floor the band at a tenth of the mean
    ax.fill_between(xs, np.maximum(mean - std, mean / 10), mean + std, color=line.get_color(), alpha=0.2)


def _positive(values) -> np.ndarray:
    """Values for a log axis: zeros become NaN (not drawn) instead of breaking the scale."""
    out = np.asarray(values, dtype=float)
    return np.where(out > 0, out, np.nan)


def _theory_line(c: TheoryConstant) -> str:
    spread = (
        f"any c in [{c.c_low:.3g}, {c.c_high:.3g}] fits as well"
        if c.c_high > c.c_low
        else "the best of the grid"
    )
    return f"c = {c.c:.3g} ({spread}), log10 rms gap {c.log10_rms:.3f} over {c.num_points} points"


# --------------------------------------------------------------------------------------------
# d-and-T: error vs d (several T) and vs T (several d), thresholded scheme, theory overlay


@dataclass(frozen=True)
class DAndTConfig:
    trials: int = 20  # independent draws of data and embeddings (>= 2: the CIs bootstrap over them)
    num_inputs: int = 1000  # N tokens
    num_outputs: int = 5  # M outputs, f*(x) = x mod M
    alpha: float = 2.0  # Zipf exponent of p(x)
    d_curves: tuple[int, ...] = (10, 20, 50, 100, 200, 1000)  # d of the T-curves; their range is the d-grid's
    t_curves: tuple[int, ...] = (10, 100, 1000, 10_000)  # T of the d-curves; their range is the T-grid's
    grid_points: int = 13  # log-spaced d and T values (added to the curves' values)
    top_fraction: float = 0.125  # thresholded scheme keeps P = d * this (paper text 1/8, its code 1/12)
    float32: bool = False  # compute scores in float32 (faster)
    threads: int | None = None  # torch CPU threads (default: torch's own choice)
    seed: int = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        _check_common(self)
        _check_threads(self)
        _check_task(self)
        check_ints("--d-curves", self.d_curves)
        check_ints("--t-curves", self.t_curves)
        check_int("--grid-points", self.grid_points, 2)
        check_float("--top-fraction", self.top_fraction, 0.0, 1.0, open_low=True)


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
            f"slope vs d (T=inf) {_slope_text(d_fit)} theory {d_fit.theory:+.2f}; vs T (d={max(self.d_curves)}) "
            f"{_slope_text(t_fit)} theory {t_fit.theory:+.2f}"
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
            left.plot(dims, _positive(predicted[k]), ":", color=left.lines[-1].get_color(), lw=1.2)
    band(left, dims, mean[-1], std[-1], "T=inf", color="k")
    if predicted is not None:
        left.plot(dims, _positive(predicted[-1]), "k:", lw=1.2, label="theory, fitted c (dotted)")
    ref = mean[-1, 0]
    left.plot(
        dims, [ref * (d / dims[0]) ** (-(alpha - 1)) for d in dims], "k--", lw=1, label=r"$d^{-\alpha+1}$"
    )
    for d in result.d_curves:
        k = dims.index(d)
        band(right, sizes, mean[:-1, k], std[:-1, k], f"d={d}")
        if predicted is not None:
            right.plot(sizes, _positive(predicted[:-1, k]), ":", color=right.lines[-1].get_color(), lw=1.2)
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
        log(f"  theory p{{x: q(x)^2 d < c |q|^2}} + sum_x p(x) exp(-T p(x)): {_theory_line(theory_c)}")
    except ValueError as err_c:
        log(f"  theory overlay: no fit ({err_c})")
    mean, std = _mean_std(err)
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
# heatmap: error over (d, T) for q0 = 1{seen}, q1 = p̂, q = 1{seen >= s} and q = p̂^ρ


@dataclass(frozen=True)
class HeatmapConfig:
    trials: int = 20  # independent draws of data and embeddings
    num_inputs: int = 100  # N tokens
    num_outputs: int = 5  # M outputs
    alpha: float = 0.5  # Zipf exponent (< 1: no power law, regimes)
    d_range: tuple[int, int] = (10, 1000)  # smallest and largest d
    t_range: tuple[int, int] = (10, 10_000)  # smallest and largest T
    grid_points: int = 30  # log-spaced values of d and of T
    min_counts: tuple[int, ...] = (2,)  # extra schemes q = 1{x seen at least s times}, one per s
    rhos: tuple[float, ...] = (0.5,)  # extra schemes q = p̂^ρ, one per ρ
    float32: bool = False  # compute scores in float32 (faster)
    threads: int | None = None  # torch CPU threads (default: torch's own choice)
    seed: int = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        _check_common(self)
        _check_threads(self)
        _check_task(self)
        for flag, pair in (("--d-range", self.d_range), ("--t-range", self.t_range)):
            check_ints(flag, pair)
            if len(pair) != 2 or pair[0] >= pair[1]:
                raise ValueError(f"{flag} must be two integers low < high, got {pair!r}")
        check_int("--grid-points", self.grid_points, 2)
        if self.min_counts:
            check_ints("--min-counts", self.min_counts, 2)
        check_floats("--rhos", self.rhos, 0.0, allow_empty=True)


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
# schemes at T = ∞


@dataclass(frozen=True)
class SchemesConfig:
    trials: int = 30  # independent embedding draws
    num_inputs: int = 1000  # N tokens
    num_outputs: int = 5  # M outputs
    alpha: float = 2.0  # Zipf exponent
    d_range: tuple[int, int] = (10, 1000)  # smallest and largest d
    grid_points: int = 20  # log-spaced values of d
    top_fraction: float = 0.125  # thresholded scheme keeps P = d * this (paper text 1/8, its code 1/12)
    rhos: tuple[float, ...] = (0.5, 0.75)  # extra schemes q = p^ρ, one per ρ (theory slope −(α−1)/(2αρ))
    float32: bool = False  # compute scores in float32 (faster)
    threads: int | None = None  # torch CPU threads (default: torch's own choice)
    seed: int = 0  # seeds the embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        _check_common(self)
        _check_threads(self)
        _check_task(self)
        check_ints("--d-range", self.d_range)
        if len(self.d_range) != 2 or self.d_range[0] >= self.d_range[1]:
            raise ValueError(f"--d-range must be two integers low < high, got {self.d_range!r}")
        check_int("--grid-points", self.grid_points, 2)
        check_float("--top-fraction", self.top_fraction, 0.0, 1.0, open_low=True)
        check_floats("--rhos", self.rhos, 0.0, open_low=True, allow_empty=True)


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
            f"{r.label} {_slope_text(r)}" + ("" if r.theory is None else f" (theory {r.theory:+.3f})")
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
            ax.plot(result.dims, _positive(result.predicted_error[s]), ":", color=color, lw=1.2)
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
        log(f"  theory p{{x: q(x)^2 d < c |q|^2}} for {label}: {_theory_line(c)}")
    mean, std = _mean_std(err)
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
# sgd: SGD on W vs the decoupled q update (figure 4), q_γ curves (figure 5)


@dataclass(frozen=True)
class SgdConfig:
    trials: int = 10  # runs averaged in the panels after the first (one run)
    steps: int = 2000  # SGD steps (batch 1 or 16)
    float32: bool = False  # train and compute scores in float32 (faster)
    threads: int | None = None  # torch CPU threads (default 1: the small SGD steps are fastest on one)
    seed: int = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        _check_common(self)
        check_int("--steps", self.steps)
        _check_threads(self)


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
    dtype = _dtype(config)
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
            trained = train_memory(task, dim, n, train, seed=config.seed, dtype=dtype, device=device)
            q = approximate_q_dynamics(
                trained["batches"], task.num_inputs, task.num_outputs, lr, trained["steps"].tolist()
            )
            approx = task_errors(task, q[:, :, None], [dim], n, config, device, progress, trial_chunk=n)[
                :, :, 0
            ]
            gap = (trained["error"] - approx).abs().mean(0)
            log(
                f"  {title}: final error SGD {trained['error'][:, -1].mean():.4f} vs approximation "
                f"{approx[:, -1].mean():.4f}; mean |gap| over the curve {gap.mean():.4f}"
            )
            sgd_mean, sgd_std = _mean_std(trained["error"])
            approx_mean, approx_std = _mean_std(approx)
            records.append(
                SgdRun(
                    title,
                    dim,
                    batch,
                    lr,
                    n,
                    trained["steps"].tolist(),
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
# optimizers: lr x batch x {SGD, Adam} x LayerNorm


@dataclass(frozen=True)
class OptimizersConfig:
    trials: int = 3  # seeds per grid point
    samples: int = 10_240  # training samples T (steps = T / batch)
    dims: tuple[int, ...] = (10, 100)  # memory dimensions d
    lrs: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)  # learning rates
    batches: tuple[int, ...] = (16, 64, 256)  # batch sizes
    threads: int | None = None  # torch CPU threads (default 1: the small SGD steps are fastest on one)
    seed: int = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        _check_common(self, float32=False)
        check_ints("--dims", self.dims)
        check_floats("--lrs", self.lrs, 0.0, open_low=True, allow_empty=True)
        if not self.lrs:
            raise ValueError("--lrs must not be empty")
        check_ints("--batches", self.batches)
        check_int("--samples", self.samples, max(self.batches))
        _check_threads(self)


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
                mean, std = _mean_std(torch.stack([table[(d, opt, ln, lr, b)] for lr in result.lrs], 1))
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
            out = train_memory(
                task, d, config.trials, train, seed=config.seed, dtype=torch.float32, device=device
            )
            results[(d, opt, ln, lr, b)] = out["error"][:, -1]
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
# memory-matrices: the stored associations of each scheme and of SGD, next to the target


@dataclass(frozen=True)
class MemoryMatricesConfig:
    num_inputs: int = 100  # N tokens
    num_outputs: int = 5  # M outputs, f*(x) = x mod M
    alpha: float = 0.5  # Zipf exponent (the heatmap's regime)
    d: int = 50  # memory dimension (d < N: the memories interfere)
    samples: int = 1000  # T samples; the schemes count them, SGD (batch 1) takes one step per sample
    top_fraction: float = 1 / 8  # thresholded scheme keeps P = d * this many tokens
    rho: float = 0.5  # the q = p̂^ρ scheme
    min_count: int = 2  # the q = 1{seen >= s} scheme
    lr: float = 1.0  # SGD step γ (also the γ of the q_γ = F(n_x) scheme)
    checkpoints: tuple[int, ...] = (10, 100)  # SGD steps shown besides the last one
    threads: int | None = None  # torch CPU threads (default 1: the small SGD steps are fastest on one)
    seed: int = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        _check_task(self)
        check_seed(self.seed)
        check_device(self.device)
        check_int("--d", self.d)
        check_int("--samples", self.samples)
        check_float("--top-fraction", self.top_fraction, 0.0, 1.0, open_low=True)
        check_float("--rho", self.rho, 0.0)
        check_int("--min-count", self.min_count)
        check_float("--lr", self.lr, 0.0, open_low=True)
        check_ints("--checkpoints", self.checkpoints)
        if max(self.checkpoints) > self.samples:
            raise ValueError(f"--checkpoints must be <= --samples ({self.samples}), got {self.checkpoints}")
        _check_threads(self)


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
    batches = sample_batches(task, 1, config.samples, 1, config.seed)
    counts = torch.bincount(batches.flatten(), minlength=task.num_inputs).to(torch.float64)
    # the embeddings SGD trains with (train_memory draws them from the same seed), float64
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
        trained = train_memory(
            task,
            config.d,
            1,
            train,
            seed=config.seed,
            batches=batches,
            device=device,
            dtype=torch.float64,
        )
    for k, step in enumerate(trained["steps"].tolist()):
        q = trained["coefficients"][0, k]
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
# learned-embeddings: Proposition 5, learned E and U against random ones


@dataclass(frozen=True)
class LearnedEmbeddingsConfig:
    trials: int = 3  # seeds per point
    num_inputs: int = 100  # N tokens
    num_outputs: int = 5  # M outputs of the error-vs-d curve
    alpha: float = 2.0  # Zipf exponent
    dims: tuple[int, ...] = (1, 2, 3, 5, 10, 20, 50, 100)  # d of the error-vs-d curve
    outputs_grid: tuple[int, ...] = (2, 5, 10, 20, 50, 100)  # M of the error-vs-M curve
    d_for_outputs: int = 5  # d of the error-vs-M curve
    optimizer: MemoryOptimizer = "adam"  # the same for both arms (Adam: the seed's best)
    lr: float = 0.01  # step size
    batch_size: int = 16  # samples per step
    steps: int = 2000  # optimization steps (fresh samples each)
    tolerance: float = 0.01  # the capacity gain compares the smallest d reaching error <= this
    threads: int | None = None  # torch CPU threads (default 1: the small steps are fastest on one)
    seed: int = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        _check_task(self)
        check_int("--trials", self.trials)
        check_seed(self.seed)
        check_device(self.device)
        check_ints("--dims", self.dims)
        check_ints("--outputs-grid", self.outputs_grid, 2)
        check_int("--d-for-outputs", self.d_for_outputs)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        check_float("--lr", self.lr, 0.0, open_low=True)
        check_int("--batch-size", self.batch_size)
        check_int("--steps", self.steps)
        check_float("--tolerance", self.tolerance, 0.0, 1.0, open_low=True)
        _check_threads(self)


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
        band(ax, curve.xs, _positive(curve.learned_mean), curve.learned_std, "learned E, U")
        band(ax, curve.xs, _positive(curve.random_mean), curve.random_std, "random E, U (W trained)")
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
                train = MemoryTrainConfig(
                    config.optimizer, config.lr, config.batch_size, config.steps, learn_embeddings=learn
                )
                out = train_memory(task, d, config.trials, train, seed=config.seed, device=device)
                finals[(axis, d, m, learn)] = out["error"][:, -1]

    def curve(axis: str, xs: list[int], key) -> ErrorCurve:
        parts = []
        for learn in (True, False):
            stacked = torch.stack([finals[key(x) + (learn,)] for x in xs], 1)  # (R, X)
            parts += list(_mean_std(stacked))
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
# per-token-q: the coefficient of u_{f*(x)} e_xᵀ in SGD-trained W against F(n_x)


@dataclass(frozen=True)
class PerTokenQConfig:
    trials: int = 1  # independent runs per γ (their tokens are pooled)
    num_inputs: int = 100  # N tokens
    num_outputs: int = 5  # M outputs
    alpha: float = 2.0  # Zipf exponent
    d: int = 200  # memory dimension, >= N so that the coefficients of W are unique
    steps: int = 10_000  # SGD steps of batch 1 from W = 0
    gammas: tuple[float, ...] = (0.1, 1.0, 10.0)  # step sizes γ
    threads: int | None = None  # torch CPU threads (default 1: the small SGD steps are fastest on one)
    seed: int = 0  # seeds data and embeddings
    device: Device = "cpu"  # where to compute

    def __post_init__(self) -> None:
        _check_task(self)
        check_int("--trials", self.trials)
        check_seed(self.seed)
        check_device(self.device)
        check_int("--d", self.d)
        if self.d < max(self.num_inputs, self.num_outputs):
            raise ValueError(
                f"--d must be >= --num-inputs ({self.num_inputs}) for the coefficients of W to be "
                f"unique, got {self.d}"
            )
        check_int("--steps", self.steps)
        if not self.gammas:
            raise ValueError("--gammas must not be empty")
        check_floats("--gammas", self.gammas, 0.0, open_low=True, allow_empty=True)
        _check_threads(self)


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
            out = train_memory(
                task, config.d, config.trials, train, seed=config.seed, device=device, dtype=torch.float64
            )
            q = memory_coefficients(out["memory"], out["inputs"], out["outputs"])  # (R, M, N)
            on_target = q[:, targets, torch.arange(task.num_inputs)]  # (R, N)
            counts = torch.stack(
                [torch.bincount(b.flatten(), minlength=task.num_inputs) for b in out["batches"]]
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
                float(out["error"][:, -1].mean()),
            )
            log(
                f"  γ={gamma:g}: median |Q - F(n_x)| / F over {int(seen.sum())} seen tokens "
                f"{record.median_relative_gap:.3f} (orthonormal F: {record.median_relative_gap_orthonormal:.3f}), "
                f"correlation {corr:.3f}; error {record.error:.4f}"
            )
            per_gamma.append(record)
    return PerTokenQResult(task.num_inputs, M, task.alpha, config.d, config.steps, per_gamma)
