"""Associative memories trained by gradient descent (*Learning Associative Memories with Gradient
Descent*, Cabannes, Simsek, Bietti, ICML 2024; *Scaling Laws for Associative Memories*, section 5).

Model: logits_y(x) = u_yᵀ h(x), h(x) = W e_x, or LayerNorm(W e_x) (no learned affine: the
normalization only, which is what changes the dynamics), trained from W = 0 on the cross-entropy
of y = f*(x) with samples x ~ p. Optimizers: SGD (optional lr drop), Adam (a real Adam with
β = (0.9, 0.999) by default — the reference's "Adam" had β = 0, i.e. sign-SGD), and sign-SGD as its
own option. Optionally the embeddings E, U are learned too.

All trials run at once: W has shape (R, d, d) and the loss is the *sum over trials* of each trial's
batch-mean cross-entropy, so each trial's gradient is its own; SGD, sign-SGD and Adam act
elementwise, so the trials stay independent. The error is the exact Σ_x p(x) 1{wrong}, at chosen
steps. `approximate_q_dynamics` runs the decoupled update q ← q + γ (c_t(x)/b) / (1 + e^q / M) on
the same samples (c_t(x): occurrences of x in the step-t batch of size b), which for b = 1 is the
q_γ = F(n_x) scheme of birth.memories.scaling_laws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from birth.memories.scaling_laws import draw_embeddings, errors_from_scores
from tasks.zipf import ZipfAssociations, trial_generator

MemoryOptimizer = Literal["sgd", "adam", "sign"]
OPTIMIZERS: tuple[str, ...] = get_args(MemoryOptimizer)


@dataclass(frozen=True)
class MemoryTrainConfig:
    """How a memory is trained (named apart from the transformer's `training.config.TrainConfig`)."""

    optimizer: MemoryOptimizer = "sgd"  # sign = SGD on the sign of the gradient
    lr: float = 1.0  # step size γ
    batch_size: int = 1  # samples per step
    num_steps: int = 1000  # optimization steps
    lr_drop_step: int | None = None  # multiply the lr by lr_drop_factor from this step on
    lr_drop_factor: float = 0.1  # factor of the lr drop
    layer_norm: bool = False  # LayerNorm (no affine) on W e_x
    learn_embeddings: bool = False  # train E and U too (from their random draw)
    adam_betas: tuple[float, float] = (0.9, 0.999)  # Adam's (β1, β2); (0, 0) is sign-SGD
    eval_steps: tuple[int, ...] = ()  # steps after which to measure (0 = init); the last step always
    track_coefficients: bool = False  # record Q with W = Σ Q[y, x] u_y e_xᵀ (plain SGD only)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.batch_size < 1 or self.num_steps < 0:
            raise ValueError("batch_size must be >= 1 and num_steps >= 0")
        if not (math.isfinite(self.lr_drop_factor) and self.lr_drop_factor > 0):
            raise ValueError(f"lr_drop_factor must be a finite number > 0, got {self.lr_drop_factor}")
        if not all(0.0 <= b < 1.0 for b in self.adam_betas):  # also refuses nan
            raise ValueError(f"adam betas must lie in [0, 1), got {self.adam_betas}")
        if any(s < 0 or s > self.num_steps for s in self.eval_steps):
            raise ValueError(f"eval steps must lie in [0, num_steps={self.num_steps}]")
        if self.track_coefficients and (self.optimizer != "sgd" or self.layer_norm or self.learn_embeddings):
            # only then does every update lie in span(u_y e_xᵀ) with known coefficients
            raise ValueError(
                "track_coefficients needs plain SGD: optimizer 'sgd', no layer_norm, fixed embeddings"
            )


def sample_batches(
    task: ZipfAssociations, num_trials: int, num_steps: int, batch_size: int, seed: int
) -> torch.Tensor:
    """Training inputs x, shape (R, num_steps, batch_size); trial r depends only on (seed, r)."""
    streams = [
        task.sample(num_steps * batch_size, trial_generator(seed, trial, 0xDA7A))[0]
        for trial in range(num_trials)
    ]
    return rearrange(torch.stack(streams), "r (t b) -> r t b", b=batch_size)


def _hidden(memory: torch.Tensor, inputs: torch.Tensor, layer_norm: bool) -> torch.Tensor:
    """h = W e for a batch: memory (R, d, d), inputs (R, B, d) -> (R, B, d)."""
    hidden = einsum(memory, inputs, "r i j, r b j -> r b i")
    return F.layer_norm(hidden, hidden.shape[-1:]) if layer_norm else hidden


def exact_error(
    memory: torch.Tensor,
    inputs: torch.Tensor,
    outputs: torch.Tensor,
    targets: torch.Tensor,
    probs: torch.Tensor,
    layer_norm: bool = False,
) -> torch.Tensor:
    """Σ_x p(x) 1{argmax_y u_yᵀ h(x) ≠ f*(x)} per trial: memory (R,d,d), inputs (R,N,d), outputs (R,M,d)."""
    hidden = _hidden(memory, inputs, layer_norm)  # (R, N, d)
    scores = einsum(outputs, hidden, "r m d, r n d -> r m n")
    head, tail = errors_from_scores(scores, targets, probs.to(scores.device, torch.float64), 0)
    return head + tail


def train_memory(
    task: ZipfAssociations,
    dim: int,
    num_trials: int,
    config: MemoryTrainConfig,
    *,
    seed: int,
    kind: str = "gaussian",
    batches: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Train W (and optionally E, U) for num_trials independent trials; returns error curves.

    Embeddings are those of birth.memories.scaling_laws.draw_embeddings(range(R), N, M, [dim], seed=seed), so the
    q-scheme errors of birth.memories.scaling_laws.memory_errors(..., dims=[dim], seed=seed) use the same ones.
    `batches` (R, steps, b) overrides the sampled data (seeded by `seed` otherwise).
    Returns {"steps": (C,), "error": (R, C), "batches": (R, steps, b), "memory": the final W (R, d, d),
    "inputs": (R, N, d), "outputs": (R, M, d) (the final embeddings)}, and with
    `config.track_coefficients` "coefficients" (R, C, M, N): the Q of W = Σ_{y,x} Q[y, x] u_y e_xᵀ
    at each eval step. From W = 0 every SGD step adds −(γ/b) Σ_i (softmax_y − 1{y = y_i}) u_y e_{x_i}ᵀ,
    so Q is exact at any d, even when the embeddings are linearly dependent (d < N).
    """
    probs, targets = task.probs(), task.targets().to(device)
    if batches is None:
        batches = sample_batches(task, num_trials, config.num_steps, config.batch_size, seed)
    if batches.shape != (num_trials, config.num_steps, config.batch_size):
        raise ValueError(f"batches must have shape {(num_trials, config.num_steps, config.batch_size)}")
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
    memory = torch.zeros(num_trials, dim, dim, device=device, dtype=dtype, requires_grad=True)
    params = [memory]
    if config.learn_embeddings:
        inputs.requires_grad_(True)
        outputs.requires_grad_(True)
        params += [inputs, outputs]

    if config.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.adam_betas)
    else:  # sign-SGD is SGD on the sign of the gradient (done below, before the step)
        optimizer = torch.optim.SGD(params, lr=config.lr)
    batches = batches.to(device)
    eval_steps = sorted(set(int(s) for s in config.eval_steps) | {config.num_steps})
    errors = torch.zeros(num_trials, len(eval_steps), dtype=torch.float64)
    track = config.track_coefficients
    if track:
        coefficients = torch.zeros(
            num_trials, task.num_outputs, task.num_inputs, device=device, dtype=torch.float64
        )
        snapshots = torch.zeros(
            num_trials, len(eval_steps), task.num_outputs, task.num_inputs, dtype=torch.float64
        )
        one_hot = F.one_hot(targets, task.num_outputs).to(torch.float64)  # (N, M)

    def measure(column: int) -> None:
        with torch.no_grad():
            errors[:, column] = exact_error(memory, inputs, outputs, targets, probs, config.layer_norm).cpu()
        if track:
            snapshots[:, column] = coefficients.cpu()

    column = 0
    if eval_steps[0] == 0:
        measure(0)
        column = 1
    lr = config.lr
    for step in range(config.num_steps):
        if config.lr_drop_step is not None and step == config.lr_drop_step:
            lr = config.lr * config.lr_drop_factor
            for group in optimizer.param_groups:
                group["lr"] = lr
        x = batches[:, step]  # (R, b)
        e_batch = torch.gather(inputs, 1, x[..., None].expand(-1, -1, dim))  # (R, b, d)
        logits = einsum(outputs, _hidden(memory, e_batch, config.layer_norm), "r m d, r b d -> r b m")
        # sum over trials of the per-trial batch mean: trials do not share gradients
        loss = (
            F.cross_entropy(rearrange(logits, "r b m -> (r b) m"), targets[x].reshape(-1), reduction="sum")
            / config.batch_size
        )
        if track:
            with torch.no_grad():  # the coefficient of u_y e_xᵀ in this step's −γ ∇W
                residual = torch.softmax(logits.to(torch.float64), -1) - one_hot[x]  # (R, b, M)
                index = x[:, None, :].expand(-1, task.num_outputs, -1)
                coefficients.scatter_add_(2, index, residual.transpose(1, 2) * (-lr / config.batch_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optimizer == "sign":
            for p in params:
                p.grad.sign_()
        optimizer.step()
        if column < len(eval_steps) and step + 1 == eval_steps[column]:
            measure(column)
            column += 1
    out = {
        "steps": torch.tensor(eval_steps),
        "error": errors,
        "batches": batches.cpu(),
        "memory": memory.detach().cpu(),
        "inputs": inputs.detach().cpu(),
        "outputs": outputs.detach().cpu(),
    }
    if track:
        out["coefficients"] = snapshots
    return out


def approximate_q_dynamics(
    batches: torch.Tensor, num_inputs: int, num_outputs: int, gamma: float, eval_steps: Sequence[int]
) -> torch.Tensor:
    """q after each eval step under q ← q + γ (c_t(x)/b) / (1 + e^q / M), from q = 0.

    batches (R, steps, b) long. Returns q of shape (R, len(eval_steps), N), float64. For b = 1 this
    equals birth.memories.scaling_laws.q_sgd(counts, γ, M) with the counts of the first `step` samples.
    """
    num_trials, num_steps, batch = batches.shape
    q = torch.zeros(num_trials, num_inputs, dtype=torch.float64)
    out = torch.zeros(num_trials, len(eval_steps), num_inputs, dtype=torch.float64)
    wanted = {int(s): i for i, s in enumerate(eval_steps)}
    if 0 in wanted:
        out[:, wanted[0]] = q
    for step in range(num_steps):
        hits = F.one_hot(batches[:, step], num_inputs).sum(1).to(torch.float64)  # (R, N)
        q = q + gamma * hits / batch / (1.0 + torch.exp(q.clamp(max=700.0)) / num_outputs)
        if step + 1 in wanted:
            out[:, wanted[step + 1]] = q
    return out
