"""Shared pieces of the scaling-law experiments: grids, field types and checks, the exact errors of
scheme memories on a Zipf task, power-law fits and their figure pieces."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch

from birth.base.runtime import torch_threads
from birth.base.validate import Float, Int, check_int
from birth.memories.scaling_laws import PowerLawFit, TheoryConstant, fit_power_law, memory_errors
from tasks.zipf import ZipfAssociations

# Field types of the scaling configs (`Validated` reads their bounds)
Trials = Annotated[int, Int(2)]  # independent draws (>= 2: the fits bootstrap over them)
NumInputs = Annotated[int, Int(1)]  # N tokens
NumOutputs = Annotated[int, Int(2)]  # M outputs
Alpha = Annotated[float, Float(0.0)]  # Zipf exponent
Fraction = Annotated[float, Float(0.0, 1.0, open_low=True)]  # in (0, 1]


def log_grid(low: float, high: float, count: int) -> list[int]:
    """count log-spaced integers in [low, high], duplicates removed."""
    return sorted(set(np.round(np.logspace(math.log10(low), math.log10(high), count)).astype(int).tolist()))


def tops(dims: list[int], top_fraction: float) -> list[int]:
    """P = d · fraction tokens kept by the thresholded scheme (at least 1)."""
    return [max(1, int(d * top_fraction)) for d in dims]


def check_threads(threads: Any) -> None:
    """--threads: None (torch's choice, or the experiment's default) or an integer >= 1."""
    if threads is not None:
        check_int("--threads", threads)


def check_range(name: str, pair: Any) -> None:
    """Two integers low < high (--d-range, --t-range)."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or pair[0] >= pair[1]:
        raise ValueError(f"{name} must be two integers low < high, got {pair!r}")


def dtype_of(config) -> torch.dtype:
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
            dtype=dtype_of(config),
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


def slope_text(record: FitRecord) -> str:
    if record.fit is None:
        return "no fit"
    return f"{record.fit.slope:+.3f} [{record.fit.ci_low:+.3f}, {record.fit.ci_high:+.3f}]"


def mean_std(errors: torch.Tensor) -> tuple[list, list]:
    """Mean and (unbiased) standard deviation over the trial axis 0."""
    std = errors.std(0) if errors.shape[0] > 1 else torch.zeros_like(errors[0])
    return errors.mean(0).tolist(), std.tolist()


def band(ax, xs, mean, std, label: str, color=None, **kw) -> None:
    """Mean ± one standard deviation over trials."""
    mean, std = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
    (line,) = ax.plot(xs, mean, label=label, color=color, **kw)
    # on log axes mean − std can reach 0: floor the band at a tenth of the mean
    ax.fill_between(xs, np.maximum(mean - std, mean / 10), mean + std, color=line.get_color(), alpha=0.2)


def positive(values) -> np.ndarray:
    """Values for a log axis: zeros become NaN (not drawn) instead of breaking the scale."""
    out = np.asarray(values, dtype=float)
    return np.where(out > 0, out, np.nan)


def theory_line(c: TheoryConstant) -> str:
    spread = (
        f"any c in [{c.c_low:.3g}, {c.c_high:.3g}] fits as well"
        if c.c_high > c.c_low
        else "the best of the grid"
    )
    return f"c = {c.c:.3g} ({spread}), log10 rms gap {c.log10_rms:.3f} over {c.num_points} points"
