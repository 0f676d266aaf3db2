"""`--lr-decay` in the trainer: the optimizer steps at the decayed rate, and a resumed run is the
uninterrupted one."""

from __future__ import annotations

import os
import signal

import pytest
import torch

import training.trainer as trainer
from tasks.markov_icl import MarkovICLConfig
from training.config import ModelConfig, OptimConfig, RunConfig, TrainConfig
from training.logger import read_metrics
from training.trainer import train


def tiny(**changes) -> TrainConfig:
    base = TrainConfig(
        task=MarkovICLConfig(n_states=3, seq_len=8),
        model=ModelConfig(d_model=8, variant="full"),
        optim=OptimConfig(
            optimizer="adamw", lr=0.05, batch_size=4, steps=6, loss_on="all", lr_decay="cosine"
        ),
        run=RunConfig(eval_every=2, eval_batch_size=4, checkpoint_every=1),
    )
    return base.replace(**changes)


def test_the_optimizer_runs_at_the_decayed_rate(tmp_path, monkeypatch):
    config = tiny(steps=4)
    seen: list[float] = []

    class Spy(torch.optim.AdamW):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    spy = lambda params, optim: Spy(params, lr=optim.lr, weight_decay=optim.weight_decay)  # noqa: E731
    monkeypatch.setattr(trainer, "make_optimizer", spy)
    train(config, tmp_path / "run", device="cpu", progress=False, log=lambda s: None)
    assert seen == pytest.approx([0.05, 0.05 * 0.5 * (1 + 2**-0.5), 0.025, 0.05 * 0.5 * (1 - 2**-0.5)])


def test_a_decayed_run_differs_from_a_constant_one(tmp_path):
    decayed = train(tiny(), tmp_path / "a", device="cpu", progress=False, log=lambda s: None)
    constant = train(tiny(lr_decay="none"), tmp_path / "b", device="cpu", progress=False, log=lambda s: None)
    assert decayed.status == constant.status == "completed"
    a, b = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert a[1]["eval/loss"] != b[1]["eval/loss"]


def test_resume_with_a_decay_gives_the_uninterrupted_run(tmp_path):
    config = tiny()
    train(config, tmp_path / "full", device="cpu", progress=False, log=lambda s: None)

    def interrupt(step: int) -> None:
        if step == 2:  # after the third update: the loop checkpoints and returns
            os.kill(os.getpid(), signal.SIGINT)

    part = train(
        config, tmp_path / "part", device="cpu", progress=False, on_step=interrupt, log=lambda s: None
    )
    assert part.status == "interrupted"
    train(config, tmp_path / "part", resume=True, device="cpu", progress=False, log=lambda s: None)
    full, resumed = (
        read_metrics(tmp_path / "full" / "metrics.jsonl"),
        read_metrics(tmp_path / "part" / "metrics.jsonl"),
    )
    assert [r["step"] for r in full] == [r["step"] for r in resumed] == [0, 2, 4, 6]
    for a, b in zip(full, resumed):
        assert a["eval/loss"] == pytest.approx(b["eval/loss"], rel=1e-6), a["step"]
