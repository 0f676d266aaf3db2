"""sharpness: the top Hessian eigenvalue (HVP power iteration) along training against 2/η: edge of
stability against memory overflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from birth.base.io import new_figure, save_figure
from birth.base.validate import Float, Floats, Int, Ints, Validated
from birth.experiments.common import Seed
from birth.experiments.dynamics.common import (
    Outputs,
    check_outputs,
    colormap,
    descend,
    rounded,
    sphere_problem,
    stacked_problem,
)
from birth.experiments.registry import ExperimentResult, register
from birth.memories import dynamics as dyn
from birth.memories import problem as mp
from training.memories import MemoryRun


def sharpness_along(
    problem: mp.MemoryProblem,
    lr: float | torch.Tensor,
    steps: int,
    *,
    every: int = 1,
    iters: int = 100,
    tol: float = 1e-7,
    batch_size: int = 0,
    seed: int = 0,
) -> tuple[MemoryRun, torch.Tensor, torch.Tensor]:
    """Train (as `train`; `lr` may be a tensor of step sizes) and measure the top Hessian eigenvalue
    of the population loss every `every` steps and at the last, for every problem of the batch at
    once. Returns the trajectory, the measured steps (K,) and the eigenvalues (K, *batch)."""
    lr_t = torch.as_tensor(lr, dtype=problem.inputs.dtype)
    batch = torch.broadcast_shapes(problem.batch_shape, lr_t.shape)
    measured_steps, values = [], []
    state: dict[str, torch.Tensor | None] = {"v": None}

    def measure(step: int, W: torch.Tensor) -> None:
        if step % every and step != steps:
            return
        value, vec = dyn.top_hessian_eigenvalue(
            lambda w: mp.memory_loss(w, problem),
            W,
            batch_dims=len(batch),
            iters=iters,
            tol=tol,
            seed=seed,
            init=state["v"],
        )
        state["v"] = vec
        measured_steps.append(step)
        values.append(value)

    init = problem.zeros().expand(*batch, problem.dim, problem.dim).clone()
    measure(0, init)
    traj = descend(problem, lr_t, steps, batch_size=batch_size, seed=seed, init=init, callback=measure)
    return traj, torch.tensor(measured_steps), torch.stack(values)


@dataclass(frozen=True)
class SharpnessConfig(Validated):
    n_tokens: Annotated[tuple[int, ...], Ints(1)] = (
        3,
        30,
    )  # token counts (reference: 3 usually fits in d = 2, 30 overflows)
    dim: Annotated[int, Int(1)] = 2  # d
    n_outputs: Annotated[int, Int(2)] = 2  # m, f*(x) = x mod m
    outputs: Outputs = "identity"  # output embeddings: orthonormal, or uniform on the sphere
    zipf: Annotated[float, Float(0.0)] = 1.0  # p(x) ∝ (x+1)^-zipf
    lrs: Annotated[tuple[float, ...], Floats(0.0, open_low=True)] = (1.0, 10.0, 30.0, 100.0)  # step sizes η
    steps: Annotated[int, Int(2)] = 400  # full-batch gradient steps
    trials: Annotated[int, Int(1)] = (
        4  # embedding draws per token count (inputs uniform on the circle/sphere)
    )
    every: Annotated[int, Int(1)] = (
        1  # measure the sharpness every this many steps (1: both phases of a 2-cycle)
    )
    power_iters: Annotated[int, Int(1)] = 100  # power-iteration budget per measurement (warm-started)
    power_tol: Annotated[float, Float(0.0, open_low=True)] = (
        1e-4  # stop when every Rayleigh quotient moves by less (relative)
    )
    seed: Seed = 0  # seeds the embeddings (and the power iteration's start)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_outputs(self.outputs, self.n_outputs, self.dim)


@dataclass(frozen=True)
class SharpnessRun:
    n_tokens: int
    trial: int
    lr: float
    fits: bool  # some run of this draw recalls every token at some step: a W storing all of them exists
    steps: list[int]  # measured steps
    sharpness: list[float]
    loss: list[float]  # at every step
    accuracy: list[float]
    late_sharpness: float  # median over the second half
    late_ratio: float  # late_sharpness / (2/η): 1 is the edge of stability
    late_loss: float  # mean loss over the second half
    late_accuracy: float
    spikes: int
    increases: int  # steps at which the loss went up


@dataclass(frozen=True)
class SharpnessResult(ExperimentResult):
    dim: int
    lrs: list[float]
    runs: list[SharpnessRun]
    ratio_overflow: list[float | None]  # [lr] median late ratio over the draws that do not fit
    ratio_fits: list[float | None]  # [lr] over the draws that fit
    n_overflow: int  # draws (n, trial) that do not fit
    n_fits: int

    def headline(self) -> str:
        def row(values: list[float | None]) -> str:
            return ", ".join(
                f"η={lr:g} {'—' if v is None else f'{v:.3g}'}" for lr, v in zip(self.lrs, values)
            )

        return (
            f"late top Hessian eigenvalue × η/2 (1: edge of stability), d={self.dim} — draws that overflow "
            f"({self.n_overflow}): {row(self.ratio_overflow)}; draws that fit ({self.n_fits}): {row(self.ratio_fits)}"
        )


def plot_sharpness(result: SharpnessResult, out_dir: Path) -> list[Path]:
    ns = sorted({r.n_tokens for r in result.runs})
    fig, axes = new_figure(2, len(ns) + 1, (4.4, 3.2))
    cmap = colormap("plasma")
    for j, n in enumerate(ns):
        runs = [r for r in result.runs if r.n_tokens == n and r.trial == 0]
        for k, r in enumerate(runs):
            color = cmap(0.85 * k / max(len(runs) - 1, 1))
            axes[0][j].plot(r.steps, r.sharpness, color=color, lw=0.8, label=f"η = {r.lr:g}")
            axes[0][j].axhline(2.0 / r.lr, color=color, lw=0.9, ls="--")
            axes[1][j].plot(range(len(r.loss)), r.loss, color=color, lw=0.8)
        fits = "fits" if runs and runs[0].fits else "overflows"
        axes[0][j].set_yscale("log")
        # a large step can land where every logit saturates (eigenvalue ~1e-30): keep the edge readable
        axes[0][j].set_ylim(bottom=1e-3 * min(2.0 / lr for lr in result.lrs))
        axes[0][j].set_title(
            f"n = {n}, d = {result.dim}, draw 0 ({fits}): top eigenvalue (--: 2/η)", fontsize=8
        )
        axes[0][j].legend(fontsize=7)
        axes[1][j].set_yscale("log")
        axes[1][j].set_title("loss", fontsize=9)
        axes[1][j].set_xlabel("step")
    ax = axes[0][len(ns)]
    for fits, color, label in ((False, "tab:red", "overflows"), (True, "tab:blue", "fits")):
        runs = [r for r in result.runs if r.fits == fits]
        ax.scatter(
            [r.lr for r in runs],
            [max(r.late_ratio, 1e-6) for r in runs],
            s=12,
            color=color,
            label=label,
            alpha=0.7,
        )
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step size η")
    ax.set_title("late sharpness × η/2, every draw", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1][len(ns)]
    for fits, color in ((False, "tab:red"), (True, "tab:blue")):
        runs = [r for r in result.runs if r.fits == fits]
        ax.scatter([r.lr for r in runs], [r.late_accuracy for r in runs], s=12, color=color, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("step size η")
    ax.set_title("late accuracy", fontsize=9)
    return save_figure(fig, out_dir, "sharpness")


@register(
    "sharpness",
    family="dynamics",
    summary="top Hessian eigenvalue (HVP power iteration) along training vs 2/η: edge of stability vs memory overflow",
    config=SharpnessConfig,
    plot=plot_sharpness,
    full=lambda: SharpnessConfig(
        n_tokens=(3, 5, 10, 30, 100), lrs=(1.0, 3.0, 10.0, 30.0, 100.0, 300.0), steps=2000, trials=16
    ),
    small=lambda: SharpnessConfig(n_tokens=(3, 30), lrs=(1.0, 30.0), steps=20, trials=2, power_iters=30),
)
def run_sharpness(
    config: SharpnessConfig, out_dir: Path, *, log=print, progress: bool = True
) -> SharpnessResult:
    c = config
    lrs = torch.tensor(c.lrs, dtype=torch.float64)[:, None]  # batch (L, R)
    half = c.steps // 2
    runs = []
    for n in c.n_tokens:
        problem = stacked_problem(
            [
                sphere_problem(n, c.dim, c.n_outputs, c.zipf, c.seed, trial, c.outputs)
                for trial in range(c.trials)
            ]
        )
        traj, steps, values = sharpness_along(
            problem, lrs, c.steps, every=c.every, iters=c.power_iters, tol=c.power_tol, seed=c.seed
        )
        # a draw fits if any of its runs recalls every token at some step: that W certifies it
        fits = mp.all_recalled(traj.margins, problem.probs).any(0).any(0)  # (R,)
        late = values[len(values) // 2 :]  # (K/2, L, R)
        for r in range(c.trials):
            for k, lr in enumerate(c.lrs):
                loss = traj.loss[:, k, r]
                late_sharp = float(late[:, k, r].median())
                runs.append(
                    SharpnessRun(
                        n_tokens=n,
                        trial=r,
                        lr=lr,
                        fits=bool(fits[r]),
                        steps=steps.tolist(),
                        sharpness=rounded(values[:, k, r]),
                        loss=rounded(loss),
                        accuracy=rounded(traj.accuracy[:, k, r], 4),
                        late_sharpness=late_sharp,
                        late_ratio=late_sharp * lr / 2.0,
                        late_loss=float(loss[half:].mean()),
                        late_accuracy=float(traj.accuracy[half:, k, r].mean()),
                        spikes=dyn.count_spikes(loss),
                        increases=int((loss[1:] > loss[:-1]).sum()),
                    )
                )
        for k, lr in enumerate(c.lrs):
            ratios = [
                f"{float(late[:, k, r].median()) * lr / 2:.3g}{'' if fits[r] else '*'}"
                for r in range(c.trials)
            ]
            log(f"  n={n:<4d} η={lr:<6g} late sharpness × η/2 per draw (*: overflows): {' '.join(ratios)}")

    def median_ratio(lr: float, fit: bool) -> float | None:
        vals = sorted(r.late_ratio for r in runs if r.lr == lr and r.fits == fit)
        return vals[(len(vals) - 1) // 2] if vals else None

    draws = {(r.n_tokens, r.trial): r.fits for r in runs}
    return SharpnessResult(
        dim=c.dim,
        lrs=list(c.lrs),
        runs=runs,
        ratio_overflow=[median_ratio(lr, False) for lr in c.lrs],
        ratio_fits=[median_ratio(lr, True) for lr in c.lrs],
        n_overflow=sum(not f for f in draws.values()),
        n_fits=sum(draws.values()),
    )
