"""margins: orthonormal embeddings, every margin grows like log t for any step size (slope per token,
against the gradient-flow solution and the exact scalar recursion).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from birth.base.io import new_figure, save_figure
from birth.base.seeds import generator
from birth.base.validate import Float, Floats, Int, Validated, check_int
from birth.experiments.common import Seed
from birth.experiments.dynamics.common import (
    ROTATION_STREAM,
    colormap,
    descend,
    null_formatter,
    rounded,
)
from birth.experiments.registry import ExperimentResult, register
from birth.memories import dynamics as dyn
from birth.memories import problem as mp
from tasks.zipf import zipf_probs


@dataclass(frozen=True)
class MarginsConfig(Validated):
    n_tokens: Annotated[int, Int(1)] = 16  # n input tokens, p(x) ∝ (x+1)^-zipf
    n_outputs: Annotated[int, Int(2)] = 4  # m outputs, f*(x) = x mod m
    dim: int = 16  # d >= n and >= m: input and output embeddings orthonormal (seeded rotations)
    zipf: Annotated[float, Float(0.0)] = 1.0  # Zipf exponent of the input law
    lrs: Annotated[tuple[float, ...], Floats(0.0, open_low=True)] = (0.1, 1.0, 10.0, 100.0)  # step sizes η
    steps: Annotated[int, Int(10)] = 10_000  # gradient steps
    batch_size: Annotated[int, Int(0)] = 0  # 0: full batch (population loss); b > 0: SGD on b tokens per step
    fit_from: Annotated[float, Float(0.0, 1.0, open_low=True, open_high=True)] = (
        0.1  # fit margin = a log t + b over t >= fit_from * steps (the last decade)
    )
    records: Annotated[int, Int(10)] = 120  # about this many log-spaced recorded steps
    seed: Seed = 0  # seeds the embeddings (and the SGD draws)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("dim", self.dim, max(self.n_tokens, self.n_outputs))  # orthonormal embeddings


@dataclass(frozen=True)
class MarginsResult(ExperimentResult):
    lrs: list[float]
    probs: list[float]  # p(x)
    n_outputs: int
    steps: list[int]  # recorded steps (log-spaced, 0 first)
    margins: list  # [lr][step][token]
    theory: list  # [lr][step][token]: gradient-flow margin, e^m + (m-1) m = η p m t + 1
    slopes: list[list[float]]  # [lr][token]: d margin / d log t over the fit window
    theory_slopes: list[list[float]]  # the same fit on the gradient-flow margin
    intercepts: list[list[float]]
    plateau: list[list[bool]]  # [lr][token]: first-step margin η p with e^{ηp} > η p m t_end (not yet log)
    recursion_error: float | None  # max |GD margin - scalar recursion| (full batch only)
    fit_from_step: int
    batch_size: int

    def headline(self) -> str:
        pairs = [(s, p) for row, prow in zip(self.slopes, self.plateau) for s, p in zip(row, prow)]
        growing = sorted(s for s, p in pairs if not p)
        text = f"margin slope vs log t over t in [{self.fit_from_step}, {self.steps[-1]}]: "
        if growing:
            text += (
                f"{growing[0]:.3f}–{growing[-1]:.3f} (median {growing[len(growing) // 2]:.3f}) over "
                f"{len(growing)} (η, token) pairs"
            )
        if len(growing) < len(pairs):
            text += f"; {len(pairs) - len(growing)} pairs still on their first-step plateau"
        if self.recursion_error is not None:
            text += f"; GD = scalar recursion to {self.recursion_error:.1e}"
        return text


def plot_margins(result: MarginsResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 3, (4.6, 3.6))
    steps = np.asarray(result.steps[1:], dtype=float)
    cmap = colormap("viridis")
    n = len(result.probs)
    for ax, k in zip(axes[0][:2], (0, len(result.lrs) - 1)):
        m = np.asarray(result.margins[k], dtype=float)[1:]
        th = np.asarray(result.theory[k], dtype=float)[1:]
        for x in range(n):
            color = cmap(x / max(n - 1, 1))
            ax.plot(steps, m[:, x], color=color, lw=1.2)
            if result.batch_size == 0:
                ax.plot(steps, th[:, x], color=color, lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.axvline(result.fit_from_step, color="0.6", lw=0.8, ls="--")
        ax.set_xlabel("step t")
        ax.set_ylabel("margin of token x")
        ax.set_title(f"η = {result.lrs[k]:g}  (dark: frequent; dotted: gradient flow)", fontsize=9)
    ax = axes[0][2]
    for k, lr in enumerate(result.lrs):
        ax.plot(result.probs, result.slopes[k], "o-", ms=3, label=f"η = {lr:g}")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(null_formatter())
    ax.set_xlabel("token frequency p(x)")
    ax.set_ylabel("slope of margin vs log t")
    ax.set_title("fitted slope per token (theory: 1)", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "margins")


@register(
    "margins",
    family="dynamics",
    summary="orthogonal embeddings: every margin grows like log t for any step size (slope per token)",
    config=MarginsConfig,
    plot=plot_margins,
    full=lambda: MarginsConfig(
        n_tokens=64,
        n_outputs=8,
        dim=64,
        steps=1_000_000,
        records=300,
        lrs=(0.01, 0.1, 1.0, 10.0, 100.0, 1000.0),
    ),
    small=lambda: MarginsConfig(n_tokens=6, n_outputs=3, dim=6, steps=400, records=30, lrs=(1.0, 10.0)),
)
def run_margins(config: MarginsConfig, out_dir: Path, *, log=print, progress: bool = True) -> MarginsResult:
    c = config
    inputs = mp.orthonormal_embeddings(c.n_tokens, c.dim, generator(c.seed, ROTATION_STREAM, 0))
    outputs = mp.orthonormal_embeddings(c.n_outputs, c.dim, generator(c.seed, ROTATION_STREAM, 1))
    problem = mp.MemoryProblem(
        inputs, outputs, zipf_probs(c.n_tokens, c.zipf), torch.arange(c.n_tokens) % c.n_outputs
    )
    record = dyn.log_spaced_steps(c.steps, c.records)
    lrs = torch.tensor(c.lrs, dtype=torch.float64)
    # every η at once (W has a leading η dimension); SGD draws are shared by the step sizes
    traj = descend(problem, lrs, c.steps, batch_size=c.batch_size, seed=c.seed, eval_steps=record)
    margins = traj.margins.permute(1, 0, 2)  # (L, S, n)
    fit_from_step = max(1, int(round(c.fit_from * c.steps)))
    slopes, theory_slopes, intercepts, theory = [], [], [], []
    for k, lr in enumerate(c.lrs):
        th = torch.stack(
            [dyn.orthogonal_margin_theory(traj.steps, lr, float(p), c.n_outputs) for p in problem.probs], -1
        )
        fits = [dyn.fit_log_growth(traj.steps, margins[k, :, x], fit_from_step) for x in range(c.n_tokens)]
        th_fits = [dyn.fit_log_growth(traj.steps, th[:, x], fit_from_step) for x in range(c.n_tokens)]
        slopes.append([f.slope for f in fits])
        intercepts.append([f.intercept for f in fits])
        theory_slopes.append([f.slope for f in th_fits])
        theory.append(th)
        log(
            f"  η={lr:<8g} slopes (frequent → rare): "
            + " ".join(f"{s:.3f}" for s in slopes[-1])
            + f"   gradient flow: {min(theory_slopes[-1]):.3f}"
            f"–{max(theory_slopes[-1]):.3f}"
        )
    recursion_error = None
    if c.batch_size == 0:
        exact = dyn.orthogonal_margin_recursion(
            c.steps, lrs[:, None], problem.probs, c.n_outputs
        )  # (T+1, L, n)
        recursion_error = float((exact[traj.steps] - traj.margins).abs().max())
    rate = lrs[:, None] * problem.probs * c.n_outputs  # η p m
    plateau = (lrs[:, None] * problem.probs > torch.log(rate * c.steps)).tolist()
    return MarginsResult(
        lrs=list(c.lrs),
        probs=problem.probs.tolist(),
        n_outputs=c.n_outputs,
        steps=traj.steps.tolist(),
        margins=rounded(margins),
        theory=rounded(torch.stack(theory)),
        slopes=slopes,
        theory_slopes=theory_slopes,
        intercepts=intercepts,
        plateau=plateau,
        recursion_error=recursion_error,
        fit_from_step=fit_from_step,
        batch_size=c.batch_size,
    )
