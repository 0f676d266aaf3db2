"""Gradient dynamics of associative memories (*Learning Associative Memories with Gradient Descent*,
Cabannes, Simsek, Bietti, ICML 2024).

Model: a linear memory W ∈ R^{d×d} between input embeddings e_x (x ∈ [n]) and output embeddings
u_y (y ∈ [m]), read out through the scores z_{x,y} = u_yᵀ W e_x, trained on the cross-entropy of
y = f*(x) under an input law p:

    L(W) = Σ_x p(x) ℓ(z_x, f*(x)),   ℓ(z, y) = -z_y + log Σ_y' exp z_y'.

The gradient has a closed form, ∇L = Σ_x p(x) Σ_y (softmax(z_x) - δ_{f*(x)})_y u_y e_xᵀ: every
association pushes W along u_y e_xᵀ (seed talks: "each association creates a landscape that pushes
towards u_y e_xᵀ"), and embeddings that are not orthogonal make those pushes interfere.

Everything here is a function of tensors with optional leading batch dimensions, so a grid of
problems (learning rates, imbalances, cosines) trains as one batched tensor program: W (..., d, d),
E (..., n, d), U (..., m, d), p (..., n), targets (n,). The margin of token x is
z_{x,f*(x)} - max_{y≠f*(x)} z_{x,y}: x is recalled (argmax is right) iff its margin is > 0, and the
accuracy is the exact Σ_x p(x) 1{margin_x > 0} (nothing sampled; a tie counts as wrong).

Also here: loss landscapes on a 2-D plane of matrices W(γ) = γ₀ A₀ + γ₁ A₁, top Hessian eigenvalue
by power iteration on autograd Hessian-vector products (never a dense Hessian), spike counting on a
loss curve, the (imbalance, step) phase diagram of the two-token problem, early stopping, and the
per-token W_OV² margins of the birth transformer with a small SGD loop for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from birth.base.seeds import generator

# --------------------------------------------------------------------------------------------
# problems: embeddings, input law, targets


def zipf_probs(n: int, exponent: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """p(x) ∝ (x + 1)^-exponent for x = 0..n-1 (exponent 0 is uniform)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    weights = torch.arange(1, n + 1, dtype=torch.float64).pow(-float(exponent))
    return (weights / weights.sum()).to(dtype)


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


def margins(W: torch.Tensor, problem: MemoryProblem) -> torch.Tensor:
    """z_{x,f*(x)} - max_{y≠f*(x)} z_{x,y}: (..., n). Token x is recalled iff its margin is > 0."""
    gaps, _ = _gaps(scores(W, problem.inputs, problem.outputs), problem.targets)
    return -gaps.amax(-1)


def all_recalled(margins_: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Accuracy exactly 1: every token of positive probability recalled ((..., n) -> (...) bool).
    (Comparing Σ p(x) 1{recalled} with 1.0 would depend on how p rounds.)"""
    return ((margins_ > 0) | (probs <= 0)).all(-1)


def accuracy(W: torch.Tensor, problem: MemoryProblem) -> torch.Tensor:
    """Σ_x p(x) 1{x recalled}: the exact accuracy, (...)."""
    return (problem.probs * (margins(W, problem) > 0).to(problem.probs.dtype)).sum(-1)


# --------------------------------------------------------------------------------------------
# gradient descent


@dataclass(frozen=True)
class Trajectory:
    """A training run recorded at `steps` (step 0 = initialization): loss (S,) + batch, exact
    accuracy (S,) + batch, margins (S,) + batch + (n,), and the final W."""

    steps: torch.Tensor
    loss: torch.Tensor
    accuracy: torch.Tensor
    margins: torch.Tensor
    weights: torch.Tensor

    def recall(self) -> torch.Tensor:
        """Per-token recall over time, (S, ..., n) bool."""
        return self.margins > 0


def batch_weights(problem: MemoryProblem, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Empirical frequencies of `batch_size` tokens drawn i.i.d. from p (one draw per problem of
    the batch): (..., n). The mini-batch gradient is memory_gradient with these weights."""
    probs = problem.probs.expand(*problem.batch_shape, problem.probs.shape[-1]).reshape(
        -1, problem.probs.shape[-1]
    )
    draws = torch.multinomial(probs.float(), batch_size, replacement=True, generator=gen)
    counts = torch.zeros_like(probs).scatter_add_(1, draws, torch.ones_like(draws, dtype=probs.dtype))
    return (counts / batch_size).reshape(*problem.batch_shape, -1)


def train(
    problem: MemoryProblem,
    lr: float | torch.Tensor,
    steps: int,
    *,
    batch_size: int = 0,
    seed: int = 0,
    init: torch.Tensor | None = None,
    record_every: int = 1,
    record_steps: Sequence[int] | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> Trajectory:
    """Gradient descent W ← W - η ∇L(W) from `init` (W = 0 by default).

    batch_size 0: full batch (the population loss, what the reference's 2-D experiments run);
    b > 0: mini-batch SGD on b tokens drawn from p at each step, the draws seeded by `seed` (one
    generator for the run, so a run depends only on its seed). `lr` may be a tensor broadcasting
    against the batch shape (one step size per problem of a grid). Records loss, accuracy and
    margins at step 0, every `record_every` steps and at the last (or exactly at `record_steps`, e.g.
    log-spaced, which must include 0); `callback(step, W)` sees W after each step.
    """
    if steps < 0 or record_every < 1 or batch_size < 0:
        raise ValueError("steps >= 0, record_every >= 1 and batch_size >= 0 are required")
    wanted = None if record_steps is None else set(int(s) for s in record_steps)
    if wanted is not None and (0 not in wanted or max(wanted) > steps or min(wanted) < 0):
        raise ValueError(f"record_steps must include 0 and lie in [0, {steps}]")
    W = problem.zeros() if init is None else init.clone().to(problem.inputs.dtype)
    lr_t = torch.as_tensor(lr, dtype=W.dtype)
    # one W per (step size, problem): the records then have the same shape from step 0 on
    batch = torch.broadcast_shapes(W.shape[:-2], lr_t.shape)
    W = W.expand(*batch, *W.shape[-2:]).clone()
    lr_t = lr_t.reshape(*lr_t.shape, 1, 1)
    gen = generator(seed, 0x5D) if batch_size else None
    recorded_steps, losses, accs, margs = [], [], [], []

    def record(step: int) -> None:
        recorded_steps.append(step)
        losses.append(memory_loss(W, problem))
        margs.append(margins(W, problem))
        accs.append((problem.probs * (margs[-1] > 0).to(W.dtype)).sum(-1))

    record(0)
    for step in range(1, steps + 1):
        weights = batch_weights(problem, batch_size, gen) if batch_size else None
        W = W - lr_t * memory_gradient(W, problem, weights)
        if callback is not None:
            callback(step, W)
        if (step in wanted) if wanted is not None else (step % record_every == 0 or step == steps):
            record(step)
    return Trajectory(
        torch.tensor(recorded_steps), torch.stack(losses), torch.stack(accs), torch.stack(margs), W
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
    """A_k = 1_k 1_kᵀ, k = 0, 1: the plane span(e_i e_iᵀ) of the seed talk's level lines (2, d, d)."""
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
    batch_size 0 is full batch; b > 0 draws b tokens from p per step (seeded)."""
    gamma = torch.tensor(start, dtype=basis.dtype)
    gen = generator(seed, 0x1A) if batch_size else None
    path = [gamma]
    for _ in range(steps):
        weights = batch_weights(problem, batch_size, gen) if batch_size else None
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


def sharpness_along(
    problem: MemoryProblem,
    lr: float | torch.Tensor,
    steps: int,
    *,
    every: int = 1,
    iters: int = 100,
    tol: float = 1e-7,
    batch_size: int = 0,
    seed: int = 0,
) -> tuple[Trajectory, torch.Tensor, torch.Tensor]:
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
        value, vec = top_hessian_eigenvalue(
            lambda w: memory_loss(w, problem),
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
    traj = train(problem, lr_t, steps, batch_size=batch_size, seed=seed, init=init, callback=measure)
    return traj, torch.tensor(measured_steps), torch.stack(values)


# --------------------------------------------------------------------------------------------
# forgetting


def forgetting_events(recall: torch.Tensor) -> torch.Tensor:
    """Per token, how many times a recalled token stops being recalled: recall (S, n) bool -> (n,)."""
    return (recall[:-1] & ~recall[1:]).sum(0)


# --------------------------------------------------------------------------------------------
# phase diagram of the two-token problem


@dataclass(frozen=True)
class PhaseDiagram:
    """First step at accuracy 1 (-1: never) and final accuracy over (cosine, p, lr) grids."""

    cosines: torch.Tensor  # (A,)
    p_first: torch.Tensor  # (P,)
    lrs: torch.Tensor  # (L,)
    first_step: torch.Tensor  # (A, P, L) long, -1 where accuracy 1 is never reached
    final_accuracy: torch.Tensor  # (A, P, L)
    spikes: torch.Tensor  # (A, P, L) count_spikes of each loss curve


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


def phase_diagram(
    cosines: Sequence[float],
    p_first: Sequence[float],
    lrs: Sequence[float],
    steps: int,
    *,
    spike_factor: float = 2.0,
    spike_floor: float = 1e-3,
) -> PhaseDiagram:
    """Full-batch GD from W = 0 on the two-token problem at every (cosine, p, lr), all at once; the
    first step at accuracy 1 and the spikes are tracked along the way (no curve is stored)."""
    c = torch.as_tensor(cosines, dtype=torch.float64)
    p = torch.as_tensor(p_first, dtype=torch.float64)
    lr = torch.as_tensor(lrs, dtype=torch.float64)
    A, P, L = len(c), len(p), len(lr)
    # E (A, 1, 1, 2, 2): rows e_0 = (1, 0), e_1 = (c, √(1-c²)), the reference's embeddings
    E = torch.zeros(A, 2, 2, dtype=torch.float64)
    E[:, 0, 0] = 1.0
    E[:, 1, 0] = c
    E[:, 1, 1] = (1.0 - c * c).clamp_min(0.0).sqrt()
    probs = torch.stack([p, 1.0 - p], -1)  # (P, 2)
    problem = MemoryProblem(
        E[:, None, None], torch.eye(2, dtype=torch.float64), probs[None, :, None], torch.arange(2)
    )
    W = torch.zeros(A, P, L, 2, 2, dtype=torch.float64)
    step_size = lr.reshape(1, 1, L, 1, 1)
    first = torch.full((A, P, L), -1, dtype=torch.long)
    spikes = SpikeCounter(first.shape, spike_factor, spike_floor)

    def observe(step: int) -> None:
        spikes.update(memory_loss(W, problem))
        now = all_recalled(margins(W, problem), problem.probs) & (first < 0)
        first[now] = step

    observe(0)
    for step in range(1, steps + 1):
        W = W - step_size * memory_gradient(W, problem)
        observe(step)
    return PhaseDiagram(c, p, lr, first, accuracy(W, problem), spikes.count)


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


# --------------------------------------------------------------------------------------------
# the birth transformer: the W_OV² memory and a plain SGD loop


def ov_margins(model: torch.nn.Module, layer: int = -1) -> torch.Tensor:
    """Per-token margins of the W_OV memory of `layer` (default: the last) of a birth model: (N,).

    Token k is stored when the unembedding ranks k first for the value-output image of its
    embedding, w_U(j)ᵀ W_O W_V w_E(k) (the paper's W_OV² probe): margin_k = score_k - max_{j≠k}
    score_j. Biases are left out, as in the probe (they are zero in the birth model)."""
    from birth.models.transformer import attn_linear, native

    nm = native(model)
    index = layer % len(nm.layers)
    E, U = nm.tok_embed.weight, nm.head.weight  # [N, d] rows
    with torch.no_grad():
        values = F.linear(
            F.linear(E, attn_linear(model, index, "v").weight), attn_linear(model, index, "o").weight
        )
        s = values @ U.t()  # [N (token k), N (output j)]
        gaps, _ = _gaps(s.double(), torch.arange(s.shape[0], device=s.device))
    return -gaps.amax(-1).cpu()


@dataclass(frozen=True)
class TransformerTrajectory:
    """A transformer SGD run: per step (before its update) the batch loss and in-context accuracy;
    the W_OV² margins at `margin_steps`; `diverged`: first step with a non-finite loss (None)."""

    loss: torch.Tensor  # (steps,), NaN after a divergence
    accuracy: torch.Tensor  # (steps,)
    margin_steps: torch.Tensor  # (K,)
    margins: torch.Tensor  # (K, N)
    diverged: int | None


def train_transformer_sgd(
    model: torch.nn.Module,
    trainable: Sequence[torch.nn.Parameter],
    batches: Sequence,
    lr: float,
    *,
    eval_batch=None,
    min_counter: int = 2,
    margin_every: int = 1,
) -> TransformerTrajectory:
    """Plain SGD (no momentum, no weight decay: the dynamics the memory theory describes) of the
    parameters `trainable` only, on the cross-entropy of the targets whose counter is >= min_counter
    (the paper's loss: second and later occurrences of a trigger), one batch per step.

    `batches`: the tasks.triggered_bigram.Batch of each step (drawn by the caller from seeded
    generators; every run of a comparison can share them). `eval_batch`: a fixed batch on which
    the recorded loss and accuracy are measured before every step (default: the step's own batch,
    whose batch-to-batch noise would hide the spikes of the dynamics). The model's other
    parameters are frozen for the run (requires_grad is set here). Logits: birth.models.transformer.fast_logits.
    """
    from birth.models.transformer import fast_logits

    chosen = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    params = list(trainable)
    steps = len(batches)
    loss = torch.full((steps,), math.nan, dtype=torch.float64)
    acc = torch.full((steps,), math.nan, dtype=torch.float64)
    margin_steps, margins = [0], [ov_margins(model)]
    diverged = None

    def objective(batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        mask = batch.counter >= min_counter
        if not bool(mask.any()):
            return None
        logits = fast_logits(model, batch.inputs, positions=mask)
        targets = batch.targets[mask]
        return F.cross_entropy(logits, targets), (logits.argmax(-1) == targets).double().mean()

    for step, batch in enumerate(batches):
        if eval_batch is not None:
            with torch.no_grad():
                measured = objective(eval_batch)
        train_obj = objective(batch)
        if eval_batch is None:
            measured = train_obj
        if measured is not None:
            loss[step], acc[step] = float(measured[0].detach()), float(measured[1])
            if not math.isfinite(float(loss[step])):
                diverged = step
                break
        if train_obj is None:
            continue  # no in-context target in this batch: nothing to learn from
        if not torch.isfinite(train_obj[0]):
            diverged = step
            break
        grads = torch.autograd.grad(train_obj[0], params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
        if (step + 1) % margin_every == 0 or step + 1 == steps:
            margin_steps.append(step + 1)
            margins.append(ov_margins(model))
    return TransformerTrajectory(loss, acc, torch.tensor(margin_steps), torch.stack(margins), diverged)
