"""Capacity of linear and non-linear associative memories (birth/memories/hopfield.py): recall against the
number of stored associations, the capacity n*(d), and its growth against the theory d, d / log d,
exp(c d) (family "capacity"; `birth capacity`).

Writes capacity.png (recall curves) and capacity_summary.png (n*(d) with theory curves, and the
cost side: parameters stored at capacity), with PDFs. The science (recall, capacity, growth fits
with bootstrap intervals, theory exponents and costs) is in birth/memories/hopfield.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device, resolve_device
from birth.base.seeds import generator
from birth.base.validate import Choices, Float, Int, Ints, Validated
from birth.experiments.common import Seed
from birth.experiments.registry import ExperimentResult, register
from birth.memories.hopfield import (
    MEMORIES,
    POLYNOMIAL,
    GrowthFit,
    Memory,
    RecallSetup,
    cost_per_query,
    fit_growth_with_ci,
    recall_curves,
    size_grid,
    theory_capacity,
    theory_exponent,
)


@dataclass(frozen=True)
class CapacityConfig(Validated):
    memories: Annotated[tuple[Memory, ...], Choices(MEMORIES)] = MEMORIES  # which memories to measure
    trials: Annotated[int, Int(2)] = 8  # independent draws (>= 2: the growth CI bootstraps over them)
    queries: Annotated[int, Int(1)] = 256  # queried associations per trial
    delta: Annotated[float, Float(0.0, 0.5, open_high=True)] = (
        0.1  # fraction of flipped bits in binary queries
    )
    beta: Annotated[float, Float(0.0, open_low=True)] = 0.25  # softmax inverse temperature
    # ReLU threshold η, in [0, 1) (the theory rate is −½ ln(1 − η²))
    eta: Annotated[float, Float(0.0, 1.0, open_high=True)] = 0.5
    outputs: Annotated[int, Int(2)] = 2  # number of classes M of the class memories
    threshold: Annotated[float, Float(0.0, 1.0, open_low=True)] = 0.99  # recall defining the capacity
    # d of the linear and Hopfield memories (d / log d needs d >= 2)
    polynomial_dims: Annotated[tuple[int, ...], Ints(2)] = (32, 64, 128, 256, 512)
    polynomial_max_size: Annotated[int, Int(1)] = 1024  # largest n tried for them
    exponential_dims: Annotated[tuple[int, ...], Ints(1)] = (
        8,
        12,
        16,
        20,
        24,
        28,
    )  # d of the relu, softmax, nearest memories
    exponential_max_size: Annotated[int, Int(1)] = 8192  # largest n tried for them
    seed: Seed = 0  # seeds the patterns and the bootstrap
    device: Device = "cpu"  # where to compute

    def grids(self, memory: str) -> tuple[list[int], list[int]]:
        """(dims, sizes) of a memory: polynomial ones need large d, exponential ones large n."""
        if memory in POLYNOMIAL:
            return list(self.polynomial_dims), size_grid(self.polynomial_max_size)
        return list(self.exponential_dims), size_grid(self.exponential_max_size)


@dataclass(frozen=True)
class MemoryCapacity:
    dims: list[int]
    sizes: list[int]
    capacity: list[int]  # n*(d); sizes[-1] means at least that many
    theory_form: str
    theory_exponent: float
    theory_what: str  # what the exponent is (log-log slope, or rate c of exp(c d))
    fit: GrowthFit | None
    costs: list[dict[str, float]]  # parameters and multiply-adds per query at n*(d)
    mean_recall: list[list[float]]  # (len(dims), len(sizes)); NaN where the sweep stopped


@dataclass(frozen=True)
class CapacityResult(ExperimentResult):
    threshold: float
    delta: float
    eta: float
    memories: dict[str, MemoryCapacity]

    def headline(self) -> str:
        parts = []
        for name, m in self.memories.items():
            slope = "no fit" if m.fit is None else f"{m.fit.slope:+.3f}"
            parts.append(f"{name} {slope} (theory {m.theory_exponent:+.3f})")
        return "capacity growth exponents: " + ", ".join(parts)


def plot_capacity(result: CapacityResult, out_dir: Path) -> list[Path]:
    names = list(result.memories)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = new_figure(rows, cols, (4.3, 3.4))
    flat = [ax for row in axes for ax in row]
    for ax, name in zip(flat, names):
        rec = result.memories[name]
        for d, row in zip(rec.dims, rec.mean_recall):
            ax.plot(rec.sizes, [np.nan if v is None else v for v in row], label=f"d={d}")
        ax.axhline(result.threshold, color="k", lw=0.8, ls=":")
        ax.set(xscale="log", xlabel="stored associations n", ylabel="recall", title=name, ylim=(0, 1.02))
        ax.legend(fontsize=6)
    for ax in flat[len(names) :]:
        ax.axis("off")
    paths = save_figure(fig, out_dir, "capacity")

    summary, axes = new_figure(1, 2, (5.5, 4.2))
    left, right = axes[0]
    for name in names:
        rec = result.memories[name]
        (line,) = left.plot(rec.dims, [max(n, 0.5) for n in rec.capacity], "o-", label=name)
        theory = [theory_capacity(name, d, result.delta, result.eta)[1] for d in rec.dims]
        ok = [(t, n) for t, n in zip(theory, rec.capacity) if 0 < n < rec.sizes[-1]]
        if ok:  # theory curve up to a constant, matched in log to the measured points
            scale = math.exp(np.mean([math.log(n / t) for t, n in ok]))
            left.plot(
                rec.dims,
                [scale * t for t in theory],
                "--",
                color=line.get_color(),
                lw=1,
                label=f"∝ {rec.theory_form}",
            )
        right.plot(
            [max(n, 1) for n in rec.capacity],
            [c["parameters"] for c in rec.costs],
            "o-",
            color=line.get_color(),
            label=name,
        )
    left.set(xscale="log", yscale="log", xlabel="d", ylabel=f"capacity n* (recall >= {result.threshold})")
    left.legend(fontsize=6, ncol=2)
    right.set(
        xscale="log",
        yscale="log",
        xlabel="capacity n*",
        ylabel="parameters stored",
        title="cost side: parameters at capacity",
    )
    right.legend(fontsize=7)
    return paths + save_figure(summary, out_dir, "capacity_summary")


@register(
    "capacity",
    family="capacity",
    config=CapacityConfig,
    plot=plot_capacity,
    summary="recall vs stored associations and capacity n*(d) of linear, Hopfield, softmax, ReLU, nearest memories",
    full=lambda: CapacityConfig(
        trials=32,
        queries=1024,
        polynomial_dims=(32, 64, 128, 256, 512, 1024),
        polynomial_max_size=2048,
        exponential_dims=(8, 12, 16, 20, 24, 28, 32, 36),
        exponential_max_size=65536,
    ),
    small=lambda: CapacityConfig(
        memories=("linear", "nearest"),
        trials=2,
        queries=32,
        polynomial_dims=(16, 32, 64),
        polynomial_max_size=128,
        exponential_dims=(8, 12, 16),
        exponential_max_size=512,
    ),
)
def run_capacity(
    config: CapacityConfig, out_dir: Path, *, log=print, progress: bool = True
) -> CapacityResult:
    device = resolve_device(config.device)
    log(
        f"capacity: recall >= {config.threshold} of exactly retrieved associations; {config.trials} trials x "
        f"{config.queries} queries; binary queries with delta={config.delta} flipped bits; softmax "
        f"beta={config.beta}; relu eta={config.eta}; class memories with M={config.outputs}"
    )
    # one bootstrap generator shared by the memories in order (as the figure has always drawn it)
    boot = generator(config.seed)
    records = {}
    for memory in config.memories:
        dims, sizes = config.grids(memory)
        setup = RecallSetup(
            memory,
            dims,
            sizes,
            num_trials=config.trials,
            num_queries=config.queries,
            num_outputs=config.outputs,
            delta=config.delta,
            beta=config.beta,
            eta=config.eta,
            seed=config.seed,
        )
        curves = recall_curves(setup, device=device, progress=progress, threshold=config.threshold)
        recall = curves["recall"]
        capacities, fit = fit_growth_with_ci(memory, dims, sizes, recall, config.threshold, boot)
        form = theory_capacity(memory, dims[0], config.delta, config.eta)[0]
        exponent, what = theory_exponent(memory, dims, config.delta, config.eta)
        # auto-associative cost: the number of sign updates run at n = n*(d)
        at_capacity = [sizes.index(n) if n in sizes else 0 for n in capacities]
        costs = [
            cost_per_query(memory, d, max(n, 1), config.outputs, int(curves["iterations"][a, at_capacity[a]]))
            for a, (d, n) in enumerate(zip(dims, capacities))
        ]
        log(
            f"  {memory:13s} n*(d) = "
            + ", ".join(f"{d}:{n}{'+' if n >= sizes[-1] else ''}" for d, n in zip(dims, capacities))
        )
        if fit is not None:
            log(
                f"  {'':13s} {what}: {fit.slope:+.3f}  95% CI [{fit.ci_low:+.3f}, {fit.ci_high:+.3f}]  "
                f"theory {exponent:+.3f} ({form})"
            )
        log(
            f"  {'':13s} at d={dims[-1]}: {costs[-1]['parameters']:.0f} parameters, "
            f"{costs[-1]['flops']:.0f} flops per query for n*={capacities[-1]}"
        )
        records[memory] = MemoryCapacity(
            dims, sizes, capacities, form, exponent, what, fit, costs, recall.nanmean(0).tolist()
        )
    return CapacityResult(config.threshold, config.delta, config.eta, records)
