"""`order`: the step at which each memory's probe first reaches 0.9, over seeds (paper: W_OV2 → W_KQ2 →
W_KQ1)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Validated
from birth.experiments.common import Seeds, Train, run_seeds, train_runs
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import PAPER_SEEDS, THRESHOLD, paper, quick, tiny
from birth.models.targets import MEMORIES


@dataclass(frozen=True)
class OrderConfig(Validated):
    train: Train = field(default_factory=quick)  # the training run repeated over seeds
    seeds: Seeds = 2  # runs, seeds --seed, --seed + 1, ...
    device: Device = "auto"  # where the runs train (auto: CUDA when present)


@dataclass(frozen=True)
class SeedOrder:
    seed: int
    order: dict[str, int | None]  # first step at which each probe reaches 0.9


@dataclass(frozen=True)
class OrderResult(ExperimentResult):
    crossings: dict[str, list[int | None]]  # per memory, its 0.9-crossing step in each seed
    median: dict[str, float | None]  # per memory, the median over the seeds that reached 0.9
    paper_order_count: int  # seeds with W_OV2 < W_KQ2 < W_KQ1 strictly (ties do not count)
    per_seed: list[SeedOrder]

    def headline(self) -> str:
        return (
            f"order W_OV2 → W_KQ2 → W_KQ1 in {self.paper_order_count}/{len(self.per_seed)} seed(s); "
            "median 0.9-crossing steps " + ", ".join(f"{k} {v}" for k, v in self.median.items())
        )


def paper_order(order: dict[str, int | None]) -> bool:
    """The probes crossed in the paper's order W_OV2 → W_KQ2 → W_KQ1, at distinct steps."""
    steps = [order.get(k) for k in MEMORIES]
    return all(s is not None for s in steps) and steps[0] < steps[1] < steps[2]


def plot_order(result: OrderResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure()
    ax = axes[0][0]
    for i, crossings in enumerate(result.crossings.values()):
        values = [v for v in crossings if v is not None]
        ax.scatter(values, [i] * len(values), s=40, alpha=0.7)
        missing = len(crossings) - len(values)
        if missing:
            # x in axes coordinates: the label stays inside the axes whatever the steps
            ax.text(0.98, i + 0.15, f"{missing} not reached", fontsize=8, ha="right",
                    transform=ax.get_yaxis_transform())  # fmt: skip
    ax.set_yticks(range(len(result.crossings)), list(result.crossings))
    ax.set_ylim(-0.5, len(result.crossings) - 0.5)
    ax.set_xlabel(f"first step with probe >= {THRESHOLD}")
    ax.set_title(f"learning order over {len(result.per_seed)} seed(s)")
    return save_figure(fig, out_dir, "order")


@register(
    "order",
    family="transformer",
    summary="0.9-crossing steps of W_OV2, W_KQ2, W_KQ1 over seeds (paper: W_OV2 → W_KQ2 → W_KQ1)",
    config=OrderConfig,
    plot=plot_order,
    full=lambda: OrderConfig(train=paper(), seeds=PAPER_SEEDS),
    small=lambda: OrderConfig(train=tiny(), seeds=1, device="cpu"),
)
def run_order(config: OrderConfig, out_dir: Path, *, log=print, progress: bool = True) -> OrderResult:
    seeds = run_seeds(config.train, config.seeds)
    for seed in seeds:
        log(f"[order] seed {seed}: {config.train.optim.steps} steps")
    trains, names = [config.train.replace(seed=seed) for seed in seeds], [f"seed{seed}" for seed in seeds]
    runs = train_runs(trains, out_dir, names, device=config.device, progress=progress, log=log)
    per_seed = [SeedOrder(seed, run.order) for seed, run in zip(seeds, runs)]
    crossings = {k: [s.order.get(k) for s in per_seed] for k in MEMORIES}
    median = {
        k: statistics.median(reached) if (reached := [v for v in vs if v is not None]) else None
        for k, vs in crossings.items()
    }
    count = sum(paper_order(s.order) for s in per_seed)
    return OrderResult(crossings=crossings, median=median, paper_order_count=count, per_seed=per_seed)
