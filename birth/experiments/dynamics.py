"""Gradient dynamics of associative memories (*Learning Associative Memories with Gradient Descent*,
Cabannes, Simsek, Bietti, ICML 2024; seed talks 000 and 002).

Experiments (family "dynamics"; `birth dynamics NAME`):
  - margins: orthogonal embeddings, margins grow like log t for every step size (slope per token);
  - spikes: correlated embeddings + imbalance + large steps: oscillating, spiking losses, and the
    steps to 100% accuracy against η;
  - landscape: level lines of the loss on a plane of matrices W(γ₀, γ₁), with (S)GD paths;
  - sharpness: top Hessian eigenvalue along training against 2/η (edge of stability);
  - forgetting: per-token recall over time, small against large η;
  - phase-diagram: first step at accuracy 1 over (cosine, imbalance, η) of the two-token problem;
  - underparameterized: d < N, error against steps and its best early-stopping point;
  - transformer-wo2: the birth transformer with only W_O² trained at η in [20, 200] (per-token
    margins of the W_OV² memory), and every trained matrix at the same steps (loss spikes).
The science is in birth/memories/dynamics.py; this module sizes the runs, prints the numbers and draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from birth.base.io import new_figure, save_figure
from birth.base.seeds import check_seed, generator, mixed_seed
from birth.base.validate import check_float, check_floats, check_int, check_ints
from birth.experiments.registry import ExperimentResult, register
from birth.memories import dynamics as dyn

LOG2_3 = math.log2(3.0)  # Zipf exponent giving p = (0.75, 0.25) on two tokens (the reference's p)

# generator streams (seed, STREAM, ...) of the embedding draws
ROTATION_STREAM = 0xE0
SPHERE_STREAM = 0xE1
CIRCLE_STREAM = 0xE2


# --------------------------------------------------------------------------------------------
# validation: messages name the command-line flag


def _r(values: torch.Tensor, digits: int = 6) -> list:
    """Nested lists rounded to `digits` significant digits for the JSON (curves of thousands of
    points stay readable; a loss of 1e-30 keeps its value, inf and nan pass through)."""
    x = values.double()
    finite = torch.isfinite(x) & (x != 0)
    magnitude = torch.where(finite, torch.floor(torch.log10(x.abs().clamp_min(1e-300))), torch.zeros_like(x))
    scale = torch.pow(10.0, digits - 1 - magnitude)
    return torch.where(finite, torch.round(x * scale) / scale, x).tolist()


def _step_text(step: int | None) -> str:
    return "never" if step is None else str(step)


# --------------------------------------------------------------------------------------------
# 1. margins


@dataclass(frozen=True)
class MarginsConfig:
    n_tokens: int = 16  # n input tokens, p(x) ∝ (x+1)^-zipf
    n_outputs: int = 4  # m outputs, f*(x) = x mod m
    dim: int = 16  # d >= n and >= m: input and output embeddings orthonormal (seeded rotations)
    zipf: float = 1.0  # Zipf exponent of the input law
    lrs: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)  # step sizes η
    steps: int = 10_000  # gradient steps
    batch_size: int = 0  # 0: full batch (population loss); b > 0: SGD on b tokens per step
    fit_from: float = 0.1  # fit margin = a log t + b over t >= fit_from * steps (the last decade)
    records: int = 120  # about this many log-spaced recorded steps
    seed: int = 0  # seeds the embeddings (and the SGD draws)

    def __post_init__(self) -> None:
        check_int("n_tokens", self.n_tokens, 1)
        check_int("n_outputs", self.n_outputs, 2)
        check_int("dim", self.dim, max(self.n_tokens, self.n_outputs))
        check_float("zipf", self.zipf, 0.0)
        check_floats("lrs", self.lrs, 0.0, open_low=True)
        check_int("steps", self.steps, 10)
        check_int("batch_size", self.batch_size, 0)
        check_float("fit_from", self.fit_from, 0.0, 1.0, open_low=True, open_high=True)
        check_int("records", self.records, 10)
        check_seed(self.seed)


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
    cmap = _colormap("viridis")
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
    ax.xaxis.set_minor_formatter(_null_formatter())
    ax.set_xlabel("token frequency p(x)")
    ax.set_ylabel("slope of margin vs log t")
    ax.set_title("fitted slope per token (theory: 1)", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "margins")


def _null_formatter():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def _colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


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
    inputs = dyn.orthonormal_embeddings(c.n_tokens, c.dim, generator(c.seed, ROTATION_STREAM, 0))
    outputs = dyn.orthonormal_embeddings(c.n_outputs, c.dim, generator(c.seed, ROTATION_STREAM, 1))
    problem = dyn.MemoryProblem(
        inputs, outputs, dyn.zipf_probs(c.n_tokens, c.zipf), torch.arange(c.n_tokens) % c.n_outputs
    )
    record = dyn.log_spaced_steps(c.steps, c.records)
    lrs = torch.tensor(c.lrs, dtype=torch.float64)
    # every η at once (W has a leading η dimension); SGD draws are shared by the step sizes
    traj = dyn.train(problem, lrs, c.steps, batch_size=c.batch_size, seed=c.seed, record_steps=record)
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
        margins=_r(margins),
        theory=_r(torch.stack(theory)),
        slopes=slopes,
        theory_slopes=theory_slopes,
        intercepts=intercepts,
        plateau=plateau,
        recursion_error=recursion_error,
        fit_from_step=fit_from_step,
        batch_size=c.batch_size,
    )


# --------------------------------------------------------------------------------------------
# 2. oscillations and loss spikes


def _correlated_problem(n: int, m: int, cosines: torch.Tensor, zipf: float) -> dyn.MemoryProblem:
    """n inputs with pairwise cosine c (one problem per cosine, leading dimension), outputs the first
    m basis vectors of R^n (U = I for n = m), p ∝ (x+1)^-zipf, f*(x) = x mod m."""
    inputs = torch.stack([dyn.correlated_embeddings(n, float(c)) for c in cosines])
    return dyn.MemoryProblem(
        inputs, torch.eye(n, dtype=torch.float64)[:m], dyn.zipf_probs(n, zipf), torch.arange(n) % m
    )


@dataclass(frozen=True)
class SpikesConfig:
    n_tokens: int = 2  # n input tokens (embeddings in R^n with equal pairwise cosines)
    n_outputs: int = 2  # m outputs (the first m basis vectors), f*(x) = x mod m
    cosines: tuple[float, ...] = (-0.5, 0.5, 0.95)  # cosine between input embeddings (reference values)
    zipf: float = LOG2_3  # p ∝ (x+1)^-zipf; the default gives p = (0.75, 0.25) on two tokens
    lrs: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # step sizes η
    steps: int = 1000  # gradient steps
    batch_size: int = 0  # 0: full batch (the reference); b > 0: SGD on b tokens per step
    spike_factor: float = 2.0  # a spike: the loss above spike_factor × its running minimum
    spike_floor: float = 1e-3  # ... and above this absolute level
    plot_steps: int = 60  # steps drawn and stored as curves
    seed: int = 0  # seeds the SGD draws

    def __post_init__(self) -> None:
        check_int("n_tokens", self.n_tokens, 2)
        check_int("n_outputs", self.n_outputs, 2)
        if self.n_outputs > self.n_tokens:
            raise ValueError(f"--n-outputs must be <= --n-tokens (outputs live in R^n), got {self.n_outputs}")
        if not isinstance(self.cosines, tuple) or not self.cosines:
            raise ValueError("--cosines must be a non-empty list")
        for cos in self.cosines:
            check_float("cosines", cos, -1.0 / (self.n_tokens - 1), 1.0, open_low=True, open_high=True)
        check_float("zipf", self.zipf, 0.0)
        check_floats("lrs", self.lrs, 0.0, open_low=True)
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 0)
        check_float("spike_factor", self.spike_factor, 1.0, open_low=True)
        check_float("spike_floor", self.spike_floor, 0.0)
        check_int("plot_steps", self.plot_steps, 1)
        check_seed(self.seed)


@dataclass(frozen=True)
class SpikesResult(ExperimentResult):
    cosines: list[float]
    lrs: list[float]
    probs: list[float]
    first_perfect: list[list[int | None]]  # [cosine][lr]: first step at accuracy 1
    settled: list[list[int | None]]  # [cosine][lr]: first step from which accuracy stays 1
    spikes: list[list[int]]  # [cosine][lr]: count_spikes of the loss curve
    increases: list[list[int]]  # [cosine][lr]: steps at which the loss went up
    max_loss: list[list[float]]  # [cosine][lr]: largest loss after step 0
    final_loss: list[list[float]]
    loss: list  # [cosine][lr][step], the first plot_steps steps
    accuracy: list  # [cosine][lr][step]

    def headline(self) -> str:
        k = len(self.cosines) - 1
        parts = [
            f"η={lr:g}: {_step_text(st)}" + (f" (first {f}, {sp} spikes)" if sp or f != st else "")
            for lr, f, st, sp in zip(self.lrs, self.first_perfect[k], self.settled[k], self.spikes[k])
        ]
        return f"cos {self.cosines[k]:g}, steps until accuracy stays 100%: " + ", ".join(parts)


def plot_spikes(result: SpikesResult, out_dir: Path) -> list[Path]:
    n_cos = len(result.cosines)
    fig, axes = new_figure(2, n_cos + 1, (3.8, 3.0))
    cmap = _colormap("plasma")
    for j, cos in enumerate(result.cosines):
        for k, lr in enumerate(result.lrs):
            color = cmap(0.9 * k / max(len(result.lrs) - 1, 1))
            loss = result.loss[j][k]
            axes[0][j].plot(range(len(loss)), loss, color=color, lw=1.1, label=f"η = {lr:g}")
            axes[1][j].plot(range(len(loss)), result.accuracy[j][k], color=color, lw=1.1)
        axes[0][j].set_yscale("log")
        axes[0][j].set_title(f"cos(e₀, e₁) = {cos:g}: loss", fontsize=9)
        axes[1][j].set_title("accuracy Σ p(x) 1{recalled}", fontsize=9)
        axes[1][j].set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    ax = axes[0][n_cos]
    horizon = 2 * max((s for row in result.first_perfect for s in row if s is not None), default=1)
    for j, cos in enumerate(result.cosines):
        ys = [horizon if s is None else s for s in result.first_perfect[j]]
        (line,) = ax.plot(result.lrs, ys, "o-", ms=3, label=f"cos {cos:g}")
        ys = [horizon if s is None else s for s in result.settled[j]]
        ax.plot(result.lrs, ys, "s--", ms=3, color=line.get_color(), lw=0.9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step size η")
    ax.set_title(f"accuracy 1: first step (—), for good (--); never: {horizon}", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1][n_cos]
    for j, cos in enumerate(result.cosines):
        ax.plot(result.lrs, result.spikes[j], "o-", ms=3, label=f"cos {cos:g}")
    ax.set_xscale("log")
    ax.set_xlabel("step size η")
    ax.set_title("loss spikes", fontsize=9)
    return save_figure(fig, out_dir, "spikes")


@register(
    "spikes",
    family="dynamics",
    summary="correlated embeddings + imbalance + large η: oscillating, spiking losses; steps to 100% accuracy vs η",
    config=SpikesConfig,
    plot=plot_spikes,
    full=lambda: SpikesConfig(
        cosines=(-0.5, 0.5, 0.9, 0.95, 0.99), steps=100_000, lrs=tuple(10.0 ** (k / 4) for k in range(-8, 13))
    ),
    small=lambda: SpikesConfig(cosines=(0.95,), lrs=(1.0, 10.0), steps=40, plot_steps=20),
)
def run_spikes(config: SpikesConfig, out_dir: Path, *, log=print, progress: bool = True) -> SpikesResult:
    c = config
    problem = _correlated_problem(c.n_tokens, c.n_outputs, torch.tensor(c.cosines), c.zipf)
    lrs = torch.tensor(c.lrs, dtype=torch.float64)[:, None]  # batch (L, C)
    traj = dyn.train(problem, lrs, c.steps, batch_size=c.batch_size, seed=c.seed)
    perfect = dyn.all_recalled(traj.margins, problem.probs)  # (S, L, C)
    first, settled, spikes, increases, max_loss, final_loss = ([] for _ in range(6))
    for j, cos in enumerate(c.cosines):
        rows = [[] for _ in range(6)]
        for k in range(len(c.lrs)):
            loss = traj.loss[:, k, j]
            rows[0].append(dyn.first_step_at(traj.steps, perfect[:, k, j].double(), 1.0))
            rows[1].append(dyn.first_step_at(traj.steps, perfect[:, k, j].double(), 1.0, stays=True))
            rows[2].append(dyn.count_spikes(loss, c.spike_factor, c.spike_floor))
            rows[3].append(int((loss[1:] > loss[:-1]).sum()))
            rows[4].append(float(loss[1:].max()))
            rows[5].append(float(loss[-1]))
        for dest, row in zip((first, settled, spikes, increases, max_loss, final_loss), rows):
            dest.append(row)
        log(
            f"  cos {cos:g}: "
            + "; ".join(
                f"η={lr:g} first {_step_text(f)} settled {_step_text(s)} spikes {sp} ups {u}"
                for lr, f, s, sp, u in zip(c.lrs, rows[0], rows[1], rows[2], rows[3])
            )
        )
    keep = min(c.plot_steps, c.steps) + 1
    return SpikesResult(
        cosines=list(c.cosines),
        lrs=list(c.lrs),
        probs=problem.probs.tolist(),
        first_perfect=first,
        settled=settled,
        spikes=spikes,
        increases=increases,
        max_loss=max_loss,
        final_loss=final_loss,
        loss=_r(traj.loss[:keep].permute(2, 1, 0), 6),
        accuracy=_r(traj.accuracy[:keep].permute(2, 1, 0), 4),
    )


# --------------------------------------------------------------------------------------------
# 3. landscapes


@dataclass(frozen=True)
class LandscapeConfig:
    cosines: tuple[float, ...] = (-0.5, 0.5, 0.95)  # two-token panels: cosine between e_0 and e_1
    p_first: float = 0.75  # p(token 0) of the two-token panels
    lrs: tuple[float, ...] = (1.0, 10.0)  # step sizes of the drawn paths (small, large)
    steps: int = 35  # steps of each path (the reference's 35 full-batch epochs)
    batch_size: int = 0  # 0: full batch (the reference); b > 0: SGD on b tokens per step
    extent: float = 10.0  # the plane is drawn over [-extent, extent]²
    grid: int = 61  # grid points per axis
    seed_tokens: int = 5  # tokens of the seed talk's panel (on the unit circle, W on span(1_i 1_iᵀ)); 0: none
    seed: int = 0  # seeds the seed panel's embeddings and the SGD draws

    def __post_init__(self) -> None:
        if not isinstance(self.cosines, tuple):
            raise ValueError("--cosines must be a list")
        for cos in self.cosines:
            check_float("cosines", cos, -1.0, 1.0, open_low=True, open_high=True)
        check_float("p_first", self.p_first, 0.0, 1.0, open_low=True, open_high=True)
        check_floats("lrs", self.lrs, 0.0, open_low=True)
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 0)
        check_float("extent", self.extent, 0.0, open_low=True)
        check_int("grid", self.grid, 5)
        check_int("seed_tokens", self.seed_tokens, 0)
        if not self.cosines and not self.seed_tokens:
            raise ValueError("--cosines is empty and --seed-tokens is 0: nothing to draw")
        check_seed(self.seed)


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
    path_colors = _colormap("coolwarm")
    token_colors = _colormap("tab10")
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
    problem: dyn.MemoryProblem,
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
        along = dyn.memory_loss(dyn.plane_matrices(basis, path), problem)
        paths.append(_r(path, 4))
        path_loss.append(_r(along, 6))
        increases.append(int((along[1:] > along[:-1]).sum()))
    return LandscapePanel(
        title,
        basis_name,
        problem.probs.tolist(),
        problem.targets.tolist(),
        problem.inputs.tolist(),
        _r(loss, 4),
        _r(per_token, 4),
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
        problem = dyn.two_token_problem(cos, c.p_first)
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
        problem = dyn.MemoryProblem(
            inputs, torch.eye(2, dtype=torch.float64), dyn.zipf_probs(n, 1.0), torch.arange(n) % 2
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


# --------------------------------------------------------------------------------------------
# 4. sharpness


Outputs = Literal["identity", "sphere"]


def _sphere_problem(
    n: int, d: int, m: int, zipf: float, seed: int, trial: int = 0, outputs: Outputs = "sphere"
) -> dyn.MemoryProblem:
    """Inputs uniform on the unit sphere of R^d (seeded by (seed, n, d, m, trial)), outputs the
    first m basis vectors ("identity", m <= d) or uniform on the sphere too; p ∝ (x+1)^-zipf,
    f*(x) = x mod m. (The inputs are isotropic, so U = I stands for any orthonormal outputs.)"""
    gen = generator(seed, SPHERE_STREAM, n, d, m, trial)
    inputs = dyn.sphere_embeddings(n, d, gen)
    if outputs == "identity":
        out = torch.eye(d, dtype=torch.float64)[:m]
    else:
        out = dyn.sphere_embeddings(m, d, gen)
    return dyn.MemoryProblem(inputs, out, dyn.zipf_probs(n, zipf), torch.arange(n) % m)


def _stacked_problem(problems: list[dyn.MemoryProblem]) -> dyn.MemoryProblem:
    """Problems that share p and f*, as one batch (leading trial dimension)."""
    return dyn.MemoryProblem(
        torch.stack([p.inputs for p in problems]),
        torch.stack([p.outputs for p in problems]),
        problems[0].probs,
        problems[0].targets,
    )


def _check_outputs(outputs: Any, n_outputs: int, dim: int) -> None:
    if outputs not in ("identity", "sphere"):
        raise ValueError(f"--outputs must be identity or sphere, got {outputs!r}")
    if outputs == "identity" and n_outputs > dim:
        raise ValueError(f"--outputs identity needs --n-outputs <= --dim, got {n_outputs} > {dim}")


@dataclass(frozen=True)
class SharpnessConfig:
    n_tokens: tuple[int, ...] = (3, 30)  # token counts (reference: 3 usually fits in d = 2, 30 overflows)
    dim: int = 2  # d
    n_outputs: int = 2  # m, f*(x) = x mod m
    outputs: Outputs = "identity"  # output embeddings: orthonormal, or uniform on the sphere
    zipf: float = 1.0  # p(x) ∝ (x+1)^-zipf
    lrs: tuple[float, ...] = (1.0, 10.0, 30.0, 100.0)  # step sizes η
    steps: int = 400  # full-batch gradient steps
    trials: int = 4  # embedding draws per token count (inputs uniform on the circle/sphere)
    every: int = 1  # measure the sharpness every this many steps (1: both phases of a 2-cycle)
    power_iters: int = 100  # power-iteration budget per measurement (warm-started)
    power_tol: float = 1e-4  # stop when every Rayleigh quotient moves by less (relative)
    seed: int = 0  # seeds the embeddings (and the power iteration's start)

    def __post_init__(self) -> None:
        check_ints("n_tokens", self.n_tokens, 1)
        check_int("dim", self.dim, 1)
        check_int("n_outputs", self.n_outputs, 2)
        _check_outputs(self.outputs, self.n_outputs, self.dim)
        check_float("zipf", self.zipf, 0.0)
        check_floats("lrs", self.lrs, 0.0, open_low=True)
        check_int("steps", self.steps, 2)
        check_int("trials", self.trials, 1)
        check_int("every", self.every, 1)
        check_int("power_iters", self.power_iters, 1)
        check_float("power_tol", self.power_tol, 0.0, open_low=True)
        check_seed(self.seed)


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
    cmap = _colormap("plasma")
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
        problem = _stacked_problem(
            [
                _sphere_problem(n, c.dim, c.n_outputs, c.zipf, c.seed, trial, c.outputs)
                for trial in range(c.trials)
            ]
        )
        traj, steps, values = dyn.sharpness_along(
            problem, lrs, c.steps, every=c.every, iters=c.power_iters, tol=c.power_tol, seed=c.seed
        )
        # a draw fits if any of its runs recalls every token at some step: that W certifies it
        fits = dyn.all_recalled(traj.margins, problem.probs).any(0).any(0)  # (R,)
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
                        sharpness=_r(values[:, k, r]),
                        loss=_r(loss),
                        accuracy=_r(traj.accuracy[:, k, r], 4),
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


# --------------------------------------------------------------------------------------------
# 5. forgetting


@dataclass(frozen=True)
class ForgettingConfig:
    n_tokens: int = 30  # n tokens, p(x) ∝ (x+1)^-zipf
    dim: int = 2  # d (d = 2, n = 30: more associations than the memory holds, as the reference)
    n_outputs: int = 2  # m, f*(x) = x mod m
    outputs: Outputs = "identity"  # output embeddings: orthonormal, or uniform on the sphere
    zipf: float = 1.0  # Zipf exponent
    lrs: tuple[float, ...] = (1.0, 30.0)  # step sizes η; the smallest defines the stored memories
    steps: int = 2000  # gradient steps
    batch_size: int = 0  # 0: full batch; b > 0: SGD on b tokens per step
    trials: int = 8  # embedding draws (all trained at once)
    late_from: float = 0.5  # retention is measured over the steps >= late_from * steps
    map_every: int = 5  # the stored recall map (trial 0) keeps every this many steps
    seed: int = 0  # seeds the embeddings and the SGD draws

    def __post_init__(self) -> None:
        check_int("n_tokens", self.n_tokens, 2)
        check_int("dim", self.dim, 1)
        check_int("n_outputs", self.n_outputs, 2)
        _check_outputs(self.outputs, self.n_outputs, self.dim)
        check_float("zipf", self.zipf, 0.0)
        check_floats("lrs", self.lrs, 0.0, open_low=True)
        check_int("steps", self.steps, 2)
        check_int("batch_size", self.batch_size, 0)
        check_int("trials", self.trials, 1)
        check_float("late_from", self.late_from, 0.0, 1.0, open_high=True)
        check_int("map_every", self.map_every, 1)
        check_seed(self.seed)


@dataclass(frozen=True)
class ForgettingResult(ExperimentResult):
    lrs: list[float]
    probs: list[float]
    stored: list[list[int]]  # [trial]: tokens recalled at the end of the smallest-η run
    retention_frequent: list[float]  # [lr]: mean recall over late steps, frequent half of the stored tokens
    retention_rare: list[float]  # [lr]: same, rare half
    retention_by_token: list[list[float | None]]  # [lr][token] mean over trials where the token is stored
    forgetting_frequent: list[float]  # [lr]: recalled → not recalled events per stored token (frequent half)
    forgetting_rare: list[float]
    late_accuracy: list[float]  # [lr]: mean accuracy over late steps and trials
    map_steps: list[int]
    recall_map: list  # [lr][step][token] of trial 0 (0/1)

    def headline(self) -> str:
        parts = [
            f"η={lr:g}: frequent {f:.0%}, rare {r:.0%}"
            for lr, f, r in zip(self.lrs, self.retention_frequent, self.retention_rare)
        ]
        return "stored memories still recalled over the late steps — " + "; ".join(parts)


def plot_forgetting(result: ForgettingResult, out_dir: Path) -> list[Path]:
    L = len(result.lrs)
    fig, axes = new_figure(1, L + 1, (4.2, 3.6))
    for k, lr in enumerate(result.lrs):
        ax = axes[0][k]
        grid = np.asarray(result.recall_map[k], dtype=float).T  # (token, step)
        steps = result.map_steps
        ax.imshow(
            grid,
            aspect="auto",
            interpolation="nearest",
            cmap="Greys",
            vmin=0,
            vmax=1,
            extent=(steps[0], steps[-1], grid.shape[0] - 0.5, -0.5),
        )
        ax.set_xlabel("step")
        ax.set_ylabel("token x (0 = most frequent)")
        ax.set_title(f"η = {lr:g}: recall (black) of trial 0", fontsize=9)
    ax = axes[0][L]
    for k, lr in enumerate(result.lrs):
        ys = [math.nan if v is None else v for v in result.retention_by_token[k]]
        ax.plot(result.probs, ys, "o-", ms=3, label=f"η = {lr:g}")
    ax.set_xscale("log")
    ax.set_xlabel("token frequency p(x)")
    ax.set_ylabel("fraction of late steps recalled")
    ax.set_title("stored memories kept (mean over trials)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "forgetting")


@register(
    "forgetting",
    family="dynamics",
    summary="per-token recall over time at a small and a large step: which stored memories large steps erase",
    config=ForgettingConfig,
    plot=plot_forgetting,
    full=lambda: ForgettingConfig(trials=32, steps=10_000, lrs=(1.0, 10.0, 20.0, 30.0, 100.0), map_every=20),
    small=lambda: ForgettingConfig(n_tokens=8, trials=2, steps=40, map_every=2),
)
def run_forgetting(
    config: ForgettingConfig, out_dir: Path, *, log=print, progress: bool = True
) -> ForgettingResult:
    c = config
    problem = _stacked_problem(
        [
            _sphere_problem(c.n_tokens, c.dim, c.n_outputs, c.zipf, c.seed, trial, c.outputs)
            for trial in range(c.trials)
        ]
    )
    lrs = torch.tensor(c.lrs, dtype=torch.float64)[:, None]  # batch (L, R)
    traj = dyn.train(problem, lrs, c.steps, batch_size=c.batch_size, seed=c.seed)
    recall = traj.recall()  # (S, L, R, n)
    late = traj.steps >= c.late_from * c.steps
    reference = int(torch.tensor(c.lrs).argmin())
    stored = recall[-1, reference]  # (R, n): what the smallest step size stores
    kept = recall[late].double().mean(0)  # (L, R, n)
    events = dyn.forgetting_events(recall.reshape(len(traj.steps), -1)).reshape(
        len(c.lrs), c.trials, c.n_tokens
    )
    # frequent / rare halves of each trial's stored set, by frequency rank (token index)
    frequent = torch.zeros_like(stored)
    for r in range(c.trials):
        tokens = torch.nonzero(stored[r]).flatten()
        frequent[r, tokens[: (len(tokens) + 1) // 2]] = True
    rare = stored & ~frequent

    def mean_over(mask: torch.Tensor, values: torch.Tensor) -> list[float]:
        w = mask.double()
        return ((values * w).sum((-1, -2)) / w.sum().clamp_min(1)).tolist()

    by_token = []
    for k in range(len(c.lrs)):
        counts = stored.double().sum(0)
        means = (kept[k] * stored).sum(0) / counts.clamp_min(1)
        by_token.append([float(v) if n > 0 else None for v, n in zip(means, counts)])
    result = ForgettingResult(
        lrs=list(c.lrs),
        probs=problem.probs.tolist(),
        stored=[torch.nonzero(stored[r]).flatten().tolist() for r in range(c.trials)],
        retention_frequent=mean_over(frequent, kept),
        retention_rare=mean_over(rare, kept),
        retention_by_token=by_token,
        forgetting_frequent=mean_over(frequent, events.double()),
        forgetting_rare=mean_over(rare, events.double()),
        late_accuracy=traj.accuracy[late].mean((0, 2)).tolist(),
        map_steps=traj.steps[:: c.map_every].tolist(),
        recall_map=recall[:: c.map_every, :, 0].permute(1, 0, 2).int().tolist(),
    )
    for k, lr in enumerate(c.lrs):
        log(
            f"  η={lr:<6g} stored memories kept: frequent half {result.retention_frequent[k]:.3f}, rare half "
            f"{result.retention_rare[k]:.3f}; forgetting events per stored token {result.forgetting_frequent[k]:.1f}"
            f" / {result.forgetting_rare[k]:.1f}; late accuracy {result.late_accuracy[k]:.3f}"
        )
    return result


# --------------------------------------------------------------------------------------------
# 6. phase diagram


@dataclass(frozen=True)
class PhaseDiagramConfig:
    cosine_min: float = 0.5  # smallest cosine between the two input embeddings
    cosine_max: float = 1.0  # largest (1: the tokens coincide, accuracy 1 is impossible)
    n_cosines: int = 10  # cosines, evenly spaced
    log_odds_min: float = -0.5  # imbalance log(p / (1-p)) of token 0, smallest (p = σ(log-odds))
    log_odds_max: float = 0.5  # largest
    n_log_odds: int = 10  # imbalances, evenly spaced
    lr_min: float = 0.1  # smallest step size
    lr_max: float = 10.0  # largest
    n_lrs: int = 10  # step sizes, log-spaced
    steps: int = 1000  # full-batch steps from W = 0

    def __post_init__(self) -> None:
        check_float("cosine_min", self.cosine_min, -1.0, 1.0, open_low=True)
        check_float("cosine_max", self.cosine_max, self.cosine_min, 1.0)
        check_float("log_odds_min", self.log_odds_min)
        check_float("log_odds_max", self.log_odds_max, self.log_odds_min)
        check_float("lr_min", self.lr_min, 0.0, open_low=True)
        check_float("lr_max", self.lr_max, self.lr_min)
        for name in ("n_cosines", "n_log_odds", "n_lrs"):
            check_int(name, getattr(self, name), 1)
        check_int("steps", self.steps, 1)

    def grids(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cosines = torch.linspace(self.cosine_min, self.cosine_max, self.n_cosines, dtype=torch.float64)
        log_odds = torch.linspace(self.log_odds_min, self.log_odds_max, self.n_log_odds, dtype=torch.float64)
        lrs = torch.logspace(
            math.log10(self.lr_min), math.log10(self.lr_max), self.n_lrs, dtype=torch.float64
        )
        return cosines, log_odds, lrs


@dataclass(frozen=True)
class PhaseDiagramResult(ExperimentResult):
    cosines: list[float]
    log_odds: list[float]
    p_first: list[float]
    lrs: list[float]
    steps: int
    first_step: list  # [cosine][log-odds][lr], None: never at accuracy 1
    final_accuracy: list
    spikes: list
    reached: list[float]  # [lr]: fraction of (cosine, log-odds) points reaching accuracy 1
    one_step: float  # fraction of (cosine, log-odds) points at accuracy 1 after the first step (any η)
    hard_median_first: list[float | None]  # [lr]: median first step over the other points (None: never)

    def headline(self) -> str:
        ends = (0, len(self.lrs) - 1)
        parts = [f"η={self.lrs[k]:.3g}: {_step_text(self.hard_median_first[k])}" for k in ends]
        return (
            f"{self.one_step:.0%} of (cos, p) points are solved by the first step whatever η; median first "
            f"step at accuracy 1 of the others: "
            + ", ".join(parts)
            + f"; reached within {self.steps} steps: {self.reached[0]:.0%} (η={self.lrs[0]:.3g}), "
            f"{self.reached[-1]:.0%} (η={self.lrs[-1]:.3g})"
        )


def plot_phase_diagram(result: PhaseDiagramResult, out_dir: Path) -> list[Path]:
    picks = sorted({round(k * (len(result.cosines) - 1) / 3) for k in range(4)})
    fig, axes = new_figure(1, len(picks) + 1, (3.8, 3.4))
    from matplotlib.colors import LogNorm

    norm = LogNorm(1, result.steps)
    for ax, j in zip(axes[0], picks):
        grid = np.asarray(
            [[math.nan if v is None else v for v in row] for row in result.first_step[j]], dtype=float
        )  # (P, L)
        ax.set_facecolor("0.8")  # never: grey
        image = ax.pcolormesh(result.lrs, result.log_odds, grid, norm=norm, cmap="viridis", shading="nearest")
        ax.set_xscale("log")
        ax.set_xlabel("step size η")
        ax.set_ylabel("log-odds of p(token 0)")
        ax.set_title(f"cos {result.cosines[j]:.3g}: first step at accuracy 1", fontsize=9)
    fig.colorbar(image, ax=axes[0][len(picks) - 1], label="step (grey: never)")
    ax = axes[0][len(picks)]
    for j, cos in enumerate(result.cosines):
        med = []
        for k in range(len(result.lrs)):
            vals = [row[k] for row in result.first_step[j] if row[k] is not None]
            med.append(float(np.median(vals)) if vals else math.nan)
        ax.plot(
            result.lrs,
            med,
            "o-",
            ms=2.5,
            lw=1.0,
            color=_colormap("viridis")(j / max(len(result.cosines) - 1, 1)),
            label=f"cos {cos:.2g}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step size η")
    ax.set_title("median first step over imbalances", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, out_dir, "phase_diagram")


@register(
    "phase-diagram",
    family="dynamics",
    summary="two-token problem: first step at accuracy 1 over (cosine, imbalance, η), full-batch GD",
    config=PhaseDiagramConfig,
    plot=plot_phase_diagram,
    full=lambda: PhaseDiagramConfig(
        n_cosines=20, n_log_odds=20, log_odds_min=-3.0, log_odds_max=3.0, n_lrs=20, lr_max=100.0, steps=10_000
    ),
    small=lambda: PhaseDiagramConfig(n_cosines=3, n_log_odds=3, n_lrs=3, steps=50),
)
def run_phase_diagram(
    config: PhaseDiagramConfig, out_dir: Path, *, log=print, progress: bool = True
) -> PhaseDiagramResult:
    cosines, log_odds, lrs = config.grids()
    p_first = torch.sigmoid(log_odds)
    diagram = dyn.phase_diagram(cosines, p_first, lrs, config.steps)
    first = diagram.first_step  # (A, P, L)
    reached = (first >= 0).double().mean((0, 1))
    # from W = 0 the first step is η times a fixed matrix: whether it already recalls both tokens
    # does not depend on η. The step sizes differ on the other points.
    one_step = first[..., 0] == 1  # (A, P)
    medians = []
    for k in range(len(lrs)):
        hard = first[..., k][~one_step].double()
        hard = torch.where(hard < 0, math.inf, hard).sort().values
        median = float(hard[(len(hard) - 1) // 2]) if len(hard) else math.nan
        medians.append(int(median) if math.isfinite(median) else None)
    for k, lr in enumerate(lrs.tolist()):
        log(
            f"  η={lr:<7.3g} reach accuracy 1: {float(reached[k]):.0%} of the grid; median first step where one "
            f"step is not enough: {_step_text(medians[k])}; loss spikes at "
            f"{float((diagram.spikes[..., k] > 0).double().mean()):.0%} of the points"
        )
    return PhaseDiagramResult(
        cosines=cosines.tolist(),
        log_odds=log_odds.tolist(),
        p_first=p_first.tolist(),
        lrs=lrs.tolist(),
        steps=config.steps,
        first_step=[[[None if v < 0 else int(v) for v in row] for row in block] for block in first.tolist()],
        final_accuracy=_r(diagram.final_accuracy, 4),
        spikes=diagram.spikes.tolist(),
        reached=reached.tolist(),
        one_step=float(one_step.double().mean()),
        hard_median_first=medians,
    )


# --------------------------------------------------------------------------------------------
# 7. under-parameterized memories


@dataclass(frozen=True)
class UnderparameterizedConfig:
    n_tokens: int = 20  # N tokens, p(x) ∝ (x+1)^-zipf
    n_outputs: int = 20  # M outputs, f*(x) = x mod M
    dims: tuple[int, ...] = (2, 3, 4, 8, 32)  # d; d < N is under-parameterized (32 >= N: the control)
    zipf: float = 1.5  # Zipf exponent
    lr: float = 1.0  # step size η
    steps: int = 10_000  # full-batch gradient steps
    trials: int = 16  # embedding draws per d (uniform on the sphere)
    records: int = 80  # about this many log-spaced recorded steps
    seed: int = 0  # seeds the embeddings

    def __post_init__(self) -> None:
        check_int("n_tokens", self.n_tokens, 2)
        check_int("n_outputs", self.n_outputs, 2)
        check_ints("dims", self.dims, 1)
        check_float("zipf", self.zipf, 0.0)
        check_float("lr", self.lr, 0.0, open_low=True)
        check_int("steps", self.steps, 2)
        check_int("trials", self.trials, 1)
        check_int("records", self.records, 5)
        check_seed(self.seed)


@dataclass(frozen=True)
class UnderparameterizedRun:
    dim: int
    error: list[float]  # mean over trials at each recorded step
    first_step_error: float  # after one step (≈ the q = p scheme)
    best_error: float  # mean over trials of each trial's best recorded error
    final_error: float
    best_step: int  # median over trials of the best step
    worse_at_end: float  # fraction of trials ending > 0.01 above their best


@dataclass(frozen=True)
class UnderparameterizedResult(ExperimentResult):
    n_tokens: int
    steps: list[int]
    runs: list[UnderparameterizedRun]

    def headline(self) -> str:
        parts = [
            f"d={r.dim}: best {r.best_error:.3f} at ~{r.best_step} vs final {r.final_error:.3f}"
            for r in self.runs
        ]
        return (
            f"error with early stopping vs after {self.steps[-1]} steps (N={self.n_tokens}) — "
            + "; ".join(parts)
        )


def plot_underparameterized(result: UnderparameterizedResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2, (4.8, 3.6))
    cmap = _colormap("viridis")
    ax = axes[0][0]
    steps = result.steps[1:]
    for k, run in enumerate(result.runs):
        color = cmap(0.9 * k / max(len(result.runs) - 1, 1))
        ax.plot(steps, run.error[1:], color=color, lw=1.2, label=f"d = {run.dim}")
        j = min(range(1, len(run.error)), key=lambda i: run.error[i])
        ax.plot([result.steps[j]], [run.error[j]], "v", color=color, ms=6)
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("error Σ p(x) 1{wrong} (mean over trials)")
    ax.set_title(f"N = {result.n_tokens}: ▼ best early-stopping point of the mean", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0][1]
    dims = [r.dim for r in result.runs]
    ax.plot(dims, [r.best_error for r in result.runs], "o-", label="best (early stopping)")
    ax.plot(dims, [r.final_error for r in result.runs], "s-", label="final")
    ax.plot(dims, [r.first_step_error for r in result.runs], "^-", label="after one step")
    ax.set_xscale("log")
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.xaxis.set_minor_formatter(_null_formatter())
    ax.set_xlabel("d")
    ax.set_title("error per trial, mean over trials", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "underparameterized")


@register(
    "underparameterized",
    family="dynamics",
    summary="d < N: cross-entropy over-optimization hurts; error vs steps and its best early-stopping point",
    config=UnderparameterizedConfig,
    plot=plot_underparameterized,
    full=lambda: UnderparameterizedConfig(
        n_tokens=100, n_outputs=100, dims=(2, 3, 4, 6, 8, 16, 32, 128), trials=100, steps=100_000, records=150
    ),
    small=lambda: UnderparameterizedConfig(
        n_tokens=8, n_outputs=8, dims=(2, 16), trials=2, steps=30, records=10
    ),
)
def run_underparameterized(
    config: UnderparameterizedConfig, out_dir: Path, *, log=print, progress: bool = True
) -> UnderparameterizedResult:
    c = config
    record = dyn.log_spaced_steps(c.steps, c.records)
    runs = []
    for d in c.dims:
        problem = _stacked_problem(
            [_sphere_problem(c.n_tokens, d, c.n_outputs, c.zipf, c.seed, trial) for trial in range(c.trials)]
        )
        traj = dyn.train(problem, c.lr, c.steps, record_steps=record)
        error = 1.0 - traj.accuracy  # (S, R)
        stops = [dyn.early_stopping(traj.steps[1:], error[1:, r]) for r in range(c.trials)]
        best = torch.tensor([s.best_error for s in stops])
        final = torch.tensor([s.final_error for s in stops])
        run = UnderparameterizedRun(
            dim=d,
            error=_r(error.mean(1), 6),
            first_step_error=float(error[1].mean()),
            best_error=float(best.mean()),
            final_error=float(final.mean()),
            best_step=int(torch.tensor([s.best_step for s in stops]).median()),
            worse_at_end=float((final > best + 0.01).double().mean()),
        )
        runs.append(run)
        log(
            f"  d={d:<4d} one step {run.first_step_error:.3f}, best {run.best_error:.3f} (median step "
            f"{run.best_step}), final {run.final_error:.3f}; {run.worse_at_end:.0%} of trials end worse than their best"
        )
    return UnderparameterizedResult(c.n_tokens, traj.steps.tolist(), runs)


# --------------------------------------------------------------------------------------------
# 8. in the transformer


Arm = Literal["wo2", "all"]
AllMatrices = Literal["simplified", "attention"]
Device = Literal["cpu", "cuda", "auto"]


@dataclass(frozen=True)
class TransformerWo2Config:
    d_model: int = 64  # d of the simplified 2-layer birth model (frozen N(0, I/d) embeddings)
    seq_len: int = 64  # T of the triggered-bigram task (K = 5 fixed triggers, uniform outputs)
    batch_size: int = 32  # sequences per SGD step (fresh, seeded batches)
    eval_batch_size: int = 64  # fixed held-out sequences on which the loss curve is measured every step
    lrs: tuple[float, ...] = (20.0, 60.0, 200.0)  # step sizes η (plain SGD)
    steps: int = 300  # SGD steps per run
    all_matrices: AllMatrices = (
        "simplified"  # the every-matrix arm: W_K¹, W_K², W_O² (the paper's) or all W_Q, W_K, W_V, W_O
    )
    margin_every: int = 5  # W_OV² margins measured every this many steps
    fit_from: float = 0.1  # fit margin vs log t over t >= fit_from * steps (two halves of that log window)
    spike_factor: float = 1.5  # a spike: the held-out loss above spike_factor × its running minimum
    device: Device = "cpu"  # auto: cuda when available
    seed: int = 0  # seeds the model, the training batches and the held-out batch

    def __post_init__(self) -> None:
        check_int("d_model", self.d_model, 1)
        check_int("seq_len", self.seq_len, 8)
        check_int("batch_size", self.batch_size, 1)
        check_int("eval_batch_size", self.eval_batch_size, 1)
        check_floats("lrs", self.lrs, 0.0, open_low=True)
        check_int("steps", self.steps, 4)
        if self.all_matrices not in ("simplified", "attention"):
            raise ValueError(f"--all-matrices must be simplified or attention, got {self.all_matrices!r}")
        check_int("margin_every", self.margin_every, 1)
        check_float("fit_from", self.fit_from, 0.0, 1.0, open_low=True, open_high=True)
        check_float("spike_factor", self.spike_factor, 1.0, open_low=True)
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"--device must be cpu, cuda or auto, got {self.device!r}")
        check_seed(self.seed)


@dataclass(frozen=True)
class TransformerRun:
    arm: Arm  # wo2: only W_O² trains; all: every matrix of the arm (see all_matrices)
    lr: float
    loss: list[float]  # held-out loss (counter >= 2 targets) before each step
    accuracy: list[float]  # held-out in-context accuracy
    margin_steps: list[int]
    margins: list  # [k][token]: W_OV² margins
    slope_early: float  # median over tokens of d margin / d log t, first half of the log window
    slope_late: float  # the same, second half: equal slopes = logarithmic growth
    stored: float  # fraction of tokens with a positive W_OV² margin at the end
    spikes: int
    max_jump: float  # largest loss / running minimum of the loss
    final_accuracy: float  # mean held-out accuracy over the last tenth of the run
    diverged: int | None


@dataclass(frozen=True)
class TransformerWo2Result(ExperimentResult):
    lrs: list[float]
    all_matrices: str
    runs: list[TransformerRun]
    fit_window: list[int]  # [t1, t2, t3]: early half [t1, t2], late half [t2, t3]
    seconds_per_step: float

    def headline(self) -> str:
        wo2 = [r for r in self.runs if r.arm == "wo2"]
        every = [r for r in self.runs if r.arm == "all"]
        slopes = ", ".join(f"η={r.lr:g} {r.slope_early:.2f}/{r.slope_late:.2f}" for r in wo2)
        spikes = ", ".join(f"η={r.lr:g} {r.spikes}" for r in wo2)
        spikes_all = ", ".join(f"η={r.lr:g} {r.spikes}" for r in every)
        return (
            f"W_O² only: median W_OV² margin slope vs log t (early/late half) {slopes}; loss spikes W_O² only: "
            f"{spikes}; every matrix: {spikes_all}"
        )


def plot_transformer_wo2(result: TransformerWo2Result, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 4, (4.2, 3.4))
    cmap = _colormap("plasma")
    for k, lr in enumerate(result.lrs):
        color = cmap(0.85 * k / max(len(result.lrs) - 1, 1))
        for r in result.runs:
            if r.lr != lr:
                continue
            if r.arm == "wo2":
                axes[0][0].plot(range(len(r.loss)), r.loss, color=color, lw=0.9, label=f"η = {lr:g}")
                med = np.median(np.asarray(r.margins, dtype=float), -1)
                axes[0][2].plot(r.margin_steps[1:], med[1:], color=color, lw=1.2, label=f"η = {lr:g}")
            else:
                axes[0][1].plot(range(len(r.loss)), r.loss, color=color, lw=0.9, label=f"η = {lr:g}")
    axes[0][0].set_title("only W_O² trains: held-out loss", fontsize=9)
    axes[0][1].set_title(f"every matrix ({result.all_matrices}) trains: held-out loss", fontsize=9)
    for ax in axes[0][:2]:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax = axes[0][2]
    ax.set_xscale("log")
    for t in result.fit_window:
        ax.axvline(t, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("step t")
    ax.set_title("only W_O²: median W_OV² margin over tokens", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0][3]
    wo2 = [r for r in result.runs if r.arm == "wo2"]
    last = max(wo2, key=lambda r: r.lr)
    margins = np.asarray(last.margins, dtype=float)
    order = np.argsort(margins[-1])
    for j, token in enumerate(order.tolist()):
        ax.plot(
            last.margin_steps[1:],
            margins[1:, token],
            color=_colormap("viridis")(j / max(len(order) - 1, 1)),
            lw=0.6,
        )
    ax.set_xscale("log")
    ax.set_xlabel("step t")
    ax.set_title(f"only W_O², η = {last.lr:g}: every token's margin", fontsize=9)
    return save_figure(fig, out_dir, "transformer_wo2")


def _median_log_slope(steps: torch.Tensor, margins: torch.Tensor, lo: int, hi: int) -> float:
    """Median over tokens of the slope of margin vs log t over the recorded steps in [lo, hi]."""
    keep = (steps >= lo) & (steps <= hi)
    if int(keep.sum()) < 2 or not bool(torch.isfinite(margins[keep]).all()):
        return math.nan
    slopes = [dyn.fit_log_growth(steps[keep], margins[keep, k], lo).slope for k in range(margins.shape[1])]
    return float(torch.tensor(slopes).median())


def _arm_parameters(model, arm: Arm, all_matrices: AllMatrices) -> list:
    from birth.models.transformer import attn_linear

    if arm == "wo2":
        return [attn_linear(model, 1, "o").weight]
    if all_matrices == "simplified":
        return [attn_linear(model, layer, name).weight for layer, name in ((0, "k"), (1, "k"), (1, "o"))]
    return [attn_linear(model, layer, name).weight for layer in (0, 1) for name in ("q", "k", "v", "o")]


@register(
    "transformer-wo2",
    family="dynamics",
    summary="birth transformer: only W_O² trained at η in [20, 200] (per-token W_OV² margins); spikes when every matrix trains",
    config=TransformerWo2Config,
    plot=plot_transformer_wo2,
    full=lambda: TransformerWo2Config(
        d_model=256,
        seq_len=256,
        batch_size=512,
        eval_batch_size=512,
        steps=2000,
        lrs=(20.0, 50.0, 100.0, 150.0, 200.0),
        margin_every=10,
        device="auto",
    ),
    small=lambda: TransformerWo2Config(
        d_model=16, seq_len=16, batch_size=8, eval_batch_size=8, steps=8, lrs=(20.0, 200.0), margin_every=2
    ),
)
def run_transformer_wo2(
    config: TransformerWo2Config, out_dir: Path, *, log=print, progress: bool = True
) -> TransformerWo2Result:
    import time

    from birth.base.seeds import step_seed
    from birth.models.transformer import ModelConfig, build_model
    from tasks.triggered_bigram import TaskConfig, TriggeredBigram

    c = config
    device = ("cuda" if torch.cuda.is_available() else "cpu") if c.device == "auto" else c.device
    task = TriggeredBigram(TaskConfig(seq_len=c.seq_len), device=device)
    # every run sees the same batches: the arms and step sizes differ only in what they train
    batches = [task.sample(c.batch_size, task.generator(step_seed(c.seed, step))) for step in range(c.steps)]
    eval_batch = task.sample(c.eval_batch_size, task.generator(step_seed(c.seed, 0x5EED_E0A1)))
    t1 = max(1, int(round(c.fit_from * c.steps)))
    t2 = int(round(math.sqrt(t1 * c.steps)))
    window = [t1, t2, c.steps]
    runs, started = [], time.perf_counter()
    for arm in ("wo2", "all"):
        for lr in c.lrs:
            model = build_model(
                ModelConfig(d_model=c.d_model),
                n_ctx=c.seq_len,
                vocab_size=task.vocab_size,
                seed=c.seed,
                device=device,
            )
            traj = dyn.train_transformer_sgd(
                model,
                _arm_parameters(model, arm, c.all_matrices),
                batches,
                lr,
                eval_batch=eval_batch,
                margin_every=c.margin_every,
            )
            steps, margins = traj.margin_steps, traj.margins
            loss = traj.loss
            finite = loss[torch.isfinite(loss)]
            running = torch.cummin(finite, 0).values
            jump = float((finite[1:] / running[:-1]).max()) if len(finite) > 1 else math.nan
            tail = traj.accuracy[-max(1, c.steps // 10) :]
            run = TransformerRun(
                arm=arm,
                lr=lr,
                loss=_r(loss),
                accuracy=_r(traj.accuracy, 4),
                margin_steps=steps.tolist(),
                margins=_r(margins, 4),
                slope_early=_median_log_slope(steps, margins, t1, t2),
                slope_late=_median_log_slope(steps, margins, t2, c.steps),
                stored=float((margins[-1] > 0).double().mean()),
                spikes=dyn.count_spikes(loss[: traj.diverged], c.spike_factor) + (traj.diverged is not None),
                max_jump=jump,
                final_accuracy=float(tail[torch.isfinite(tail)].mean())
                if bool(torch.isfinite(tail).any())
                else math.nan,
                diverged=traj.diverged,
            )
            runs.append(run)
            log(
                f"  {arm:<3} η={lr:<6g} margin slope vs log t {run.slope_early:.3f} / {run.slope_late:.3f}, "
                f"stored {run.stored:.0%}; {run.spikes} spikes (max loss / running min {run.max_jump:.2f}); "
                f"accuracy {run.final_accuracy:.3f}"
                + ("" if run.diverged is None else f"; diverged at {run.diverged}")
            )
    seconds = (time.perf_counter() - started) / (2 * len(c.lrs) * c.steps)
    return TransformerWo2Result(list(c.lrs), c.all_matrices, runs, window, seconds)
