"""Gradient-trained memories (training/memories.py): optimizers, LayerNorm, approximation of the q
dynamics, and the closed-form gradient against autograd."""

import pytest
import torch

from birth.memories.problem import from_task, sample_batches
from birth.memories.scaling_laws import memory_errors, q_sgd
from tasks.zipf import ZipfAssociations
from training.memories import (
    LinearMap,
    MemoryTrainConfig,
    approximate_q_dynamics,
    exact_error,
    train_memory,
)

TASK = ZipfAssociations(30, 3, 1.5)


def train(task, dim, trials, config, *, seed, dtype=torch.float32, batches=None) -> dict:
    """The trainer on the task's problem (embeddings drawn from `seed`), its records trial-major."""
    run = train_memory(
        from_task(task, dim, trials, seed=seed, dtype=dtype), config, seed=seed, batches=batches
    )
    out = {
        "steps": run.steps,
        "error": run.error.T,
        "batches": run.batches,
        "memory": run.memory,
        "inputs": run.inputs,
        "outputs": run.outputs,
    }
    if run.coefficients is not None:
        out["coefficients"] = run.coefficients.transpose(0, 1)
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sgd_learns_and_is_seeded():
    config = MemoryTrainConfig("sgd", lr=5.0, batch_size=8, num_steps=150, eval_steps=(0, 50))
    a = train(TASK, 32, 2, config, seed=1)
    b = train(TASK, 32, 2, config, seed=1)
    assert a["steps"].tolist() == [0, 50, 150]
    assert torch.equal(a["error"], b["error"])
    assert (a["error"][:, 0] == 1).all()  # W = 0: every score ties -> wrong
    assert (a["error"][:, -1] < 0.1).all()


@pytest.mark.parametrize("optimizer", ["adam", "sign"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_other_optimizers_learn(optimizer, layer_norm):
    config = MemoryTrainConfig(optimizer, lr=0.05, batch_size=16, num_steps=100, layer_norm=layer_norm)
    out = train(TASK, 32, 2, config, seed=0)
    assert (out["error"][:, -1] < 0.2).all()


def test_adam_is_not_sign_sgd():
    # the reference's "Adam" had betas = 0, i.e. sign-SGD; a real Adam takes different steps
    kwargs = dict(lr=0.05, batch_size=4, num_steps=30, eval_steps=tuple(range(31)))
    adam = train(TASK, 16, 1, MemoryTrainConfig("adam", **kwargs), seed=3)["error"]
    sign = train(TASK, 16, 1, MemoryTrainConfig("sign", **kwargs), seed=3)["error"]
    fake = train(TASK, 16, 1, MemoryTrainConfig("adam", adam_betas=(0.0, 0.0), **kwargs), seed=3)["error"]
    assert torch.allclose(fake, sign)
    assert not torch.allclose(adam, sign)


def test_learned_embeddings_and_lr_drop_run():
    config = MemoryTrainConfig("sgd", lr=2.0, batch_size=8, num_steps=60, lr_drop_step=30, features="learned")
    out = train(TASK, 8, 2, config, seed=0)
    assert out["error"].shape == (2, 1) and (out["error"] < 1).all()


def test_batch1_q_dynamics_is_the_sgd_scheme():
    batches = sample_batches(TASK.probs(), 2, 200, 1, seed=4)
    q = approximate_q_dynamics(batches, 30, 3, 0.5, [50, 200])
    for k, steps in enumerate([50, 200]):
        counts = torch.stack([torch.bincount(batches[r, :steps, 0], minlength=30) for r in range(2)]).double()
        assert torch.allclose(q[:, k], q_sgd(counts, 0.5, 3))


def test_sgd_matches_the_q_approximation_when_d_is_large():
    task = ZipfAssociations(20, 4, 2.0)
    config = MemoryTrainConfig("sgd", lr=1.0, batch_size=1, num_steps=300, eval_steps=(100, 300))
    trained = train(task, 200, 4, config, seed=2)
    q = approximate_q_dynamics(trained["batches"], 20, 4, 1.0, trained["steps"].tolist())
    approx = memory_errors(
        q[:, :, None],
        task.targets(),
        task.probs(),
        [200],
        num_trials=4,
        seed=2,
        num_outputs=4,
        dtype=torch.float32,
    )
    assert (trained["error"] - approx["error"][:, :, 0]).abs().mean() < 0.03


def test_exact_error_of_one_hot_memory_is_zero():
    eye = torch.eye(30, dtype=torch.float64)
    targets = TASK.targets()
    memory = (eye[targets].T @ eye)[None]  # Σ_x u_{f(x)} e_xᵀ with one-hot embeddings
    err = exact_error(LinearMap(memory, False)(eye[None]), eye[:3][None], targets, TASK.probs())
    assert err.item() == 0


def test_bad_config_raises():
    with pytest.raises(ValueError, match="--optimizer"):
        train(TASK, 8, 1, MemoryTrainConfig("adamw"), seed=0)
    with pytest.raises(ValueError, match="--eval-steps"):
        train(TASK, 8, 1, MemoryTrainConfig("sgd", num_steps=5, eval_steps=(9,)), seed=0)
    with pytest.raises(ValueError, match="closed-form"):
        MemoryTrainConfig(gradient="closed-form", layer_norm=True)
    with pytest.raises(ValueError, match="closed-form"):
        MemoryTrainConfig(batch_size=0)


@pytest.mark.parametrize("dim", [8, 40])  # d < N (dependent embeddings) and d > N
def test_tracked_coefficients_rebuild_the_trained_memory(dim):
    # W = Σ_{y,x} Q[y, x] u_y e_xᵀ exactly, whatever d: SGD from 0 only adds such outer products
    config = MemoryTrainConfig(
        "sgd",
        lr=3.0,
        batch_size=4,
        num_steps=80,
        lr_drop_step=50,
        eval_steps=(0, 20),
        track_coefficients=True,
    )
    out = train(TASK, dim, 2, config, seed=5, dtype=torch.float64)
    q = out["coefficients"]
    assert q.shape == (2, 3, 3, 30) and (q[:, 0] == 0).all()
    rebuilt = einsum_rebuild(q[:, -1], out["inputs"], out["outputs"])
    assert torch.allclose(rebuilt, out["memory"], atol=1e-10)
    # each sample moves its own column only: unseen tokens keep zero coefficients
    seen = torch.zeros(2, 30, dtype=torch.bool)
    for r in range(2):
        seen[r, out["batches"][r].unique()] = True
    assert (q[:, -1].abs().sum(1) > 0).eq(seen).all()
    # columns sum to zero: the softmax residual sums to 0 over y
    assert torch.allclose(q[:, -1].sum(1), torch.zeros(2, 30, dtype=torch.float64), atol=1e-12)


def einsum_rebuild(q: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    return outputs.transpose(1, 2) @ q @ inputs  # Σ_{y,x} Q[y,x] u_y e_xᵀ: (R, d, d)


def test_tracking_refuses_updates_outside_the_span():
    for kwargs in (dict(optimizer="adam"), dict(layer_norm=True), dict(features="learned")):
        with pytest.raises(ValueError, match="track_coefficients"):
            MemoryTrainConfig(track_coefficients=True, **kwargs)
    with pytest.raises(ValueError, match="lr"):
        MemoryTrainConfig(lr=float("nan"))


@pytest.mark.parametrize("optimizer", ["sgd", "sign"])
def test_closed_form_gradient_equals_autograd_on_the_same_samples(optimizer):
    """The two gradients of the one trainer: the closed form Uᵀ Gᵀ E of the batch's token weights
    and autograd of the batch-mean cross-entropy take the same steps (float64, to rounding)."""
    problem = from_task(TASK, 12, 3, seed=7, dtype=torch.float64)
    batches = sample_batches(TASK.probs(), 3, 50, 8, seed=7)
    kwargs = dict(lr=2.0, batch_size=8, num_steps=50, eval_steps=(0, 10), lr_drop_step=30)
    autograd = train_memory(problem, MemoryTrainConfig(optimizer, **kwargs), seed=7, batches=batches)
    closed = train_memory(
        problem, MemoryTrainConfig(optimizer, gradient="closed-form", **kwargs), seed=7, batches=batches
    )
    assert closed.steps.tolist() == autograd.steps.tolist() == [0, 10, 50]
    assert torch.allclose(closed.memory, autograd.memory, atol=1e-10)
    assert torch.allclose(closed.error, autograd.error, atol=1e-12)  # 1 − Σ p 1{right} vs Σ p 1{wrong}
    assert (closed.error[-1] < closed.error[0]).all()  # it learned something


def test_full_batch_gd_is_the_population_gradient_step():
    """batch_size 0: W ← W − η ∇L(W) with L the population loss, for a tensor of step sizes."""
    problem = from_task(TASK, 6, 2, seed=1, dtype=torch.float64)
    lrs = torch.tensor([0.5, 3.0], dtype=torch.float64)[:, None]
    config = MemoryTrainConfig(batch_size=0, gradient="closed-form", num_steps=3, eval_every=1)
    run = train_memory(problem, config, lr=lrs)
    W = torch.zeros(2, 2, 6, 6, dtype=torch.float64).requires_grad_(True)
    for _ in range(3):
        logits = problem.inputs @ W.transpose(-1, -2) @ problem.outputs.transpose(-1, -2)  # (L, R, N, M)
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, 3), problem.targets.repeat(4), reduction="none"
        ).reshape(2, 2, 30)
        (grad,) = torch.autograd.grad((losses * problem.probs).sum(), W)
        W = (W - lrs[..., None, None] * grad).detach().requires_grad_(True)
    assert run.loss.shape == (4, 2, 2) and run.margins.shape == (4, 2, 2, 30)
    assert torch.allclose(run.memory, W.detach(), atol=1e-12)
