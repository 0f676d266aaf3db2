"""The per-matrix training schedule and the initialization at the target memories (training/schedule.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from birth.models.transformer import ModelConfig, attn_linear, build_model, native
from probes.attention import triggered_bigram_scores
from tasks.triggered_bigram import ICL_ACC, TaskConfig, TriggeredBigram
from training.checkpoint import load_checkpoint, load_model_state
from training.config import QUICK, OptimConfig
from training.evaluation import TaskMetrics, evaluate
from training.schedule import Schedule, Window, canonical, init_at_target, parse_schedule, parse_targets
from training.trainer import train

# --- parsing ------------------------------------------------------------------------------------


def test_parse_windows_and_aliases():
    windows = parse_schedule(" W_K1:300, W_O2:0-500 ,W_KQ2:off,")
    assert windows == (Window("W_K1", 300, None), Window("W_O2", 0, 500), Window("W_K2", 0, 0))
    assert [str(w) for w in windows] == ["W_K1:300", "W_O2:0-500", "W_K2:off"]
    assert parse_schedule("") == ()
    assert canonical("W_OV2") == "W_O2" and canonical("W_KQ1") == "W_K1" and canonical("W_out2") == "W_out2"
    assert parse_targets("W_OV2, W_K2") == ("W_O2", "W_K2")


def test_window_activity():
    w = Window("W_K1", 3, 6)
    assert [w.active(s) for s in range(8)] == [False, False, False, True, True, True, False, False]
    assert all(Window("W_K1", 2, None).active(s) for s in range(2, 100))
    assert not any(Window("W_K1", 0, 0).active(s) for s in range(10))


@pytest.mark.parametrize(
    "text",
    ["W_K1", "W_X1:3", "W_K0:1", "W_K1:5-3", "W_K1:a", "W_K1:-3", "W_K1:1,W_KQ1:2", "W_K1:3:4"],
)
def test_bad_schedules_name_the_flag(text):
    with pytest.raises(ValueError, match="--schedule"):
        parse_schedule(text)
    with pytest.raises(ValueError, match="--schedule"):
        OptimConfig(schedule=text)


@pytest.mark.parametrize("text", ["W_V1", "W_K3", "W_O2,W_OV2", "W_E"])
def test_bad_targets_name_the_flag(text):
    with pytest.raises(ValueError, match="--init-at-target"):
        OptimConfig(init_at_target=text)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
def test_target_scale_is_validated(scale):
    with pytest.raises(ValueError, match="--target-scale"):
        OptimConfig(target_scale=scale)


def test_schedule_must_name_a_trained_matrix():
    model = build_model(ModelConfig(d_model=16), n_ctx=8, seed=0)
    assert Schedule.for_model("W_K1:3,W_O2:off", model).active(4) == {"W_K1": True, "W_O2": False}
    for text in ("W_Q1:0", "W_V2:0", "W_K3:0", "W_E:0"):  # frozen in the simplified model, or absent
        with pytest.raises(ValueError, match="--schedule: .* is not a trained matrix"):
            Schedule.for_model(text, model)


# --- a frozen matrix does not move, whatever the optimizer state -------------------------------


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda ps: torch.optim.AdamW(ps, lr=0.1, betas=(0.9, 0.99), weight_decay=0.1),
])  # fmt: skip
def test_a_frozen_matrix_stays_bit_identical_under_momentum_and_decay(make):
    gen = torch.Generator().manual_seed(0)
    a = nn.Parameter(torch.randn(4, 4, generator=gen))
    b = nn.Parameter(torch.randn(4, 4, generator=gen))
    schedule = Schedule(parse_schedule("W_K1:0-3,W_K2:2"), {"W_K1": a, "W_K2": b})
    optimizer = make([a, b])
    x = torch.randn(8, 4, generator=gen)
    history = []
    for step in range(8):
        assert schedule.apply(step)
        loss = ((x @ a) @ b).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append((a.detach().clone(), b.detach().clone()))
    # b (W_K2) is frozen at steps 0, 1; a (W_K1) trains at 0, 1, 2 (building momentum), then is frozen
    start_b = history[0][1]
    assert torch.equal(history[1][1], start_b)
    assert not torch.equal(history[2][1], start_b)
    assert not torch.equal(history[2][0], history[1][0])
    for step in range(3, 8):
        assert torch.equal(history[step][0], history[2][0]), f"A moved at step {step}"
        assert not torch.equal(history[step][1], history[step - 1][1])


def test_nothing_to_train_reports_false():
    a = nn.Parameter(torch.ones(2))
    schedule = Schedule(parse_schedule("W_K1:5"), {"W_K1": a})
    assert not schedule.apply(0) and not a.requires_grad
    assert schedule.apply(5) and a.requires_grad


# --- in the training loop -----------------------------------------------------------------------


def tiny(**changes):
    base = QUICK.replace(
        d_model=16, seq_len=16, batch_size=8, steps=6, eval_every=2, eval_batch_size=8,
        checkpoint_every=1, trainable_init="random",
    )  # fmt: skip
    return base.replace(**changes)


def weights(model) -> dict[str, torch.Tensor]:
    return {
        "W_K1": attn_linear(model, 0, "k").weight.detach().clone(),
        "W_K2": attn_linear(model, 1, "k").weight.detach().clone(),
        "W_O2": attn_linear(model, 1, "o").weight.detach().clone(),
    }


def matrix_history(run_dir, config, steps: int) -> list[dict[str, torch.Tensor]]:
    """W_K1, W_K2, W_O2 after each step, read back from the per-step checkpoints."""
    model = config.build_model(65)
    out = []
    for step in range(1, steps + 1):
        path = run_dir / "checkpoints" / f"step_{step:06d}.pt"
        load_model_state(native(model), load_checkpoint(path)["model"], path)
        out.append(weights(model))
    return out


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_loop_follows_the_schedule(tmp_path, optimizer):
    config = tiny(schedule="W_K1:2,W_O2:0-3,W_K2:off", optimizer=optimizer, lr=0.05, weight_decay=0.1)
    train(config, tmp_path / "run", device="cpu", progress=False)
    init = weights(config.build_model(65))
    h = matrix_history(tmp_path / "run", config, 6)
    assert all(torch.equal(row["W_K2"], init["W_K2"]) for row in h)  # off: never moves
    assert torch.equal(h[1]["W_K1"], init["W_K1"]) and not torch.equal(h[2]["W_K1"], h[1]["W_K1"])
    assert not torch.equal(h[2]["W_O2"], h[1]["W_O2"])  # trains at step 2 (its third)
    assert all(torch.equal(row["W_O2"], h[2]["W_O2"]) for row in h[3:])  # then never again
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    # a row's gradient norms are those of the step that starts from its parameters: W_O2 has one
    # at step 2, none at step 4 (frozen), W_K2 never; the final row has no step after it
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    assert "grad_norm/W_O2" in rows[1] and "grad_norm/W_O2" not in rows[2]
    assert "grad_norm/W_K2" not in rows[2] and rows[2]["grad_norm/W_K1"] > 0
    assert "grad_norm/W_K1" not in rows[0] and not any(k.startswith("grad_norm/") for k in rows[-1])
    assert rows[-1]["norm/W_K2"] == pytest.approx(init["W_K2"].norm().item(), rel=1e-6)


def test_resume_with_a_schedule_gives_the_uninterrupted_run(tmp_path):
    config = tiny(schedule="W_K1:3,W_O2:0-4")
    train(config, tmp_path / "full", device="cpu", progress=False)
    train(config.replace(steps=3), tmp_path / "part", device="cpu", progress=False)
    train(config, tmp_path / "part", resume=True, device="cpu", progress=False)

    def rows(name):
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]

    full, part = rows("full"), rows("part")
    assert [r["step"] for r in full] == [r["step"] for r in part]
    assert "grad_norm/W_K2" in full[1] and "grad_norm/W_K2" in part[2]  # steps 2 and 4 (after the resume)
    for a, b in zip(full, part):
        assert set(a) == set(b), a["step"]
        for key in {"eval/loss", "probes/W_KQ1", "norm/W_K1", "norm/W_O2", "grad_norm/W_K2"} & set(a):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)


# --- initialization at the target memories ------------------------------------------------------


def test_targets_score_the_scale_and_build_the_circuit():
    task = TriggeredBigram(TaskConfig(seq_len=32))
    triggers = task.fixed_triggers
    model = build_model(ModelConfig(d_model=128, trainable_init="zero"), n_ctx=32, seed=0)
    init_at_target(model, ("W_O2", "W_K2", "W_K1"), triggers, scale=20.0)
    d = 128
    W_E, W_U, P = model.W_E.detach(), model.W_U.T.detach(), model.W_pos.detach()
    # mean score of the stored pairs through the model's own OV / QK is the scale
    ov2 = ((W_E @ model.OV[1, 0].AB) * W_U).sum(-1).mean()
    keys = W_E[triggers] @ model.OV[0, 0].AB
    kq2 = ((W_E[triggers] @ model.QK[1, 0].AB) * keys).sum(-1).mean() / math.sqrt(d)
    kq1 = ((P[1:] @ model.QK[0, 0].AB) * P[:-1]).sum(-1).mean() / math.sqrt(d)
    assert [ov2.item(), kq2.item(), kq1.item()] == pytest.approx([20.0, 20.0, 20.0], rel=1e-4)
    batch = task.sample(64, 0)
    scores = triggered_bigram_scores(model, batch)
    assert scores["layer1"]["previous_token"]["argmax"] > 0.95
    assert evaluate(model, batch, [TaskMetrics(task)])[ICL_ACC] > 0.6
    # W_V1, W_O1 untouched, W_V2 the identity (W_OV2 = W_O2)
    assert torch.equal(attn_linear(model, 1, "v").weight, torch.eye(d))


def test_only_the_named_targets_are_written():
    a = build_model(ModelConfig(d_model=32, trainable_init="zero"), n_ctx=16, seed=0)
    init_at_target(a, ("W_K1",), None, scale=10.0)
    assert attn_linear(a, 0, "k").weight.abs().sum() > 0
    assert attn_linear(a, 1, "k").weight.abs().sum() == 0 and attn_linear(a, 1, "o").weight.abs().sum() == 0
    with pytest.raises(ValueError, match="--init-at-target"):
        init_at_target(build_model(ModelConfig(n_layers=1, d_model=16), n_ctx=8), ("W_K1",), None, 1.0)


def test_a_run_held_at_targets_learns_only_its_matrix(tmp_path):
    config = tiny(init_at_target="W_O2,W_K2", schedule="W_O2:off,W_K2:off", trainable_init="zero",
                  target_scale=15.0)  # fmt: skip
    train(config, tmp_path / "run", device="cpu", progress=False)
    h = matrix_history(tmp_path / "run", config, 6)
    reference = config.build_model(65)
    init_at_target(reference, ("W_O2", "W_K2"), None, 15.0)
    assert torch.equal(h[-1]["W_O2"], attn_linear(reference, 1, "o").weight)
    assert torch.equal(h[-1]["W_K2"], attn_linear(reference, 1, "k").weight)
    assert h[-1]["W_K1"].abs().sum() > 0  # the one trained matrix moved from zero
