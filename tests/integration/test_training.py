"""Training loop: reproducibility, resume, interruption, checkpoints, divergence, W&B failures."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys

import pytest
import torch

from birth.cli import main as cli_main
from training.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from training.config import PRESETS, TrainConfig
from training.evaluation import learning_order
from training.logger import read_metrics
from training.trainer import train


def _quiet(*_args) -> None:
    pass


def _run(config, run_dir, **kwargs):
    return train(config, run_dir, progress=False, log=_quiet, **kwargs)


def test_same_seed_gives_identical_metrics(tmp_path, tiny_config):
    a = _run(tiny_config, tmp_path / "a")
    b = _run(tiny_config, tmp_path / "b")
    c = _run(tiny_config.replace(seed=1), tmp_path / "c")
    rows_a = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert a.status == b.status == "completed"
    assert rows_a == read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in rows_a] == list(range(0, 13, 2))
    assert {
        "eval/icl_acc",
        "eval/first_acc",
        "eval/bigram_loss",
        "probes/W_OV2",
        "probes/W_KQ2",
        "probes/W_KQ1",
        "train/loss",
    } <= set(rows_a[-1])
    assert rows_a != read_metrics(tmp_path / "c" / "metrics.jsonl")
    assert c.step == 12


def test_interrupt_then_resume_equals_uninterrupted_run(tmp_path, tiny_config):
    _run(tiny_config, tmp_path / "full")

    def interrupt_at_7(step: int) -> None:
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)  # goes through the real signal handler

    first = _run(tiny_config, tmp_path / "cut", on_step=interrupt_at_7)
    assert first.status == "interrupted" and first.exit_code == 130 and first.step == 7
    assert latest_checkpoint(tmp_path / "cut") == checkpoint_path(tmp_path / "cut", 7)
    second = _run(tiny_config, tmp_path / "cut", resume=True)
    assert second.status == "completed" and second.step == 12

    assert read_metrics(tmp_path / "full" / "metrics.jsonl") == read_metrics(
        tmp_path / "cut" / "metrics.jsonl"
    )
    end_full = load_checkpoint(checkpoint_path(tmp_path / "full", 12))
    end_cut = load_checkpoint(checkpoint_path(tmp_path / "cut", 12))
    for key, value in end_full["model"].items():
        assert torch.equal(value, end_cut["model"][key]), key


def test_resume_can_extend_a_finished_run(tmp_path, tiny_config):
    _run(tiny_config.replace(steps=16), tmp_path / "long")
    _run(tiny_config, tmp_path / "short")
    _run(tiny_config.replace(steps=16), tmp_path / "short", resume=True)
    assert read_metrics(tmp_path / "long" / "metrics.jsonl") == read_metrics(
        tmp_path / "short" / "metrics.jsonl"
    )


def test_existing_run_dir_is_never_overwritten(tmp_path, tiny_config):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="already exists"):
        _run(tiny_config, run_dir)
    assert (run_dir / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


def test_corrupted_checkpoint_gives_one_clear_error(tmp_path, tiny_config, capsys):
    _run(tiny_config, tmp_path / "run")
    last = latest_checkpoint(tmp_path / "run")
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(last)
    code = cli_main(
        ["train", "--resume", str(tmp_path / "run"), "--wandb", "off", "--no-progress", "--steps", "20"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "corrupted" in err[0]


def test_mismatched_checkpoint_is_refused(tmp_path, tiny_config):
    _run(tiny_config, tmp_path / "a")
    _run(tiny_config.replace(d_model=8), tmp_path / "b")
    # put b's checkpoint into a's run: the config check refuses it before any weight is loaded
    os.replace(latest_checkpoint(tmp_path / "b"), checkpoint_path(tmp_path / "a", 99))
    with pytest.raises(CheckpointError, match="different run config"):
        _run(tiny_config.replace(steps=120), tmp_path / "a", resume=True)


def test_checkpoints_hold_no_pickled_code(tmp_path, tiny_config):
    _run(tiny_config, tmp_path / "run")
    steps = [s for s, _ in list_checkpoints(tmp_path / "run")]
    assert steps == [4, 8, 12]
    ckpt = torch.load(checkpoint_path(tmp_path / "run", 12), weights_only=True)
    assert ckpt["step"] == 12 and ckpt["config"] == tiny_config.to_dict()
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_config):
    config = tiny_config.replace(lr=1e30, momentum=0.0, steps=40)
    result = _run(config, tmp_path / "run")
    assert result.status == "diverged" and result.exit_code == 1
    for _, path in list_checkpoints(tmp_path / "run"):
        for value in load_checkpoint(path)["model"].values():
            assert torch.isfinite(value).all()


def test_wandb_failure_is_reported_and_training_continues(tmp_path, tiny_config, monkeypatch, capsys):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    result = train(tiny_config, tmp_path / "run", progress=False, log=_quiet, wandb_mode="offline")
    assert result.status == "completed"
    assert "W&B logging failed" in capsys.readouterr().err


def test_learning_order_reads_first_crossings():
    rows = [
        {"step": 0, "probes/W_OV2": 0.1, "probes/W_KQ2": 0.0, "probes/W_KQ1": 0.0},
        {"step": 10, "probes/W_OV2": 0.95, "probes/W_KQ2": 0.5, "probes/W_KQ1": 0.0},
        {"step": 20, "probes/W_OV2": 0.85, "probes/W_KQ2": 0.9, "probes/W_KQ1": 0.2},
    ]
    assert learning_order(rows) == {"W_OV2": 10, "W_KQ2": 20, "W_KQ1": None}


@pytest.mark.parametrize(
    "override, field",
    [
        ({"optimizer": "lion"}, "optimizer"),
        ({"loss_on": "some"}, "loss_on"),
        ({"batch_size": 0}, "batch_size"),
        ({"n_triggers": 65}, "n_triggers"),
        ({"seq_len": 1}, "seq_len"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_invalid_train_config_raises_naming_the_field(override, field):
    with pytest.raises(ValueError, match="--" + field.replace("_", "-")):
        TrainConfig().replace(**override).validate(65)


def test_cli_train_writes_run_and_summary(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(
        [
            "train",
            "--out",
            str(out),
            "--wandb",
            "off",
            "--no-progress",
            "--d-model",
            "16",
            "--seq-len",
            "16",
            "--batch-size",
            "8",
            "--eval-batch-size",
            "16",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--n-layers",
            "1",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "learning order" in text and "in-context accuracy" in text
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["n_layers"] == 1 and config["optim"]["steps"] == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and "final/probes/W_OV" in summary
    # running again into the same directory is refused with one line and exit 2
    assert cli_main(["train", "--out", str(out), "--wandb", "off", "--no-progress"]) == 2


def test_presets_are_valid():
    for preset in PRESETS.values():
        preset.validate(65)
    paper = PRESETS["paper"]
    quick = PRESETS["quick"]
    # the quick preset keeps the paper's optimizer, embedding scale and loss; random triggers make
    # its W_KQ2 probe rank all 65 tokens
    assert paper.model.unit_embeddings and quick.model.unit_embeddings and quick.task.trigger_mode == "random"
    assert quick.optim == dataclasses.replace(paper.optim, batch_size=128, steps=2000)
    assert (
        paper.model.d_model,
        paper.task.seq_len,
        paper.optim.batch_size,
        paper.optim.lr,
        paper.optim.momentum,
        paper.optim.weight_decay,
        paper.optim.loss_on,
        paper.optim.steps,
        paper.task.n_triggers,
    ) == (256, 256, 512, 0.03, 0.9, 1e-4, "outputs", 1000, 5)


def test_fast_path_trains_like_the_transformer_lens_forward(tmp_path, tiny_config):
    _run(tiny_config, tmp_path / "fast")
    _run(tiny_config.replace(fast_path=False), tmp_path / "tl")
    fast = read_metrics(tmp_path / "fast" / "metrics.jsonl")
    slow = read_metrics(tmp_path / "tl" / "metrics.jsonl")
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        for key in ("train/loss", "eval/loss", "eval/icl_acc"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (a["step"], key)


def test_quick_preset_learns_the_induction_head(tmp_path):
    """A shortened quick preset: the three memories form and in-context accuracy is far above the
    ~0.3 a model without an induction head reaches."""
    config = PRESETS["quick"].replace(steps=300, eval_every=100, checkpoint_every=300)
    result = _run(config, tmp_path / "quick")
    assert result.final["eval/icl_acc"] > 0.9
    # W_OV2 is stored first; W_KQ2 (chance 1/65 with random triggers) is well on its way
    assert result.final["probes/W_OV2"] >= 0.9 and result.final["probes/W_KQ2"] >= 0.5
    assert result.order["W_OV2"] == 100 and result.order["W_KQ1"] is None
    # the bigram part is not trained (loss on outputs only): first occurrences stay near chance
    assert result.final["eval/first_acc"] < 0.2


def test_resume_refuses_fewer_steps_than_done_and_keeps_the_config(tmp_path, tiny_config):
    _run(tiny_config, tmp_path / "run")
    before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(ValueError, match="below the checkpoint"):
        _run(tiny_config.replace(steps=4), tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "config.json").read_text() == before


def test_unsafe_checkpoint_error_never_advises_weights_only_false(tmp_path):
    bad = tmp_path / "step_000001.pt"
    bad.write_bytes(b"x" + bytes(range(50)))  # a pickle opcode the weights-only unpickler refuses
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    message = str(info.value)
    assert "corrupted" in message and "\n" not in message
    assert "weights_only" not in message and "Unsupported operand" in message


def test_keep_freed_memory_applies_on_glibc_and_is_idempotent():
    import platform

    from training.allocator import keep_freed_memory

    applied = keep_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied is True
    assert keep_freed_memory() is applied
