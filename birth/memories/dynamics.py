"""Gradient dynamics of associative memories (*Learning Associative Memories with Gradient Descent*,
Cabannes, Simsek, Bietti, ICML 2024): what to measure along a training run of a linear memory.

The problem and its closed-form loss, gradient and margins are in birth.memories.problem; runs are
trained by training.memories. Here: the margins' growth like log t with orthonormal embeddings
(gradient-flow solution and exact recursion), spike counting on loss curves, loss landscapes on a
2-D plane of matrices W(γ) = γ₀ A₀ + γ₁ A₁ with (S)GD paths on it, the top Hessian eigenvalue by
power iteration on autograd Hessian-vector products (never a dense Hessian), forgetting events,
and early stopping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from birth.base.seeds import generator
from birth.memories.problem import (
    MemoryProblem,
    memory_gradient,
    sample_batches,
    token_frequencies,
    token_losses,
)

# --------------------------------------------------------------------------------------------
# margins: growth like log t


@dataclass(frozen=True)
class LogFit:
    slope: float  # d margin / d log t
    intercept: float


def fit_log_growth(
    steps: Sequence[float] | torch.Tensor, values: Sequence[float] | torch.Tensor, from_step: float = 1.0
) -> LogFit:
    """Least-squares fit values ≈ slope · log t + intercept over the steps t >= from_step (> 0)."""
    t = torch.as_tensor(steps, dtype=torch.float64)
    v = torch.as_tensor(values, dtype=torch.float64)
    keep = (t >= max(from_step, 1e-12)) & torch.isfinite(v)
    if int(keep.sum()) < 2:
        raise ValueError("a log fit needs at least two finite points at t >= from_step")
    x, y = t[keep].log(), v[keep]
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    return LogFit(slope, float(y.mean() - slope * x.mean()))


def orthogonal_margin_theory(steps: torch.Tensor, lr: float, prob: float, n_outputs: int) -> torch.Tensor:
    """Margin of a token under gradient flow with orthonormal embeddings (n <= d, m <= d), W_0 = 0.

    The scores of x evolve alone: z ← z - η p(x) (softmax(z) - δ_y); they start equal and keep
    a zero sum, so the margin m obeys dm/dt = η p m_out / (e^m + m_out - 1), whose solution is
        e^m + (m_out - 1) m = η p m_out t + 1,
    m ≈ log(η p m_out t) for large t: slope 1 in log t whatever η and p (only the offset moves).
    Solved here for m by Newton's method (the left side is convex and increasing in m >= 0)."""
    t = torch.as_tensor(steps, dtype=torch.float64)
    target = lr * prob * n_outputs * t + 1.0
    m = torch.log(target)  # an upper bound of the root (the left side is >= e^m): Newton decreases
    for _ in range(100):
        f = torch.exp(m) + (n_outputs - 1) * m - target
        m = m - f / (torch.exp(m) + n_outputs - 1)
    return m


def orthogonal_margin_recursion(
    steps: int, lr: float | torch.Tensor, probs: torch.Tensor, n_outputs: int
) -> torch.Tensor:
    """Margins of full-batch GD from W = 0 with orthonormal embeddings, exactly: (steps+1, ...).

    Each token's scores move alone (z ← z - η p (softmax(z) - δ_y)), the m-1 wrong scores stay
    equal, and the margin follows the scalar recursion
        m_{t+1} = m_t + η p m_out / (e^{m_t} + m_out - 1),   m_0 = 0,
    whose first step is m_1 = η p. Once e^{m_t} is large, e^{m_t} grows by about η p m_out per
    step: m_t ≈ log(e^{m_1} + η p m_out t), slope 1 in log t once η p m_out t > e^{η p}."""
    rate = torch.as_tensor(lr, dtype=torch.float64) * torch.as_tensor(probs, dtype=torch.float64) * n_outputs
    m = torch.zeros_like(rate)
    out = [m]
    for _ in range(steps):
        decay = torch.exp(-m)  # written with e^{-m} so that large margins do not overflow
        m = m + rate * decay / (1.0 + (n_outputs - 1) * decay)
        out.append(m)
    return torch.stack(out)


def log_spaced_steps(steps: int, count: int) -> list[int]:
    """About `count` distinct integers log-spaced in [1, steps], with 0 first."""
    points = torch.logspace(0, math.log10(max(steps, 1)), count, dtype=torch.float64).round().long()
    return [0, *sorted(set(points.tolist()))]


# --------------------------------------------------------------------------------------------
# spikes


def count_spikes(values: Sequence[float] | torch.Tensor, factor: float = 2.0, floor: float = 0.0) -> int:
    """Number of loss spikes in a series.

    A spike starts at step t when values[t] exceeds max(factor · m_t, floor), m_t the running
    minimum of values[:t], while values[t-1] did not; the run of steps above that level is one
    spike. A decreasing curve has none; 1, 3, 1, 3, ... with factor 2 has one per rise. `floor`
    keeps tiny relative wobbles of a loss near 0 (rounding noise) from counting. NaN or inf values
    count as above the level (a diverged loss is a spike).
    """
    if not factor > 1.0:
        raise ValueError(f"spike factor must be > 1, got {factor}")
    v = torch.as_tensor(values, dtype=torch.float64).flatten().tolist()
    spikes, above, running_min = 0, False, math.inf
    for value in v:
        level = max(factor * running_min, floor)
        now_above = not math.isfinite(value) or (math.isfinite(level) and value > level)
        if now_above and not above:
            spikes += 1
        above = now_above
        if math.isfinite(value):
            running_min = min(running_min, value)
    return spikes


def first_step_at(
    steps: Sequence[int] | torch.Tensor,
    values: Sequence[float] | torch.Tensor,
    threshold: float,
    *,
    stays: bool = False,
) -> int | None:
    """First recorded step whose value is >= threshold (None if never); with `stays`, the first
    step from which every later value is >= threshold."""
    s = torch.as_tensor(steps).tolist()
    ok = (torch.as_tensor(values, dtype=torch.float64) >= threshold).tolist()
    if not stays:
        return next((int(t) for t, good in zip(s, ok) if good), None)
    first = None
    for t, good in zip(s, ok):
        if good and first is None:
            first = int(t)
        elif not good:
            first = None
    return first


# --------------------------------------------------------------------------------------------
# landscapes on a plane of matrices


def plane_matrices(basis: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """W(γ) = Σ_k γ_k A_k: basis (2, d, d), gammas (..., 2) -> (..., d, d)."""
    return torch.einsum("...k,kij->...ij", gammas.to(basis.dtype), basis)


def memory_basis(problem: MemoryProblem, tokens: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """A_k = u_{f*(x_k)} e_{x_k}ᵀ for two tokens: the plane spanned by their memories (2, d, d)."""
    rows = [torch.outer(problem.outputs[problem.targets[x]], problem.inputs[x]) for x in tokens]
    return torch.stack(rows)


def diagonal_basis(d: int = 2, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A_k = 1_k 1_kᵀ, k = 0, 1: the plane span(e_i e_iᵀ) of the level lines in the talk *Associative
    Memory with Heavy-Tailed Data* (2, d, d)."""
    basis = torch.zeros(2, d, d, dtype=dtype)
    basis[0, 0, 0] = basis[1, 1, 1] = 1.0
    return basis


def landscape(
    problem: MemoryProblem, basis: torch.Tensor, gamma0: torch.Tensor, gamma1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss on the grid W(γ₀[i], γ₁[j]): the total L (G0, G1) and each token's ℓ_x (n, G0, G1)."""
    grid = torch.stack(torch.meshgrid(gamma0, gamma1, indexing="ij"), -1)  # (G0, G1, 2)
    per_token = token_losses(plane_matrices(basis, grid), problem)  # (G0, G1, n)
    return (problem.probs * per_token).sum(-1), per_token.permute(2, 0, 1)


def plane_trajectory(
    problem: MemoryProblem,
    basis: torch.Tensor,
    lr: float,
    steps: int,
    *,
    start: tuple[float, float] = (0.0, 0.0),
    batch_size: int = 0,
    seed: int = 0,
) -> torch.Tensor:
    """(S)GD on γ for the model W(γ) = γ₀ A₀ + γ₁ A₁: ∂L/∂γ_k = ⟨∇_W L, A_k⟩. Returns (steps+1, 2).
    batch_size 0 is full batch; b > 0 draws b tokens from p per step (`sample_batches`, seeded)."""
    gamma = torch.tensor(start, dtype=basis.dtype)
    batches = sample_batches(problem.probs, 1, steps, batch_size, seed)[0] if batch_size else None
    path = [gamma]
    for step in range(steps):
        weights = None if batches is None else token_frequencies(batches[step], len(problem.probs))
        grad_w = memory_gradient(plane_matrices(basis, gamma), problem, weights)
        gamma = gamma - lr * torch.einsum("ij,kij->k", grad_w, basis)
        path.append(gamma)
    return torch.stack(path)


# --------------------------------------------------------------------------------------------
# sharpness


def hessian_vector_product(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], params: torch.Tensor, vector: torch.Tensor
) -> torch.Tensor:
    """H v for H the Hessian of loss_fn(params).sum() at params, by double backward (the Hessian is
    never formed: two backward passes per product)."""
    p = params.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(p).sum(), p, create_graph=True)
    (hv,) = torch.autograd.grad(grad, p, grad_outputs=vector)
    return hv.detach()


def top_hessian_eigenvalue(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    params: torch.Tensor,
    *,
    batch_dims: int = 0,
    iters: int = 100,
    tol: float = 1e-10,
    atol: float = 1e-12,
    seed: int = 0,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvalue of largest magnitude of the Hessian of loss_fn at params, and a unit
    eigenvector, by power iteration on Hessian-vector products (for the convex memory loss it is the
    top eigenvalue: the sharpness).

    With batch_dims = k, the first k dimensions of params index independent problems and loss_fn
    returns their losses (shape params.shape[:k]): the Hessian of the sum is block diagonal, so one
    product per iteration serves every problem, each normalized on its own. Stops when every
    Rayleigh quotient moves by < tol·|value| + atol (atol: a flat problem, eigenvalue ~0, has no
    relative precision to reach) or after `iters` products. `init` warm-starts from
    a previous eigenvector (along training the top direction moves slowly). Returns the eigenvalues
    (shape params.shape[:k]; a 0-dim tensor without batch) and the eigenvectors (params' shape).
    """
    event = tuple(range(batch_dims, params.dim()))
    if init is not None:
        v = init.clone()
    else:
        v = torch.randn(params.shape, generator=generator(seed, 0x4E), dtype=params.dtype)
    v = v / v.norm(dim=event, keepdim=True)
    value = torch.full(params.shape[:batch_dims], math.nan, dtype=params.dtype)
    for _ in range(iters):
        hv = hessian_vector_product(loss_fn, params, v)
        new_value = (v * hv).sum(event)  # Rayleigh quotient
        norm = hv.norm(dim=event, keepdim=True)
        flat = norm == 0  # H v = 0: the eigenvalue is 0 along v (keep v)
        v = torch.where(flat, v, hv / norm.clamp_min(1e-300))
        done = (new_value - value).abs() <= tol * new_value.abs() + atol
        value = new_value
        if bool(done.all()):
            break
    return value, v


# --------------------------------------------------------------------------------------------
# forgetting


def forgetting_events(recall: torch.Tensor) -> torch.Tensor:
    """Per token, how many times a recalled token stops being recalled: recall (S, n) bool -> (n,)."""
    return (recall[:-1] & ~recall[1:]).sum(0)


class SpikeCounter:
    """`count_spikes` over many loss curves at once, one step at a time (nothing is stored: a
    10⁴-step phase diagram of 8000 problems would otherwise keep every loss)."""

    def __init__(self, shape: torch.Size, factor: float = 2.0, floor: float = 0.0) -> None:
        if not factor > 1.0:
            raise ValueError(f"spike factor must be > 1, got {factor}")
        self.factor, self.floor = factor, floor
        self.count = torch.zeros(shape, dtype=torch.long)
        self.above = torch.zeros(shape, dtype=torch.bool)
        self.running_min = torch.full(shape, math.inf, dtype=torch.float64)

    def update(self, values: torch.Tensor) -> None:
        finite = torch.isfinite(values)
        level = torch.clamp(self.factor * self.running_min, min=self.floor)
        now_above = ~finite | (torch.isfinite(level) & (values > level))
        self.count += (now_above & ~self.above).long()
        self.above = now_above
        self.running_min = torch.where(finite, torch.minimum(self.running_min, values), self.running_min)


# --------------------------------------------------------------------------------------------
# early stopping


@dataclass(frozen=True)
class EarlyStop:
    best_step: int
    best_error: float
    final_error: float


def early_stopping(steps: Sequence[int] | torch.Tensor, errors: Sequence[float] | torch.Tensor) -> EarlyStop:
    """The recorded step of lowest error (the first one on ties) against the last error."""
    e = torch.as_tensor(errors, dtype=torch.float64)
    s = torch.as_tensor(steps)
    k = int(torch.argmin(e))  # argmin returns the first minimum
    return EarlyStop(int(s[k]), float(e[k]), float(e[-1]))
