"""The associative-memory trainer: one batched loop for every trained memory of the toolkit.

Model (Cabannes, Simsek, Bietti, ICML 2024; Cabannes, Dohmatob, Bietti, ICLR 2024, section 5):
logits_y(x) = u_yᵀ h(x) with h(x) = W z(x), or LayerNorm(W z(x)) (no learned affine: the
normalization only, which is what changes the dynamics), trained on the cross-entropy of
y = f*(x) for the inputs x of a `birth.memories.problem.MemoryProblem`. The feature map z:
  - matrix:  z(x) = e_x, W (d × d) trained, E and U fixed;
  - learned: the same with E and U trained too;
  - relu:    z(x) = φ(x), φ(x)_x' = ReLU(k_x'ᵀ k_x − η) over the N stored keys k = e / ‖e‖, and
             W = V (d × N): the ReLU-thresholded memory of the talk *Associative Memory with
             Heavy-Tailed Data* (Bietti, Cabannes et al.), trainable (the threshold removes the
             cross-talk of nearly orthogonal keys).
W starts at 0 or with N(0, 1/d) entries drawn per trial. Optimizers: SGD (optional lr drop),
sign-SGD, Adam (β = (0.9, 0.999) by default; (0, 0) is sign-SGD), with the step as given or, with
`adam_scaling="width"`, lr / d on W (lr / √d on V and the embeddings: the step follows the size of
the coordinates of a solution).

Data: `batch_size` b >= 1 draws b samples per step (`birth.memories.problem.sample_batches`, one
seeded stream per trial, or the caller's `batches`); b = 0 is full batch, the population loss
Σ_x p(x) ℓ_x. Gradients:
  - autograd: the loss is the sum over trials of each trial's batch-mean cross-entropy, so each
    trial's gradient is its own; SGD, sign-SGD and Adam act elementwise, so the trials stay
    independent. Any feature map, LayerNorm and optimizer; problems (R, N, d), one step size.
  - closed-form: ∇_W Σ_x w(x) ℓ_x = Uᵀ Gᵀ E (birth.memories.problem.memory_gradient) with w = p
    (full batch) or the batch's empirical frequencies: the plain linear memory with (sign-)SGD, for
    any leading batch shape and a tensor of step sizes (a grid of problems and step sizes is one
    tensor program, W ← W − η ∇L), with no autograd graph; it keeps the gradient of tokens whose
    margin is beyond ~37, where 1 − softmax rounds to 0.
Records at the evaluation steps: the exact error Σ_x p(x) 1{argmax_y u_yᵀ h(x) ≠ f*(x)} (a tie or a
non-finite score counts as wrong) and, for the plain linear memory, the population loss, the margins
and the accuracy Σ_x p(x) 1{margin_x > 0}; optionally (plain SGD) the coefficients Q of
W = Σ Q[y, x] u_y e_xᵀ. `approximate_q_dynamics` runs the decoupled update
q ← q + γ (c_t(x)/b) / (1 + e^q / M) on the same samples, which for b = 1 is the q_γ = F(n_x) scheme
of birth.memories.scaling_laws.

The map h is a `LinearMap` (W z) or, for features "mlp", an `MlpMap` h(x) = W ReLU(A e_x) (d → m → d,
A and W trained, E and U fixed); another memory is another map with the same two methods, trained by
the same loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from birth.base.seeds import generator
from birth.base.validate import Float, Floats, Int, Validated
from birth.memories.problem import (
    MemoryProblem,
    margins,
    memory_gradient,
    memory_loss,
    sample_batches,
    token_frequencies,
)
from birth.memories.scaling_laws import errors_from_scores

Optimizer = Literal["sgd", "adam", "sign"]
FeatureMap = Literal["matrix", "learned", "relu", "mlp"]
Init = Literal["zero", "gaussian"]
Gradient = Literal["autograd", "closed-form"]
AdamScaling = Literal["none", "width"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
FEATURE_MAPS: tuple[str, ...] = get_args(FeatureMap)

INIT_STREAM = 0x1417  # the initial W of trial r is drawn from generator(seed, r, INIT_STREAM)
HIDDEN_STREAM = 0x1418  # the mlp memory's first layer of trial r: generator(seed, r, HIDDEN_STREAM)


@dataclass(frozen=True)
class MemoryTrainConfig(Validated):
    """How a memory is trained (named apart from the transformer's `training.config.TrainConfig`)."""

    optimizer: Optimizer = "sgd"  # sign = SGD on the sign of the gradient
    lr: Annotated[float, Float(0.0, open_low=True)] = 1.0  # step size γ
    batch_size: Annotated[int, Int(0)] = 1  # samples per step; 0: full batch (closed-form gradient)
    num_steps: Annotated[int, Int(0)] = 1000  # optimization steps
    lr_drop_step: int | None = None  # multiply the lr by lr_drop_factor from this step on
    lr_drop_factor: Annotated[float, Float(0.0, open_low=True)] = 0.1  # factor of the lr drop
    layer_norm: bool = False  # LayerNorm (no affine) on W z(x)
    features: FeatureMap = "matrix"  # z(x): e_x (fixed or learned embeddings) or the relu features
    relu_threshold: Annotated[float, Float(0.0, 1.0, open_high=True)] = 0.5  # η of the relu features
    mlp_width: Annotated[int, Int(1)] = 64  # hidden width m of the mlp memory h = W ReLU(A e_x)
    init: Init = "zero"  # W at step 0: 0, or N(0, 1/d) entries drawn per trial
    adam_betas: Annotated[tuple[float, float], Floats(0.0, 1.0, open_high=True)] = (0.9, 0.999)
    adam_scaling: AdamScaling = "none"  # width: Adam's step lr / d on W, lr / √d on V and embeddings
    gradient: Gradient = "autograd"  # closed-form: the plain linear memory's exact ∇ (see the module doc)
    eval_steps: tuple[int, ...] = ()  # steps after which to measure (0 = init); the last step always
    eval_every: Annotated[int, Int(0)] = 0  # also measure every this many steps (0: never)
    track_coefficients: bool = False  # record Q with W = Σ Q[y, x] u_y e_xᵀ (plain SGD only)

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(not isinstance(s, int) or s < 0 or s > self.num_steps for s in self.eval_steps):
            raise ValueError(
                f"--eval-steps must lie in [0, num_steps={self.num_steps}], got {self.eval_steps}"
            )
        if self.lr_drop_step is not None and not (
            isinstance(self.lr_drop_step, int) and self.lr_drop_step >= 0
        ):
            raise ValueError(f"--lr-drop-step must be an integer >= 0, got {self.lr_drop_step!r}")
        plain = self.features == "matrix" and not self.layer_norm
        if self.track_coefficients and (self.optimizer != "sgd" or not plain):
            # only then does every update lie in span(u_y e_xᵀ) with known coefficients
            raise ValueError(
                "track_coefficients needs plain SGD: optimizer 'sgd', no layer_norm, fixed embeddings"
            )
        if self.gradient == "closed-form" and (self.optimizer == "adam" or not plain):
            raise ValueError("--gradient closed-form needs the matrix memory without layer_norm, SGD or sign")
        if self.batch_size == 0 and self.gradient != "closed-form":
            raise ValueError("--batch-size 0 (full batch) needs --gradient closed-form")

    def recorded_steps(self) -> list[int]:
        """The evaluation steps: eval_steps, the multiples of eval_every, and the last step."""
        every = range(0, self.num_steps + 1, self.eval_every) if self.eval_every else ()
        return sorted({int(s) for s in self.eval_steps} | set(every) | {self.num_steps})


@dataclass(frozen=True)
class MemoryRun:
    """A training run recorded at `steps` (S,) (step 0 = initialization). Per record, for the
    problems' batch shape B: `error` (S, *B); for the plain linear memory `loss`, `accuracy`
    (S, *B) and `margins` (S, *B, N); with track_coefficients `coefficients` (S, *B, M, N). The
    final memory W (*B, d, width) and embeddings, and the samples (*B, steps, b) (None: full batch)."""

    steps: torch.Tensor
    error: torch.Tensor
    loss: torch.Tensor | None
    accuracy: torch.Tensor | None
    margins: torch.Tensor | None
    coefficients: torch.Tensor | None
    memory: torch.Tensor
    inputs: torch.Tensor
    outputs: torch.Tensor
    batches: torch.Tensor | None

    def recall(self) -> torch.Tensor:
        """Per-token recall over time, (S, *B, N) bool."""
        return self.margins > 0


# --------------------------------------------------------------------------------------------
# pieces


def relu_features(inputs: torch.Tensor, threshold: float) -> torch.Tensor:
    """φ(x)_x' = ReLU(k_x'ᵀ k_x − η) with k = e/‖e‖: inputs (R, N, d) -> (R, N, N), row x is φ(x)."""
    keys = F.normalize(inputs, dim=-1)
    return F.relu(einsum(keys, keys, "r n d, r k d -> r n k") - threshold)


def initial_memory(
    num_trials: int, dim: int, width: int, init: Init, seed: int, device, dtype
) -> torch.Tensor:
    """W at step 0, (R, dim, width): zero, or N(0, 1/dim) entries (the reference's), drawn per trial."""
    if init == "zero":
        return torch.zeros(num_trials, dim, width, device=device, dtype=dtype)
    draws = [torch.randn(dim, width, generator=generator(seed, r, INIT_STREAM)) for r in range(num_trials)]
    return (torch.stack(draws) / math.sqrt(dim)).to(device=device, dtype=dtype)


def adam_lrs(features: FeatureMap, lr: float, d: int) -> tuple[float, float]:
    """Adam's steps (memory, embeddings) under adam_scaling "width": lr / d on W, lr / √d on V and
    on the embeddings (Adam moves every coordinate by about its step, so the step follows the size
    of the coordinates of a solution: ~1/d for W, ~1/√d for V and embeddings)."""
    return (lr / math.sqrt(d) if features == "relu" else lr / d), lr / math.sqrt(d)


class LinearMap:
    """h = W z (LayerNorm(W z) with `layer_norm`): W (R, d, width), z (R, b, width) -> (R, b, d)."""

    def __init__(self, weight: torch.Tensor, layer_norm: bool) -> None:
        self.weight, self.layer_norm = weight, layer_norm

    def parameters(self) -> list[torch.Tensor]:
        return [self.weight]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        hidden = einsum(self.weight, z, "r i j, r b j -> r b i")
        return F.layer_norm(hidden, hidden.shape[-1:]) if self.layer_norm else hidden


class MlpMap:
    """h = W ReLU(A z) (LayerNorm of it with `layer_norm`): the MLP memory d -> m -> d with A
    (R, m, d) and W (R, d, m), both trained; z (R, b, d) -> (R, b, d). Its 2md parameters store
    about md associations (Nichani, Lee, Bietti, ICLR 2025), a d x d matrix about d^2."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, layer_norm: bool) -> None:
        self.hidden, self.weight, self.layer_norm = hidden, weight, layer_norm

    def parameters(self) -> list[torch.Tensor]:
        return [self.weight, self.hidden]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        features = F.relu(einsum(self.hidden, z, "r m j, r b j -> r b m"))
        hidden = einsum(self.weight, features, "r i m, r b m -> r b i")
        return F.layer_norm(hidden, hidden.shape[-1:]) if self.layer_norm else hidden


def mlp_first_layer(num_trials: int, width: int, dim: int, seed: int) -> torch.Tensor:
    """A of the mlp memory at step 0, (R, m, d): N(0, 1) entries, so that A e has N(0, ‖e‖²)
    coordinates (about half of the m units active for a unit-norm e), drawn per trial."""
    return torch.stack(
        [torch.randn(width, dim, generator=generator(seed, r, HIDDEN_STREAM)) for r in range(num_trials)]
    )


def exact_error(
    hidden: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, probs: torch.Tensor
) -> torch.Tensor:
    """Σ_x p(x) 1{argmax_y u_yᵀ h(x) ≠ f*(x)} per trial: hidden (R, N, d) = h of every token,
    outputs (R, M, d). A token whose scores are not all finite (a diverged run) counts as wrong."""
    scores = einsum(outputs, hidden, "r m d, r n d -> r m n")
    head, tail = errors_from_scores(scores, targets, probs.to(scores.device, torch.float64), 0)
    return head + tail


def _optimizer(config: MemoryTrainConfig, memory: list[torch.Tensor], embeddings: list, dim: int):
    """The torch optimizer of the autograd path (sign-SGD is SGD on the sign of the gradient)."""
    if config.optimizer != "adam":
        return torch.optim.SGD([*memory, *embeddings], lr=config.lr)
    memory_lr, embedding_lr = (
        adam_lrs(config.features, config.lr, dim) if config.adam_scaling == "width" else (config.lr,) * 2
    )
    groups = [{"params": memory, "lr": memory_lr}]
    if embeddings:
        groups.append({"params": embeddings, "lr": embedding_lr})
    return torch.optim.Adam(groups, betas=config.adam_betas)


# --------------------------------------------------------------------------------------------
# the loop


def train_memory(
    problem: MemoryProblem,
    config: MemoryTrainConfig,
    *,
    seed: int = 0,
    lr: float | torch.Tensor | None = None,
    batches: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> MemoryRun:
    """Train a memory on `problem` (every problem of its batch at once); see the module doc.

    seed: the samples (unless `batches` (*B, steps, b) are given) and the initial W.
    lr: the closed-form path's step sizes, a tensor broadcasting against the batch shape (one per
    problem of a grid; the batch then gains its dimensions); default config.lr.
    init: the closed-form path's W at step 0 instead of config.init.
    callback(step, W) sees W after each step.
    """
    closed_form = config.gradient == "closed-form"
    if not closed_form and (len(problem.batch_shape) != 1 or problem.probs.ndim != 1):
        raise ValueError("the autograd path trains problems of shape (trials, N, d) with one input law")
    if lr is not None and not closed_form:
        raise ValueError("step sizes other than config.lr need the closed-form gradient")
    record_steps = config.recorded_steps()
    num_inputs = problem.inputs.shape[-2]
    shape = problem.batch_shape
    if config.batch_size and batches is None:
        if problem.probs.ndim != 1:
            raise ValueError("sampling needs one input law shared by the problems")
        flat = sample_batches(problem.probs, math.prod(shape), config.num_steps, config.batch_size, seed)
        batches = flat.reshape(*shape, config.num_steps, config.batch_size)
    if batches is not None:
        expected = (*shape, config.num_steps, config.batch_size)
        if tuple(batches.shape) != expected:
            raise ValueError(f"batches must have shape {expected}, got {tuple(batches.shape)}")
        batches = batches.to(problem.inputs.device)
    step_fn = _ClosedFormSteps if closed_form else _AutogradSteps
    state = step_fn(problem, config, seed, lr, init)
    records = [state.measure()] if record_steps[0] == 0 else []
    for step in range(config.num_steps):
        if config.lr_drop_step is not None and step == config.lr_drop_step:
            state.scale_lr(config.lr_drop_factor)
        x = None if batches is None else batches[..., step, :]
        state.step(x, num_inputs)
        if callback is not None:
            callback(step + 1, state.memory)
        if step + 1 in record_steps:
            records.append(state.measure())
    stacked = {k: None if records[0][k] is None else torch.stack([r[k] for r in records]) for k in records[0]}
    return MemoryRun(
        torch.tensor(record_steps),
        stacked["error"],
        stacked["loss"],
        stacked["accuracy"],
        stacked["margins"],
        stacked["coefficients"],
        state.memory.detach().cpu() if not closed_form else state.memory,
        state.inputs.detach().cpu() if not closed_form else state.inputs,
        state.outputs.detach().cpu() if not closed_form else state.outputs,
        None if batches is None else batches.cpu(),
    )


class _ClosedFormSteps:
    """W ← W − η ∇_W Σ_x w(x) ℓ_x in closed form (w = p, or the batch's frequencies)."""

    def __init__(self, problem: MemoryProblem, config: MemoryTrainConfig, seed: int, lr, init) -> None:
        self.problem, self.sign = problem, config.optimizer == "sign"
        if init is not None:
            W = init.clone().to(problem.inputs.dtype)
        elif config.init == "zero":
            W = problem.zeros()
        else:
            flat = initial_memory(
                math.prod(problem.batch_shape),
                problem.dim,
                problem.dim,
                "gaussian",
                seed,
                "cpu",
                problem.inputs.dtype,
            )
            W = flat.reshape(*problem.batch_shape, problem.dim, problem.dim).to(problem.inputs.device)
        lr_t = torch.as_tensor(config.lr if lr is None else lr, dtype=W.dtype)
        # one W per (step size, problem): the records then have the same shape from step 0 on
        batch = torch.broadcast_shapes(W.shape[:-2], lr_t.shape)
        self.memory = W.expand(*batch, *W.shape[-2:]).clone()
        self.lr = lr_t.reshape(*lr_t.shape, 1, 1)
        self.inputs, self.outputs = problem.inputs, problem.outputs

    def scale_lr(self, factor: float) -> None:
        self.lr = self.lr * factor

    def step(self, x: torch.Tensor | None, num_inputs: int) -> None:
        weights = None if x is None else token_frequencies(x, num_inputs, self.memory.dtype)
        grad = memory_gradient(self.memory, self.problem, weights)
        self.memory = self.memory - self.lr * (grad.sign() if self.sign else grad)

    def measure(self) -> dict[str, torch.Tensor | None]:
        margs = margins(self.memory, self.problem)
        accuracy = (self.problem.probs * (margs > 0).to(self.memory.dtype)).sum(-1)
        return {
            "error": 1.0 - accuracy,
            "loss": memory_loss(self.memory, self.problem),
            "accuracy": accuracy,
            "margins": margs,
            "coefficients": None,
        }


class _AutogradSteps:
    """One optimizer step on the sum over trials of each trial's batch-mean cross-entropy."""

    def __init__(self, problem: MemoryProblem, config: MemoryTrainConfig, seed: int, lr, init) -> None:
        self.config, self.problem = config, problem
        inputs, outputs = problem.inputs.clone(), problem.outputs.clone()
        num_trials, num_inputs, dim = inputs.shape
        device, dtype = inputs.device, inputs.dtype
        self.features = relu_features(inputs, config.relu_threshold) if config.features == "relu" else None
        width = {"relu": num_inputs, "mlp": config.mlp_width}.get(config.features, dim)
        memory = initial_memory(num_trials, dim, width, config.init, seed, device, dtype).requires_grad_(True)
        embeddings = []
        if config.features == "learned":
            embeddings = [inputs.requires_grad_(True), outputs.requires_grad_(True)]
        if config.features == "mlp":
            hidden = mlp_first_layer(num_trials, config.mlp_width, dim, seed).to(device=device, dtype=dtype)
            self.map = MlpMap(hidden.requires_grad_(True), memory, config.layer_norm)
        else:
            self.map = LinearMap(memory, config.layer_norm)
        self.memory, self.inputs, self.outputs = memory, inputs, outputs
        self.optimizer = _optimizer(config, self.map.parameters(), embeddings, dim)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.lr = config.lr
        self.targets = problem.targets
        self.rows = torch.arange(num_trials, device=device)[:, None]
        if config.track_coefficients:
            num_outputs = outputs.shape[1]
            self.coefficients = torch.zeros(
                num_trials, num_outputs, num_inputs, device=device, dtype=torch.float64
            )
            self.one_hot = F.one_hot(self.targets, num_outputs).to(torch.float64)  # (N, M)

    def scale_lr(self, factor: float) -> None:
        self.lr = self.config.lr * factor
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def _z(self, x: torch.Tensor) -> torch.Tensor:
        if self.features is not None:
            return self.features[self.rows, x]
        return torch.gather(self.inputs, 1, x[..., None].expand(-1, -1, self.inputs.shape[-1]))

    def step(self, x: torch.Tensor, num_inputs: int) -> None:
        logits = einsum(self.outputs, self.map(self._z(x)), "r m d, r b d -> r b m")
        loss = (
            F.cross_entropy(
                rearrange(logits, "r b m -> (r b) m"), self.targets[x].reshape(-1), reduction="sum"
            )
            / x.shape[-1]
        )
        if self.config.track_coefficients:
            with torch.no_grad():  # the coefficient of u_y e_xᵀ in this step's −γ ∇W
                residual = torch.softmax(logits.to(torch.float64), -1) - self.one_hot[x]  # (R, b, M)
                index = x[:, None, :].expand(-1, self.coefficients.shape[1], -1)
                self.coefficients.scatter_add_(2, index, residual.transpose(1, 2) * (-self.lr / x.shape[-1]))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optimizer == "sign":
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    p.grad.sign_()
        self.optimizer.step()

    def measure(self) -> dict[str, torch.Tensor | None]:
        with torch.no_grad():
            every = self.inputs if self.features is None else self.features  # z(x) of all N tokens
            error = exact_error(self.map(every), self.outputs, self.targets, self.problem.probs).cpu()
        coefficients = self.coefficients.cpu().clone() if self.config.track_coefficients else None
        return {"error": error, "loss": None, "accuracy": None, "margins": None, "coefficients": coefficients}


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
