"""`toy`: a tiny registered experiment for exercising `birth grid` (and anything else that runs
experiments); a grid spec names it `toy` (or `birth.experiments.theory.toy:toy`).

The computation is real and cheap: the mean and standard deviation of `scale * z` for `n` standard
normal draws z from the seeded generator (seed, 0x70E), so a test can recompute the result exactly.
`fail=True` raises at run time (not in validation), to test how a grid reports a failed point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from birth.base.io import new_figure, save_figure
from birth.base.seeds import generator
from birth.base.validate import Float, Int, Validated
from birth.experiments.common import Seed
from birth.experiments.registry import ExperimentResult, register

TOY_STREAM = 0x70E


@dataclass(frozen=True)
class ToyConfig(Validated):
    n: Annotated[int, Int(2)] = 1000  # number of normal draws
    scale: Annotated[float, Float()] = 1.0  # the draws are scale * N(0, 1) (a finite number)
    seed: Seed = 0  # seeds the draws
    fail: bool = False  # raise at run time (to test failure handling)
    tags: tuple[str, ...] = ()  # free labels copied into the result (tests tuple fields)


@dataclass(frozen=True)
class ToyResult(ExperimentResult):
    mean: float
    std: float
    n: int
    tags: tuple[str, ...]

    def headline(self) -> str:
        return f"mean {self.mean:+.4f}, std {self.std:.4f} over {self.n} draws"


def toy_draws(config: ToyConfig) -> torch.Tensor:
    """The draws of a config (float64), as `run_toy` makes them."""
    z = torch.randn(config.n, generator=generator(config.seed, TOY_STREAM), dtype=torch.float64)
    return config.scale * z


def plot_toy(result: ToyResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 1, (3.0, 2.5))
    ax = axes[0][0]
    ax.errorbar([0], [result.mean], yerr=[result.std], fmt="o")
    ax.set_title("toy: mean ± std")
    return save_figure(fig, out_dir, "toy", log=None)


@register(
    "toy",
    family="theory",
    summary="tiny seeded computation used to test the grid runner",
    config=ToyConfig,
    plot=plot_toy,
    full=lambda: ToyConfig(n=100_000),
    small=lambda: ToyConfig(n=100),
)
def run_toy(config: ToyConfig, out_dir: Path, *, log=print, progress: bool = True) -> ToyResult:
    if config.fail:
        raise RuntimeError(f"toy experiment asked to fail (n={config.n}, seed={config.seed})")
    z = toy_draws(config)
    return ToyResult(mean=float(z.mean()), std=float(z.std()), n=config.n, tags=config.tags)
