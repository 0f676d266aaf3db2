"""The transformer-wo2 experiment's runs through the one transformer trainer: the W_O²-only arm is
plain SGD of W_O² alone, and at the default size its W_OV² margins grow like log t with loss spikes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from birth.base.seeds import step_seed
from birth.experiments.dynamics.transformer_wo2 import (
    EVAL_STREAM,
    TransformerWo2Config,
    arm_config,
    fit_window,
    ov_margins,
    summarize,
    train_arm,
)
from birth.models.transformer import attn_linear, fast_logits
from training.checkpoint import load_run_model


def test_wo2_arm_is_plain_sgd_of_w_o2_alone_through_the_trainer(tmp_path, one_thread):
    config = TransformerWo2Config(
        d_model=16, seq_len=16, batch_size=8, eval_batch_size=8, steps=4, margin_every=2
    )
    lr = 50.0
    traj = train_arm(config, "wo2", lr, tmp_path / "run", log=lambda line: None)
    # the same run by hand: plain SGD on W_O² alone, the loss on the counter >= 2 targets, the batch
    # of step t seeded by (seed, t), the held-out loss measured before every step
    train_config = arm_config(config, lr)
    task = train_config.build_task()
    reference = train_config.build_model(task.vocab_size)
    initial = {name: p.detach().clone() for name, p in reference.named_parameters()}
    heldout = task.sample(config.eval_batch_size, task.generator(step_seed(config.seed, EVAL_STREAM)))
    w_o2 = attn_linear(reference, 1, "o").weight
    w_o2.requires_grad_(True)

    def loss_on(batch, logits):
        mask = batch.counter >= 2
        return F.cross_entropy(logits(batch, mask), batch.targets[mask])

    def trained_positions(batch, mask):  # the training loss: the last layer at the targets only
        return fast_logits(reference, batch.inputs, positions=mask)

    def every_position(batch, mask):  # the evaluation: one forward, then the targets
        return fast_logits(reference, batch.inputs)[mask]

    for step in range(config.steps):
        with torch.no_grad():
            measured = float(loss_on(heldout, every_position))
        assert math.isclose(float(traj.loss[step]), measured, rel_tol=1e-6), step
        batch = task.sample(config.batch_size, task.generator(step_seed(config.seed, step)))
        (grad,) = torch.autograd.grad(loss_on(batch, trained_positions), w_o2)
        with torch.no_grad():
            w_o2 -= lr * grad
    trained = load_run_model(tmp_path / "run")
    # equal up to rounding: torch's SGD rounds w - lr * g once, this loop rounds lr * g first
    assert torch.allclose(attn_linear(trained, 1, "o").weight, w_o2.detach(), rtol=1e-5, atol=1e-5)
    for name, p in trained.named_parameters():
        if p is not attn_linear(trained, 1, "o").weight:
            assert torch.equal(p.detach(), initial[name]), name  # nothing else moved
    assert traj.diverged is None and traj.margin_steps.tolist() == [0, 2, 4]
    assert traj.margins.shape == (3, 65)
    assert torch.equal(traj.margins[-1], ov_margins(trained))


@pytest.mark.slow
def test_wo2_arm_at_a_large_step_grows_margins_like_log_t_with_spikes(tmp_path, one_thread):
    config = TransformerWo2Config(lrs=(200.0,))  # the default size: d = T = 64, 300 steps
    run = summarize(
        config, "wo2", 200.0, train_arm(config, "wo2", 200.0, tmp_path / "run", log=lambda line: None)
    )
    assert fit_window(config) == [30, 95, 300]
    # the log-t regime: the median margin grows at the same rate in both halves of the log window
    assert 2.0 < run.slope_early < 3.5 and 2.0 < run.slope_late < 3.5, (run.slope_early, run.slope_late)
    assert abs(run.slope_late / run.slope_early - 1) < 0.3
    assert run.stored > 0.9  # almost every token's W_OV² margin is positive
    assert run.spikes >= 2 and run.max_jump > 1.5  # large steps spike
    assert run.diverged is None


def test_a_diverging_arm_stops_recording_at_its_first_non_finite_loss(tmp_path, one_thread):
    config = TransformerWo2Config(
        d_model=16, seq_len=16, batch_size=8, eval_batch_size=8, steps=6, margin_every=1
    )
    traj = train_arm(config, "all", 1e38, tmp_path / "run", log=lambda line: None)
    assert traj.diverged is not None and 0 < traj.diverged < config.steps
    assert torch.isfinite(traj.loss[: traj.diverged]).all()
    assert torch.isnan(traj.loss[traj.diverged + 1 :]).all()
    assert traj.margin_steps.tolist() == list(range(traj.diverged + 1))
    run = summarize(config, "all", 1e38, traj)
    assert run.diverged == traj.diverged and run.spikes >= 1
