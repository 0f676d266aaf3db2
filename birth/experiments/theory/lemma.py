"""`lemma` (gradients as memories): one population gradient step of a linear memory from zero
stores its associations, v_kᵀ W_1 u_z ≈ (η/N) 1{f*(z)=k} (see `common`); measured with N(0, I/d)
embeddings (population and sampled gradients) and with exactly orthonormal ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from birth.base.io import new_figure, save_figure
from birth.base.validate import Int, Validated, check_int
from birth.experiments.common import Positive, Seed
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.theory.common import (
    LEMMA_DTYPE,
    LemmaStep,
    check_lemma_args,
    embedding_rows,
    one_step_memory,
)


def lemma_one_step(
    n_tokens: int = 64,
    d: int = 1024,
    eta: float = 1.0,
    *,
    n_samples: int = 0,
    seed: int = 0,
    orthonormal: bool = False,
) -> LemmaStep:
    """One gradient step from W_0 = 0 on L(W) = E_z[ℓ(f*(z), (v_kᵀ W u_z)_k)], z ~ Unif([N]).

    Embeddings u_z, v_k ~ N(0, I/d) (near-orthonormal), or exactly orthonormal (needs d >= N), and
    f*: [N] → [N] uniformly random, all from a generator seeded by `seed`. `n_samples = 0` takes the
    exact population gradient (the 1/N-weighted sum over every z); otherwise the gradient of the
    mean loss over `n_samples` draws of z (a population-like large batch).
    """
    check_lemma_args(n_tokens, d, eta, n_samples, orthonormal, n_tokens)
    gen = torch.Generator().manual_seed(seed)
    U = embedding_rows(n_tokens, d, gen, orthonormal)
    V = embedding_rows(n_tokens, d, gen, orthonormal)
    f_star = torch.randint(0, n_tokens, (n_tokens,), generator=gen)
    if n_samples:
        z = torch.randint(0, n_tokens, (n_samples,), generator=gen)
    else:
        z = torch.arange(n_tokens)  # every z once: the mean is the population expectation
    W1 = one_step_memory(U[z], f_star[z], V, eta)
    measured = V @ W1 @ U.T  # [k, z]
    predicted = torch.zeros(n_tokens, n_tokens, dtype=LEMMA_DTYPE)
    predicted[f_star, torch.arange(n_tokens)] = eta / n_tokens
    return LemmaStep(n_tokens, d, eta, measured, predicted, f_star, n_samples)


@dataclass(frozen=True)
class LemmaConfig(Validated):
    n_tokens: Annotated[int, Int(2)] = 64  # N, the number of input (and output) tokens
    d: int = 1024  # embedding dimension (the orthonormal run needs d >= N)
    eta: Positive = 1.0  # step size η
    samples_per_token: Annotated[int, Int(1)] = 200  # the sampled run draws this many times N inputs
    seed: Seed = 0  # seeds the embeddings, f* and the sampled inputs

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("d", self.d, self.n_tokens)


@dataclass(frozen=True)
class LemmaRun:
    max_abs_error: float  # max |v_kᵀ W₁ u_z − (η/N) 1{f*(z)=k}|
    relative_error: float  # the same in units of η/N
    argmax_accuracy: float  # argmax_k v_kᵀ W₁ u_z = f*(z)
    n_samples: int  # 0: the exact population gradient
    measured: list[list[float]]  # [k][z] v_kᵀ W₁ u_z
    predicted: list[list[float]]  # [k][z] (η/N) 1{f*(z)=k}


@dataclass(frozen=True)
class LemmaResult(ExperimentResult):
    n_tokens: int
    d: int
    eta: float
    summary: dict[str, LemmaRun]  # population, sampled, orthonormal

    def headline(self) -> str:
        pop, n = self.summary["population"], self.n_tokens
        return (
            f"one population gradient step (N={n}, d={self.d}, η={self.eta}): "
            f"max |v_kᵀW₁u_z − (η/N)1{{f*(z)=k}}| = {pop.relative_error:.3f} η/N (sampled "
            f"{self.summary['sampled'].relative_error:.3f}, orthonormal "
            f"{self.summary['orthonormal'].relative_error:.4f} ≈ 1/N = {1 / n:.4f}); argmax accuracy "
            f"{pop.argmax_accuracy:.3f}"
        )


def plot_lemma(result: LemmaResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, len(result.summary), size=(4.2, 4.0))
    unit = result.eta / result.n_tokens
    for ax, (label, run) in zip(axes[0], result.summary.items()):
        predicted = [v / unit for row in run.predicted for v in row]
        measured = [v / unit for row in run.measured for v in row]
        ax.scatter(predicted, measured, s=4, alpha=0.4)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("predicted 1{f*(z)=k}  (units of η/N)")
        ax.set_ylabel("measured v_kᵀ W₁ u_z  (units of η/N)")
        ax.set_title(f"{label}: max err {run.relative_error:.3f}")
    return save_figure(fig, out_dir, "lemma")


@register(
    "lemma",
    family="theory",
    summary="one population gradient step: v_kᵀ W_1 u_z ≈ (η/N) 1{f*(z)=k}",
    config=LemmaConfig,
    plot=plot_lemma,
    full=lambda: LemmaConfig(n_tokens=100, d=4096),
    small=lambda: LemmaConfig(n_tokens=8, d=64),
)
def run_lemma(config: LemmaConfig, out_dir: Path, *, log=print, progress: bool = True) -> LemmaResult:
    n, d, eta, seed = config.n_tokens, config.d, config.eta, config.seed
    runs = {
        "population": lemma_one_step(n, d, eta, seed=seed),
        "sampled": lemma_one_step(n, d, eta, n_samples=config.samples_per_token * n, seed=seed),
        "orthonormal": lemma_one_step(n, d, eta, seed=seed, orthonormal=True),
    }
    summary = {
        label: LemmaRun(
            max_abs_error=r.max_abs_error,
            relative_error=r.relative_error,
            argmax_accuracy=r.argmax_accuracy,
            n_samples=r.n_samples,
            measured=r.measured.tolist(),
            predicted=r.predicted.tolist(),
        )
        for label, r in runs.items()
    }
    return LemmaResult(n_tokens=n, d=d, eta=eta, summary=summary)
