"""Capacity of trained memories against their parameter count (Nichani, Lee, Bietti, ICLR 2025,
section 3): a linear memory W (d x d, d^2 parameters) and an MLP memory h = W ReLU(A e) (d -> m -> d,
2md parameters) trained on N random associations with embeddings on the sphere; N* = the largest N
stored at 100% (and at 99%) accuracy, by the search of birth.memories.capacity_search, per seed.

Claim: N* grows linearly with the parameter count up to log factors. Measured: the log-log slope
of the seed-mean N* against the parameters, per memory, with a bootstrap interval over seeds, the
same slope for N* log N* (the log factor of the linear memory's sharp constant removed), and the
linear memory's N* log N* / d^2 beside the sharp constant 1/2 (Giorlandino, Goldt, Maillard 2026,
for the strict-separation criterion the 100% threshold is). Writes capacity_vs_parameters.png
(N* against parameters for both memories and both thresholds, and N* log N* / d^2 against d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from birth.base.io import new_figure, save_figure
from birth.base.seeds import generator
from birth.base.validate import Float, Int, Ints, Validated
from birth.experiments.common import Positive, Seed
from birth.experiments.registry import ExperimentResult, register
from birth.memories.capacity_search import AssociationEmbeddings
from training.memories import Optimizer
from training.memory_capacity import CAPACITY_TRAINING, MemorySize, memory_capacity

THRESHOLDS = (1.0, 0.99)  # accuracies defining N*: every association, and 99% of them
SHARP_CONSTANT = 0.5  # p_c log p_c / d^2 of a d x d linear memory under strict separation
BOOTSTRAP_STREAM = 0xB007


@dataclass(frozen=True)
class CapacityVsParametersConfig(Validated):
    # d of the linear memory
    linear_dims: Annotated[tuple[int, ...], Ints(2, distinct=True)] = (8, 12, 16, 24)
    mlp_dims: Annotated[tuple[int, ...], Ints(2, distinct=True)] = (8,)  # d of the MLP memory
    mlp_widths: Annotated[tuple[int, ...], Ints(1, distinct=True)] = (8, 16, 32)  # hidden widths m of the MLP
    seeds: Annotated[int, Int(2)] = 3  # searches per memory (>= 2: the slopes bootstrap over them)
    embeddings: AssociationEmbeddings = "sphere"  # input and output embeddings (repeated-basis: N* = d)
    optimizer: Optimizer = "adam"  # the memory trainer's optimizer, on the full batch
    lr: Positive = 0.1  # its step size
    steps: Annotated[int, Int(1)] = 500  # training steps per run (a run: one N, one seed)
    rel_tol: Annotated[float, Float(0.0, 1.0)] = 0.1  # bisection stops when hi - lo <= max(1, rel_tol lo)
    max_size: Annotated[int, Int(2)] = 8192  # largest N tried (N* = max_size is reported as censored)
    bootstrap: Annotated[int, Int(10)] = 1000  # bootstrap resamples of the seeds for the slope intervals
    seed: Seed = 0  # seeds the associations, the initializations and the bootstrap

    def sizes(self) -> list[MemorySize]:
        linear = [MemorySize("linear", d) for d in self.linear_dims]
        return linear + [MemorySize("mlp", d, m) for d in self.mlp_dims for m in self.mlp_widths]


@dataclass(frozen=True)
class SlopeFit:
    slope: float  # log-log slope of the seed-mean N* against the parameter count
    ci_low: float  # 95% bootstrap interval over seeds
    ci_high: float
    log_corrected_slope: float  # the same for N* log N*
    log_corrected_ci: tuple[float, float]
    points: int  # grid points in the fit (censored and zero capacities left out)


@dataclass(frozen=True)
class MemoryPoint:
    kind: str
    dim: int
    width: int
    parameters: int
    capacity: dict[str, list[int]]  # threshold -> N* per seed
    confirmed: dict[str, list[bool]]  # threshold -> whether a confirmation run stored N* too
    censored: bool  # some N* reached max_size
    runs: int  # training runs of the searches


@dataclass(frozen=True)
class CapacityVsParametersResult(ExperimentResult):
    points: list[MemoryPoint]
    fits: dict[str, dict[str, SlopeFit | None]]  # memory kind -> threshold -> fit
    linear_constant: dict[str, list[float]]  # threshold -> mean N* ln N* / d^2 per linear d
    sharp_constant: float

    def headline(self) -> str:
        parts = []
        for kind, by_threshold in self.fits.items():
            fit = by_threshold.get(_key(1.0))
            if fit is not None:
                parts.append(f"{kind} slope {fit.slope:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]")
        const = self.linear_constant.get(_key(1.0), [])
        if const:
            parts.append(
                f"linear N* ln N*/d^2 {const[0]:.2f}..{const[-1]:.2f} (sharp constant {self.sharp_constant})"
            )
        return "capacity vs parameters (100% accuracy): " + ", ".join(parts)


def _key(threshold: float) -> str:
    return f"{threshold:g}"


def _log_slope(params: np.ndarray, values: np.ndarray) -> float:
    return float(np.polyfit(np.log(params), np.log(values), 1)[0])


def fit_slopes(
    params: list[int], capacities: np.ndarray, max_size: int, num_boot: int, seed: int
) -> SlopeFit | None:
    """Slopes of log mean N* (and of log mean N* ln N*) against log parameters; capacities (P, seeds).
    Points with a zero or censored N* are left out; None under 2 points. The bootstrap resamples
    the seeds (the same draw for every point) `num_boot` times from generator(seed, stream)."""
    keep = [i for i in range(len(params)) if capacities[i].min() > 1 and capacities[i].max() < max_size]
    if len(keep) < 2:
        return None
    p, caps = np.array(params, dtype=float)[keep], capacities[keep].astype(float)
    gen = generator(seed, BOOTSTRAP_STREAM)
    picks = [gen_choice(caps.shape[1], gen) for _ in range(num_boot)]

    def slopes(transform) -> tuple[float, float, float]:
        point = _log_slope(p, transform(caps).mean(1))
        boots = [_log_slope(p, transform(caps[:, pick]).mean(1)) for pick in picks]
        return point, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))

    raw = slopes(lambda c: c)
    corrected = slopes(lambda c: c * np.log(c))
    return SlopeFit(raw[0], raw[1], raw[2], corrected[0], (corrected[1], corrected[2]), len(keep))


def gen_choice(n: int, gen: torch.Generator) -> np.ndarray:
    """n indices drawn with replacement from [0, n) by a torch generator."""
    return torch.randint(0, n, (n,), generator=gen).numpy()


def plot_capacity_vs_parameters(result: CapacityVsParametersResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2, (5.0, 4.0))
    left, right = axes[0]
    for kind, marker in (("linear", "o"), ("mlp", "s")):
        pts = [p for p in result.points if p.kind == kind]
        if not pts:
            continue
        for threshold, style in zip(THRESHOLDS, ("-", ":")):
            key = _key(threshold)
            xs = [p.parameters for p in pts]
            ys = [np.mean(p.capacity[key]) for p in pts]
            order = np.argsort(xs)
            left.plot(
                np.array(xs)[order],
                np.array(ys)[order],
                marker + style,
                label=f"{kind}, acc >= {threshold:g}",
            )
    all_params = [p.parameters for p in result.points]
    if all_params:
        grid = np.array([min(all_params), max(all_params)], dtype=float)
        ref = np.mean([np.mean(p.capacity[_key(1.0)]) / p.parameters for p in result.points])
        left.plot(grid, ref * grid, "k--", lw=0.8, label="slope 1")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="trained parameters",
        ylabel="capacity N*",
        title="N* vs parameters",
    )
    left.legend(fontsize=7)
    dims = [p.dim for p in result.points if p.kind == "linear"]
    for threshold in THRESHOLDS:
        values = result.linear_constant.get(_key(threshold), [])
        if values:
            right.plot(dims, values, "o-", label=f"acc >= {threshold:g}")
    right.axhline(result.sharp_constant, color="k", ls="--", lw=0.8, label="sharp constant 1/2")
    right.set(xscale="log", xlabel="d", ylabel="N* ln N* / d²", title="linear memory d x d")
    right.legend(fontsize=7)
    return save_figure(fig, out_dir, "capacity_vs_parameters")


@register(
    "capacity-vs-parameters",
    family="scaling",
    config=CapacityVsParametersConfig,
    plot=plot_capacity_vs_parameters,
    summary="capacity N* of trained linear (d x d) and MLP (d -> m -> d) memories against their parameter count",
    full=lambda: CapacityVsParametersConfig(
        linear_dims=(8, 16, 32, 64, 128),
        mlp_dims=(16, 32, 64),
        mlp_widths=(16, 32, 64, 128, 256),
        seeds=5,
        steps=1500,
        rel_tol=0.02,
        max_size=65536,
    ),
    small=lambda: CapacityVsParametersConfig(
        linear_dims=(4, 8),
        mlp_dims=(4,),
        mlp_widths=(8, 16),
        seeds=2,
        lr=0.3,
        steps=60,
        rel_tol=0.25,
        bootstrap=50,
    ),
)
def run_capacity_vs_parameters(
    config: CapacityVsParametersConfig, out_dir: Path, *, log=print, progress: bool = True
) -> CapacityVsParametersResult:
    training = replace(CAPACITY_TRAINING, optimizer=config.optimizer, lr=config.lr, num_steps=config.steps)
    log(
        f"capacity-vs-parameters: {config.seeds} seeds, {config.embeddings} embeddings, {config.optimizer} "
        f"lr {config.lr} for {config.steps} full-batch steps; N* at accuracy {' and '.join(map(str, THRESHOLDS))}"
    )
    points = []
    for size in config.sizes():
        capacity: dict[str, list[int]] = {_key(t): [] for t in THRESHOLDS}
        confirmed: dict[str, list[bool]] = {_key(t): [] for t in THRESHOLDS}
        censored, runs = False, 0
        for s in range(config.seeds):
            cache: dict[tuple[int, int], float] = {}
            start = None
            for threshold in THRESHOLDS:  # the 99% search starts at the 100% N* and reuses its runs
                found = memory_capacity(
                    size,
                    threshold,
                    seed=config.seed + s,
                    max_size=config.max_size,
                    rel_tol=config.rel_tol,
                    training=training,
                    embeddings=config.embeddings,
                    start=start,
                    cache=cache,
                )
                capacity[_key(threshold)].append(found.capacity)
                confirmed[_key(threshold)].append(found.confirmed)
                censored |= found.censored
                start = max(found.capacity, 1)
            runs += len(cache)
        log(
            f"  {size.kind:6s} {size.label():12s} {size.parameters:6d} parameters: N* "
            + "; ".join(f"acc>={k}: {v}" for k, v in capacity.items())
        )
        points.append(
            MemoryPoint(size.kind, size.dim, size.width, size.parameters, capacity, confirmed, censored, runs)
        )
    fits: dict[str, dict[str, SlopeFit | None]] = {}
    for kind in ("linear", "mlp"):
        pts = [p for p in points if p.kind == kind]
        if pts:
            fits[kind] = {
                _key(t): fit_slopes(
                    [p.parameters for p in pts],
                    np.array([p.capacity[_key(t)] for p in pts]),
                    config.max_size,
                    config.bootstrap,
                    config.seed,
                )
                for t in THRESHOLDS
            }
    linear_constant = {
        _key(t): [
            float(np.mean([n * math.log(n) / p.dim**2 if n > 1 else 0.0 for n in p.capacity[_key(t)]]))
            for p in points
            if p.kind == "linear"
        ]
        for t in THRESHOLDS
    }
    for kind, by_threshold in fits.items():
        for key, fit in by_threshold.items():
            if fit is not None:
                log(
                    f"  {kind} acc>={key}: slope {fit.slope:.3f} [{fit.ci_low:.3f}, {fit.ci_high:.3f}], "
                    f"N* log N* slope {fit.log_corrected_slope:.3f}"
                )
    log(
        f"  linear N* ln N* / d^2 (acc 1): {[round(c, 3) for c in linear_constant[_key(1.0)]]} vs {SHARP_CONSTANT}"
    )
    return CapacityVsParametersResult(points, fits, linear_constant, SHARP_CONSTANT)
