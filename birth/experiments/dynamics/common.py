"""Shared pieces of the gradient-dynamics experiments: (S)GD runs with the closed-form gradient,
the sphere problems, rounding for the JSON, and figure helpers."""

from __future__ import annotations

from typing import Literal

import torch

from birth.base.seeds import generator
from birth.memories.problem import MemoryProblem, sphere_embeddings
from tasks.zipf import zipf_probs
from training.memories import MemoryRun, MemoryTrainConfig, train_memory

# generator streams (seed, STREAM, ...) of the embedding draws
ROTATION_STREAM = 0xE0
SPHERE_STREAM = 0xE1
CIRCLE_STREAM = 0xE2

Outputs = Literal["identity", "sphere"]  # output embeddings: orthonormal, or uniform on the sphere


def descend(
    problem: MemoryProblem,
    lr: float | torch.Tensor,
    steps: int,
    *,
    batch_size: int = 0,
    seed: int = 0,
    eval_steps=(),
    init: torch.Tensor | None = None,
    callback=None,
) -> MemoryRun:
    """(S)GD W ← W − η ∇L from W = 0 with the closed-form gradient (training.memories): full batch
    (batch_size 0) or b tokens drawn from p per step (seeded); `lr` a number or a tensor of step
    sizes broadcasting against the problems. Records every step, or exactly `eval_steps`."""
    config = MemoryTrainConfig(
        batch_size=batch_size,
        num_steps=steps,
        gradient="closed-form",
        eval_steps=tuple(eval_steps),
        eval_every=0 if eval_steps else 1,
    )
    return train_memory(problem, config, seed=seed, lr=lr, init=init, callback=callback)


def rounded(values: torch.Tensor, digits: int = 6) -> list:
    """Nested lists rounded to `digits` significant digits for the JSON (curves of thousands of
    points stay readable; a loss of 1e-30 keeps its value, inf and nan pass through)."""
    x = values.double()
    finite = torch.isfinite(x) & (x != 0)
    magnitude = torch.where(finite, torch.floor(torch.log10(x.abs().clamp_min(1e-300))), torch.zeros_like(x))
    scale = torch.pow(10.0, digits - 1 - magnitude)
    return torch.where(finite, torch.round(x * scale) / scale, x).tolist()


def step_text(step: int | None) -> str:
    return "never" if step is None else str(step)


def null_formatter():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def sphere_problem(
    n: int, d: int, m: int, zipf: float, seed: int, trial: int = 0, outputs: Outputs = "sphere"
) -> MemoryProblem:
    """Inputs uniform on the unit sphere of R^d (seeded by (seed, n, d, m, trial)), outputs the
    first m basis vectors ("identity", m <= d) or uniform on the sphere too; p ∝ (x+1)^-zipf,
    f*(x) = x mod m. (The inputs are isotropic, so U = I stands for any orthonormal outputs.)"""
    gen = generator(seed, SPHERE_STREAM, n, d, m, trial)
    inputs = sphere_embeddings(n, d, gen)
    if outputs == "identity":
        out = torch.eye(d, dtype=torch.float64)[:m]
    else:
        out = sphere_embeddings(m, d, gen)
    return MemoryProblem(inputs, out, zipf_probs(n, zipf), torch.arange(n) % m)


def stacked_problem(problems: list[MemoryProblem]) -> MemoryProblem:
    """Problems that share p and f*, as one batch (leading trial dimension)."""
    return MemoryProblem(
        torch.stack([p.inputs for p in problems]),
        torch.stack([p.outputs for p in problems]),
        problems[0].probs,
        problems[0].targets,
    )


def check_outputs(outputs: Outputs, n_outputs: int, dim: int) -> None:
    """--outputs identity puts the m outputs on the first m basis vectors of R^d."""
    if outputs == "identity" and n_outputs > dim:
        raise ValueError(f"--outputs identity needs --n-outputs <= --dim, got {n_outputs} > {dim}")
