"""`--clamp`: forced attention patterns and frozen target memories during training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from birth.models.targets import target_memories
from birth.models.transformer import ModelConfig, attn_linear
from probes.attention import forward_with_patterns
from tasks.circuits import previous_token_pattern
from tasks.markov_icl import MarkovICL, MarkovICLConfig
from tasks.triggered_bigram import TaskConfig
from training.checkpoint import load_run_model
from training.clamps import install_clamps, parse_clamps
from training.config import OptimConfig, RunConfig, TrainConfig
from training.trainer import train

TASK = MarkovICLConfig(n_states=3, seq_len=12)


def _config(clamp: str, steps: int = 6) -> TrainConfig:
    return TrainConfig(
        task=TASK,
        model=ModelConfig(d_model=32),
        optim=OptimConfig(steps=steps, batch_size=8, loss_on="all", clamp=clamp, optimizer="adamw", lr=0.01),
        run=RunConfig(eval_every=3, eval_batch_size=8, checkpoint_every=3, fast_path=False),
    )


def _model_and_task(clamp: str):
    config = _config(clamp)
    task = MarkovICL(TASK)
    model = config.build_model(task.vocab_size)
    install_clamps(model, task, clamp, config.optim.target_scale)
    return model, task


def test_names_and_aliases():
    assert parse_clamps(" prev_token, W_OV2 ,W_KQ1") == ("prev_token", "W_O2", "W_K1")
    for bad in ("nope", "W_V1", "prev_token,prev_token"):
        with pytest.raises(ValueError, match="--clamp"):
            parse_clamps(bad)


@pytest.mark.parametrize(
    "changes, message",
    [(dict(clamp="prev_token"), "--no-fast-path"),
     (dict(clamp="induction", fast_path=False, n_layers=1), "1 layer"),
     (dict(clamp="W_O2", fast_path=False, variant="full"), "--clamp W_O2")],
)  # fmt: skip
def test_a_clamp_the_model_cannot_take_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig().replace(**changes)


def test_random_triggers_have_no_ideal_induction_pattern():
    config = TrainConfig(task=TaskConfig(trigger_mode="random")).replace(clamp="induction", fast_path=False)
    with pytest.raises(ValueError, match="--trigger-mode fixed"):
        config.validate()


def test_clamped_patterns_are_exactly_the_forced_ones():
    model, task = _model_and_task("prev_token,induction")
    batch = task.sample(4, task.generator(0))
    _, (first, second) = forward_with_patterns(model, batch.inputs)
    assert torch.equal(first, previous_token_pattern(4, TASK.seq_len))
    ideal, rows = task.induction_pattern(batch.inputs)
    assert rows.any() and not rows.all()
    assert torch.equal(second[rows], ideal[rows])
    # the unconstrained rows are the model's own (causal, not the ideal's zeros)
    assert torch.allclose(second[~rows].sum(-1), torch.ones(int((~rows).sum())))


def test_the_forced_pattern_changes_the_logits():
    model, task = _model_and_task("")
    batch = task.sample(4, task.generator(0))
    free = model(batch.inputs)
    install_clamps(model, task, "prev_token", 30.0)
    assert not torch.allclose(free, model(batch.inputs))


def test_gradients_flow_to_the_unclamped_parts():
    model, task = _model_and_task("prev_token")
    batch = task.sample(8, task.generator(0))
    F.cross_entropy(model(batch.inputs).flatten(0, 1), batch.targets.flatten()).backward()
    w_k1 = attn_linear(model, 0, "k").weight
    # layer 1's scores no longer reach the output: no gradient into W_K1; W_K2 and W_O2 learn
    assert w_k1.grad is None or not w_k1.grad.any()
    for layer, name in ((1, "k"), (1, "o")):
        assert attn_linear(model, layer, name).weight.grad.norm() > 0


def test_a_clamped_matrix_holds_its_target(tmp_path):
    result = train(_config("W_O2"), tmp_path / "run", progress=False, log=lambda _: None)
    assert result.status == "completed"
    model = load_run_model(tmp_path / "run")
    w_o2 = attn_linear(model, 1, "o").weight.detach()
    target = target_memories(model, None)["W_OV2"].T
    cosine = F.cosine_similarity(w_o2.flatten(), target.flatten(), dim=0)
    assert cosine > 0.9999
    assert attn_linear(model, 1, "k").weight.detach().norm() > 0  # W_K2 trained (zero-init is not used)


def test_resume_is_exact_with_clamps_on(tmp_path):
    clamp = "prev_token,induction,W_O2"
    straight = train(_config(clamp), tmp_path / "straight", progress=False, log=lambda _: None)
    half = train(_config(clamp, steps=3), tmp_path / "resumed", progress=False, log=lambda _: None)
    assert half.step == 3
    resumed = train(_config(clamp), tmp_path / "resumed", resume=True, progress=False, log=lambda _: None)
    assert resumed.step == straight.step == 6

    def rows(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    assert rows("straight") == rows("resumed")
    a, b = load_run_model(tmp_path / "straight"), load_run_model(tmp_path / "resumed")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
