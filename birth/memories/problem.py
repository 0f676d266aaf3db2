"""The associative-memory problem: embeddings, an input law and a target map, and the exact
quantities of a linear memory on it.

A problem is input embeddings e_x ∈ R^d (x ∈ [n]), output embeddings u_y ∈ R^d (y ∈ [m]), an input
law p on [n] and a target map f*: [n] → [m]. A linear memory W ∈ R^{d×d} reads out the scores
z_{x,y} = u_yᵀ W e_x and recalls x when argmax_y z_{x,y} = f*(x); its cross-entropy loss under p is

    L(W) = Σ_x p(x) ℓ(z_x, f*(x)),   ℓ(z, y) = -z_y + log Σ_y' exp z_y',

whose gradient has the closed form ∇L = Σ_x p(x) Σ_y (softmax(z_x) - δ_{f*(x)})_y u_y e_xᵀ. Every
function takes tensors with optional leading batch dimensions, so a grid of problems (step sizes,
imbalances, cosines, trials) is one tensor program: W (..., d, d), E (..., n, d), U (..., m, d),
p (..., n), targets (n,). The margin of token x is z_{x,f*(x)} - max_{y≠f*(x)} z_{x,y}: x is recalled
iff its margin is > 0, and the accuracy is the exact Σ_x p(x) 1{margin_x > 0} (nothing sampled; a
tie counts as wrong).

Problems of the scaling-law papers come from a Zipf task (`from_task`: Gaussian or sphere
embeddings drawn per trial as in birth.memories.scaling_laws); `sample_batches` draws the training
samples of any problem, one seeded stream per trial. training/memories.py trains memories on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from birth.base.seeds import generator
from birth.memories.scaling_laws import EmbeddingKind, draw_embeddings
from tasks.zipf import ZipfAssociations, sample_inputs

SAMPLE_STREAM = 0xDA7A  # the training samples of trial r: generator(seed, r, SAMPLE_STREAM)

# --------------------------------------------------------------------------------------------
# problems: embeddings, input law, targets


def correlated_embeddings(n: int, cosine: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n unit vectors in R^n with every pairwise cosine equal to `cosine`: the rows of the Cholesky
    factor of (1 - c) I + c 11ᵀ (for n = 2: [[1, 0], [c, √(1 - c²)]], the reference's E)."""
    # the Gram matrix is positive definite iff -1/(n-1) < c < 1 (one vector: any c, nothing to correlate)
    if n > 1 and not -1.0 / (n - 1) < cosine < 1.0:
        raise ValueError(f"cosine must lie in (-1/(n-1), 1) for n={n} vectors, got {cosine}")
    gram = (1.0 - cosine) * torch.eye(n, dtype=torch.float64) + cosine
    return torch.linalg.cholesky(gram).to(dtype)


def orthonormal_embeddings(
    n: int, d: int, gen: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """n orthonormal rows in R^d (n <= d): the identity's first rows, or a random rotation of them."""
    if n > d:
        raise ValueError(f"{n} orthonormal vectors need d >= {n}, got d={d}")
    if gen is None:
        return torch.eye(d, dtype=dtype)[:n]
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # Haar-distributed rotation
    return q[:n].to(dtype)


def sphere_embeddings(
    n: int, d: int, gen: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """n vectors uniform on the unit sphere of R^d."""
    return F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1).to(dtype)


def gaussian_embeddings(
    n: int, d: int, gen: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """n vectors N(0, I/d) (norm ≈ 1)."""
    return (torch.randn(n, d, generator=gen, dtype=torch.float64) / math.sqrt(d)).to(dtype)


@dataclass(frozen=True)
class MemoryProblem:
    """One association problem (or a batch of them, with leading dimensions on every tensor but
    `targets`): inputs E (..., n, d), outputs U (..., m, d), input law p (..., n), f* (n,)."""

    inputs: torch.Tensor
    outputs: torch.Tensor
    probs: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        n, m = self.inputs.shape[-2], self.outputs.shape[-2]
        if self.inputs.shape[-1] != self.outputs.shape[-1]:
            raise ValueError("input and output embeddings must have the same width d")
        if self.probs.shape[-1] != n or self.targets.shape != (n,):
            raise ValueError(f"probs (..., {n}) and targets ({n},) must match the {n} input embeddings")
        if int(self.targets.min()) < 0 or int(self.targets.max()) >= m:
            raise ValueError(f"targets must lie in [0, {m})")

    @property
    def dim(self) -> int:
        return self.inputs.shape[-1]

    @property
    def batch_shape(self) -> torch.Size:
        return torch.broadcast_shapes(self.inputs.shape[:-2], self.outputs.shape[:-2], self.probs.shape[:-1])

    def zeros(self) -> torch.Tensor:
        """W = 0 for every problem of the batch."""
        return torch.zeros(*self.batch_shape, self.dim, self.dim, dtype=self.inputs.dtype)


def two_token_problem(cosine: float, p_first: float, dtype: torch.dtype = torch.float64) -> MemoryProblem:
    """The reference's 2-D problem: n = m = d = 2, U = I, f*(x) = x, cos(e_0, e_1) = `cosine`,
    p = (p_first, 1 - p_first)."""
    probs = torch.tensor([p_first, 1.0 - p_first], dtype=dtype)
    return MemoryProblem(
        correlated_embeddings(2, cosine, dtype), torch.eye(2, dtype=dtype), probs, torch.arange(2)
    )


# --------------------------------------------------------------------------------------------
# scores, loss, gradient, margins


def scores(W: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """z_{x,y} = u_yᵀ W e_x: W (..., d, d), E (..., n, d), U (..., m, d) -> (..., n, m)."""
    return inputs @ W.transpose(-1, -2) @ outputs.transpose(-1, -2)


def _gaps(z: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d_y' = z_y' - z_{f*(x)} (-inf at y' = f*(x)) and a = log Σ_{y'≠f*(x)} e^{d_y'}: (..., n, m), (..., n).

    The loss is softplus(a) and 1 - softmax_{f*(x)} is sigmoid(a): computed from a, neither rounds
    to 0 while the margin is below ~700 (logsumexp(z) - z_y and 1 - softmax do beyond a margin of
    ~37 in float64, which would freeze the margins of well-learned tokens)."""
    rows = torch.arange(z.shape[-2])
    gaps = z - z[..., rows, targets].unsqueeze(-1)
    gaps[..., rows, targets] = -math.inf
    return gaps, torch.logsumexp(gaps, -1)


def token_losses(W: torch.Tensor, problem: MemoryProblem) -> torch.Tensor:
    """ℓ(z_x, f*(x)) = log(1 + Σ_{y≠f*(x)} e^{z_y - z_{f*(x)}}) per token: (..., n)."""
    _, a = _gaps(scores(W, problem.inputs, problem.outputs), problem.targets)
    return F.softplus(a)


def memory_loss(W: torch.Tensor, problem: MemoryProblem, weights: torch.Tensor | None = None) -> torch.Tensor:
    """L(W) = Σ_x w(x) ℓ(z_x, f*(x)) with w = p (population) or given weights (a batch's
    empirical frequencies): (...)."""
    weights = problem.probs if weights is None else weights
    return (weights * token_losses(W, problem)).sum(-1)


def memory_gradient(
    W: torch.Tensor, problem: MemoryProblem, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """∇_W L = Uᵀ Gᵀ E with G[x, y] = w(x) (softmax(z_x) - δ_{f*(x)})_y, in closed form (the batched
    grids need no autograd graph; tests compare it with autograd)."""
    weights = problem.probs if weights is None else weights
    gaps, a = _gaps(scores(W, problem.inputs, problem.outputs), problem.targets)
    # softmax_y' = e^{d_y'} / (1 + e^a) for y' ≠ f*(x), and softmax - 1 = -sigmoid(a) at f*(x)
    residual = torch.exp(gaps - F.softplus(a).unsqueeze(-1))
    residual[..., torch.arange(gaps.shape[-2]), problem.targets] = -torch.sigmoid(a)
    g = weights.unsqueeze(-1) * residual  # (..., n, m)
    return problem.outputs.transpose(-1, -2) @ g.transpose(-1, -2) @ problem.inputs


def score_margins(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """z_{x,f*(x)} - max_{y≠f*(x)} z_{x,y} from scores z (..., n, m): (..., n)."""
    gaps, _ = _gaps(z, targets)
    return -gaps.amax(-1)


def margins(W: torch.Tensor, problem: MemoryProblem) -> torch.Tensor:
    """z_{x,f*(x)} - max_{y≠f*(x)} z_{x,y}: (..., n). Token x is recalled iff its margin is > 0."""
    return score_margins(scores(W, problem.inputs, problem.outputs), problem.targets)


def all_recalled(margins_: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Accuracy exactly 1: every token of positive probability recalled ((..., n) -> (...) bool).
    (Comparing Σ p(x) 1{recalled} with 1.0 would depend on how p rounds.)"""
    return ((margins_ > 0) | (probs <= 0)).all(-1)


def accuracy(W: torch.Tensor, problem: MemoryProblem) -> torch.Tensor:
    """Σ_x p(x) 1{x recalled}: the exact accuracy, (...)."""
    return (problem.probs * (margins(W, problem) > 0).to(problem.probs.dtype)).sum(-1)


def from_task(
    task: ZipfAssociations,
    dim: int,
    num_trials: int,
    *,
    seed: int,
    kind: EmbeddingKind = "gaussian",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MemoryProblem:
    """The task's problem for `num_trials` independent embedding draws of width `dim`: those of
    `draw_embeddings(range(R), N, M, [dim], seed=seed, kind=kind)` (so the q-scheme errors of
    birth.memories.scaling_laws.memory_errors with the same seed use the same ones), E (R, N, d),
    U (R, M, d), p and f* of the task."""
    emb = draw_embeddings(
        range(num_trials),
        task.num_inputs,
        task.num_outputs,
        [dim],
        seed=seed,
        kind=kind,
        device=device,
        dtype=dtype,
    )
    inputs, outputs = (t.clone() for t in emb.at(0))
    return MemoryProblem(inputs, outputs, task.probs().to(device), task.targets().to(device))


# --------------------------------------------------------------------------------------------
# training samples


def sample_batches(
    probs: torch.Tensor, num_trials: int, num_steps: int, batch_size: int, seed: int
) -> torch.Tensor:
    """Training inputs x ~ p, shape (R, num_steps, batch_size); trial r depends only on (seed, r)."""
    streams = [
        sample_inputs(probs, num_steps * batch_size, generator(seed, trial, SAMPLE_STREAM))
        for trial in range(num_trials)
    ]
    return rearrange(torch.stack(streams), "r (t b) -> r t b", b=batch_size)


def token_frequencies(
    batch: torch.Tensor, num_inputs: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Empirical frequencies of the inputs of a batch (..., b) -> (..., n): the batch-mean loss is
    memory_loss with these weights."""
    counts = torch.zeros(*batch.shape[:-1], num_inputs, dtype=dtype, device=batch.device)
    counts.scatter_add_(-1, batch, torch.ones(batch.shape, dtype=dtype, device=batch.device))
    return counts / batch.shape[-1]
