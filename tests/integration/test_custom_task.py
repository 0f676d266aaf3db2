"""A task defined here only (no edit of training/ or birth/) trains, evaluates, checkpoints, resumes
and is inspected through the public Python API: the Task protocol is all the trainer needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest
import torch

import birth
from birth.base.validate import Int, Validated
from birth.commands import train as train_cmd
from birth.models.transformer import ModelConfig
from probes.attention import repeated_sequence_scores
from tasks.protocol import LossOn, MemoryTask, Task, TokenBatch
from tasks.registry import register_task, task_names
from training.checkpoint import latest_checkpoint, list_checkpoints, load_trained_model
from training.config import OptimConfig, RunConfig, TrainConfig
from training.evaluation import EVAL_LOSS, PROBES, standard_groups
from training.logger import read_metrics

COPY_ACC = "eval/copy_acc"
FIRST_HALF_ACC = "eval/first_half_acc"


@dataclass(frozen=True)
class CopyConfig(Validated):
    """n random symbols, then the same n again (and the first once more): z_1..z_n z_1..z_n z_1."""

    seq_len: Annotated[int, Int(4)] = 16  # T, even: the two halves of n = T / 2 symbols
    n_symbols: Annotated[int, Int(2)] = 12  # N

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seq_len % 2:
            raise ValueError(f"--seq-len must be even, got {self.seq_len}")


class Copy:
    """The copy task: the second half repeats the first, so an induction head predicts it."""

    headline = {COPY_ACC: "copy accuracy (second half)", FIRST_HALF_ACC: "first-half accuracy"}

    def __init__(self, config: CopyConfig, device: torch.device) -> None:
        self.config = config
        self.device = torch.device(device)
        self.vocab_size = config.n_symbols

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def sample(self, batch_size: int, generator: torch.Generator) -> TokenBatch:
        n = self.seq_len // 2
        first = torch.randint(0, self.vocab_size, (batch_size, n), generator=generator, device=self.device)
        return TokenBatch(torch.cat([first, first, first[:, :1]], dim=1))

    def _copies(self, batch: TokenBatch) -> torch.Tensor:
        mask = torch.zeros_like(batch.targets, dtype=torch.bool)
        mask[:, self.seq_len // 2 :] = True  # targets z_{n+2}.. repeat z_2..: predictable
        return mask

    def loss_mask(self, batch: TokenBatch, loss_on: LossOn) -> torch.Tensor:
        return (
            self._copies(batch) if loss_on == "outputs" else torch.ones_like(batch.targets, dtype=torch.bool)
        )

    def metrics(self, logits: torch.Tensor, batch: TokenBatch) -> dict[str, float]:
        correct = logits.argmax(-1) == batch.targets
        copies = self._copies(batch)
        return {
            COPY_ACC: correct[copies].float().mean().item(),
            FIRST_HALF_ACC: correct[~copies].float().mean().item(),
        }


register_task("copy-test", CopyConfig, Copy, "copy the first half of the sequence (tests only)")


def _config(steps: int) -> TrainConfig:
    return TrainConfig(
        task=CopyConfig(seq_len=16, n_symbols=12),
        model=ModelConfig(n_layers=2, d_model=32),
        optim=OptimConfig(lr=1.0, momentum=0.9, batch_size=16, steps=steps, loss_on="outputs"),
        run=RunConfig(eval_every=2, eval_batch_size=32, checkpoint_every=4),
    )


def _train(config: TrainConfig, run_dir, **kwargs):
    return birth.train(config, run_dir, progress=False, device="cpu", log=lambda *_: None, **kwargs)


def test_the_copy_task_implements_the_protocol_only():
    task = _config(1).build_task()
    assert isinstance(task, Task) and not isinstance(task, MemoryTask)
    assert "copy-test" in task_names() and _config(1).task_name == "copy-test"
    batch = task.sample(4, task.generator(0))
    assert batch.tokens.shape == (4, 17) and int(batch.tokens.max()) < 12
    assert torch.equal(batch.inputs[:, 8:], batch.tokens[:, :9][:, :8])  # the second half is a copy


def test_train_evaluate_checkpoint_resume_and_inspect_a_custom_task(tmp_path):
    config = _config(12)
    full = _train(config, tmp_path / "full")
    assert full.status == "completed" and full.step == 12
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(0, 13, 2))
    assert {EVAL_LOSS, COPY_ACC, FIRST_HALF_ACC, PROBES + "W_OV2", PROBES + "W_KQ2", "train/loss"} <= set(
        rows[-1]
    )
    assert not any(k.startswith("attn/") for k in rows[-1])  # the circuit probes read a MemoryTask's counter
    assert rows[-1][EVAL_LOSS] < rows[0][EVAL_LOSS]  # it learns something in 12 steps
    assert [s for s, _ in list_checkpoints(tmp_path / "full")] == [4, 8, 12]

    # the vocabulary is the task's: 12 tokens, not the Shakespeare 65
    model, saved, step = load_trained_model(latest_checkpoint(tmp_path / "full"))
    assert model.cfg.d_vocab == 12 and isinstance(saved.task, CopyConfig) and step == 12
    assert birth.load_model(tmp_path / "full").cfg.d_vocab == 12

    # evaluate through the public API on the run's held-out batch: the trainer's final row
    task = saved.build_task()
    heldout = task.sample(config.run.eval_batch_size, task.generator(config.run.eval_seed))
    row = birth.evaluate(model, heldout, standard_groups(task, loss_on=config.optim.loss_on))
    for key in (EVAL_LOSS, COPY_ACC, FIRST_HALF_ACC, PROBES + "W_OV2"):
        assert row[key] == pytest.approx(full.final[key], abs=1e-6), key

    # a run stopped at step 6 and resumed to 12 writes the rows of the uninterrupted run
    _train(_config(6), tmp_path / "resumed")
    resumed = _train(config, tmp_path / "resumed", resume=True)
    assert resumed.status == "completed" and resumed.step == 12
    assert read_metrics(tmp_path / "resumed" / "metrics.jsonl") == rows
    assert resumed.final == full.final

    # inspect: the scores `birth inspect` computes on repeated random tokens, for this vocabulary
    scores = repeated_sequence_scores(model, half_len=8, batch_size=8, seed=0)
    assert scores["half_len"] == 8 and scores["n_sequences"] == 8
    for layer in ("layer1", "layer2"):
        assert set(scores[layer]) >= {"previous_token", "induction"}
    assert 0.0 <= scores["layer2"]["induction"]["mass"] <= 1.0 and "repeat_acc" in scores


def test_the_command_line_takes_the_task_and_its_flags(capsys):
    cmd = train_cmd.parse(["--task", "copy-test", "--n-symbols", "9", "--d-model", "16"])
    assert cmd.config.task == CopyConfig(seq_len=16, n_symbols=9)
    assert cmd.config.model.d_model == 16 and cmd.config.task_name == "copy-test"
    assert TrainConfig.from_dict(cmd.config.to_dict()) == cmd.config  # config.json names the task
