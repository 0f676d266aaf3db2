"""landscape: level lines of the loss on a plane of matrices W(γ₀, γ₁) in d = 2, with (S)GD paths at a
small and a large step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from birth.base.io import new_figure, save_figure
from birth.base.seeds import generator, mixed_seed
from birth.base.validate import Float, Floats, Int, Validated
from birth.experiments.common import Seed
from birth.experiments.dynamics.common import (
    CIRCLE_STREAM,
    colormap,
    rounded,
)
from birth.experiments.registry import ExperimentResult, register
from birth.memories import dynamics as dyn
from birth.memories import problem as mp
from tasks.zipf import zipf_probs


@dataclass(frozen=True)
class LandscapeConfig(Validated):
    cosines: Annotated[
        tuple[float, ...], Floats(-1.0, 1.0, open_low=True, open_high=True, allow_empty=True)
    ] = (-0.5, 0.5, 0.95)  # two-token panels: cosine between e_0 and e_1
    p_first: Annotated[float, Float(0.0, 1.0, open_low=True, open_high=True)] = (
        0.75  # p(token 0) of the two-token panels
    )
    lrs: Annotated[tuple[float, ...], Floats(0.0, open_low=True)] = (
        1.0,
        10.0,
    )  # step sizes of the drawn paths (small, large)
    steps: Annotated[int, Int(1)] = 35  # steps of each path (the reference's 35 full-batch epochs)
    batch_size: Annotated[int, Int(0)] = 0  # 0: full batch (the reference); b > 0: SGD on b tokens per step
    extent: Annotated[float, Float(0.0, open_low=True)] = 10.0  # the plane is drawn over [-extent, extent]²
    grid: Annotated[int, Int(5)] = 61  # grid points per axis
    seed_tokens: Annotated[int, Int(0)] = 5  # tokens of the heavy-tailed talk's level lines; 0: none
    seed: Seed = 0  # seeds the seed panel's embeddings and the SGD draws

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.cosines and not self.seed_tokens:
            raise ValueError("--cosines is empty and --seed-tokens is 0: nothing to draw")


@dataclass(frozen=True)
class LandscapePanel:
    title: str
    basis: str  # "memory" (A_k = u_{f*(k)} e_kᵀ) or "diagonal" (A_k = 1_k 1_kᵀ)
    probs: list[float]
    targets: list[int]
    inputs: list[list[float]]  # e_x in R^2
    loss: list  # [i][j] total loss at (γ₀[i], γ₁[j])
    token_loss: list  # [x][i][j]
    paths: list  # [lr][step][2]
    path_loss: list  # [lr][step]
    increases: list[int]  # [lr] steps at which the loss went up along the path


@dataclass(frozen=True)
class LandscapeResult(ExperimentResult):
    gammas: list[float]
    lrs: list[float]
    panels: list[LandscapePanel]

    def headline(self) -> str:
        parts = [
            f"{p.title}: " + ", ".join(f"η={lr:g} {u} ups" for lr, u in zip(self.lrs, p.increases))
            for p in self.panels
        ]
        return "loss increases along the paths — " + "; ".join(parts)


def plot_landscape(result: LandscapeResult, out_dir: Path) -> list[Path]:
    n = len(result.panels)
    fig, axes = new_figure(1, n, (4.2, 4.0))
    g = result.gammas
    path_colors = colormap("coolwarm")
    token_colors = colormap("tab10")
    for ax, panel in zip(axes[0], result.panels):
        loss = np.asarray(panel.loss, dtype=float).T  # contour wants [y][x]
        levels = np.quantile(loss, np.linspace(0.02, 0.98, 14)).tolist()
        ax.contour(g, g, loss, levels=sorted(set(levels)), colors="0.35", linewidths=0.7)
        for x, tl in enumerate(panel.token_loss):
            # one level line per token: where it pays log 2 (its two logits tie for two outputs)
            ax.contour(
                g,
                g,
                np.asarray(tl, dtype=float).T,
                levels=[math.log(2.0)],
                colors=[token_colors(x % 10)],
                linewidths=1.0,
                linestyles="--",
            )
        for k, lr in enumerate(result.lrs):
            path = np.asarray(panel.paths[k], dtype=float)
            inside = (np.abs(path) <= g[-1]).all(-1)
            color = path_colors(0.1 if len(result.lrs) == 1 else 0.1 + 0.8 * k / (len(result.lrs) - 1))
            ax.plot(path[inside, 0], path[inside, 1], "o-", ms=2.5, lw=1.0, color=color, label=f"η = {lr:g}")
        ax.set_xlim(g[0], g[-1])
        ax.set_ylim(g[0], g[-1])
        ax.set_xlabel("γ₀")
        ax.set_ylabel("γ₁")
        ax.set_title(panel.title, fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, out_dir, "landscape")


def _landscape_panel(
    title: str,
    basis_name: str,
    problem: mp.MemoryProblem,
    basis: torch.Tensor,
    gammas: torch.Tensor,
    config: LandscapeConfig,
) -> LandscapePanel:
    loss, per_token = dyn.landscape(problem, basis, gammas, gammas)
    paths, path_loss, increases = [], [], []
    for k, lr in enumerate(config.lrs):
        path = dyn.plane_trajectory(
            problem, basis, lr, config.steps, batch_size=config.batch_size, seed=mixed_seed(config.seed, k)
        )
        along = mp.memory_loss(dyn.plane_matrices(basis, path), problem)
        paths.append(rounded(path, 4))
        path_loss.append(rounded(along, 6))
        increases.append(int((along[1:] > along[:-1]).sum()))
    return LandscapePanel(
        title,
        basis_name,
        problem.probs.tolist(),
        problem.targets.tolist(),
        problem.inputs.tolist(),
        rounded(loss, 4),
        rounded(per_token, 4),
        paths,
        path_loss,
        increases,
    )


@register(
    "landscape",
    family="dynamics",
    summary="level lines of the loss on a plane W(γ₀, γ₁) in d = 2, with (S)GD paths at a small and a large step",
    config=LandscapeConfig,
    plot=plot_landscape,
    full=lambda: LandscapeConfig(grid=201, steps=100),
    small=lambda: LandscapeConfig(cosines=(0.95,), grid=11, steps=5, seed_tokens=3),
)
def run_landscape(
    config: LandscapeConfig, out_dir: Path, *, log=print, progress: bool = True
) -> LandscapeResult:
    c = config
    gammas = torch.linspace(-c.extent, c.extent, c.grid, dtype=torch.float64)
    panels = []
    for cos in c.cosines:
        problem = mp.two_token_problem(cos, c.p_first)
        # W(γ) = γ₀ u₀ e₀ᵀ + γ₁ u₁ e₁ᵀ: the two memories; the margins are γ₀ - c γ₁ and γ₁ - c γ₀
        panels.append(
            _landscape_panel(
                f"n = 2, cos = {cos:g}, p = ({c.p_first:g}, {1 - c.p_first:g})",
                "memory",
                problem,
                dyn.memory_basis(problem),
                gammas,
                c,
            )
        )
    if c.seed_tokens:
        n = c.seed_tokens
        angles = 2 * math.pi * torch.rand(n, generator=generator(c.seed, CIRCLE_STREAM), dtype=torch.float64)
        inputs = torch.stack([angles.cos(), angles.sin()], -1)
        problem = mp.MemoryProblem(
            inputs, torch.eye(2, dtype=torch.float64), zipf_probs(n, 1.0), torch.arange(n) % 2
        )
        panels.append(
            _landscape_panel(
                f"n = {n} on the circle, W on span(1ᵢ1ᵢᵀ)",
                "diagonal",
                problem,
                dyn.diagonal_basis(2),
                gammas,
                c,
            )
        )
    for panel in panels:
        log(
            f"  {panel.title}: "
            + ", ".join(
                f"η={lr:g} final loss {pl[-1]:.4g} ({u} increases)"
                for lr, pl, u in zip(c.lrs, panel.path_loss, panel.increases)
            )
        )
    return LandscapeResult(gammas.tolist(), list(c.lrs), panels)
