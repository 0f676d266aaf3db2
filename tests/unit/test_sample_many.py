"""`tasks.protocol.sample_many`: the batches of several generators drawn together equal, bit for bit,
the batches each generator gives alone (stacked training draws its runs' batches this way)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tasks.markov_icl import MarkovICL, MarkovICLConfig
from tasks.protocol import ManySampler, TokenBatch, sample_many
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import TaskConfig, TriggeredBigram

SEEDS = (0, 7, 123456789)


@pytest.fixture(scope="module")
def stats():
    return load_stats()


def assert_same_batches(together: list[TokenBatch], alone: list[TokenBatch]) -> None:
    assert len(together) == len(alone)
    for a, b in zip(together, alone):
        assert type(a) is type(b)
        for field in dataclasses.fields(b):
            x, y = getattr(a, field.name), getattr(b, field.name)
            assert x.dtype == y.dtype and x.shape == y.shape, field.name
            assert torch.equal(x, y), field.name


def per_run(task, batch_size: int) -> list[TokenBatch]:
    return [task.sample(batch_size, task.generator(s)) for s in SEEDS]


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(trigger_mode="random", output_mode="no_repeat"),
        dict(trigger_mode="random", output_mode="bigram", show_latents=True),
        dict(output_mode="uniform", output_split="train", show_latents=True),
        dict(trigger_mode="random", output_mode="no_repeat", output_split="test"),
        dict(n_triggers=0),
    ],
)
def test_triggered_bigram_batches_drawn_together_equal_each_alone(stats, settings):
    task = TriggeredBigram(TaskConfig(seq_len=24, **settings), stats)
    assert isinstance(task, ManySampler)
    together = sample_many(task, 9, [task.generator(s) for s in SEEDS])
    assert_same_batches(together, per_run(task, 9))
    # the runs' batches differ: each came from its own generator
    assert len({tuple(b.tokens.flatten().tolist()) for b in together}) == len(SEEDS)


def test_generators_end_where_sampling_alone_leaves_them(stats):
    task = TriggeredBigram(TaskConfig(seq_len=16, trigger_mode="random"), stats)
    together, alone = [task.generator(s) for s in SEEDS], [task.generator(s) for s in SEEDS]
    sample_many(task, 4, together)
    for gen in alone:
        task.sample(4, gen)
    for a, b in zip(together, alone):
        assert torch.equal(a.get_state(), b.get_state())


def test_a_task_without_sample_many_samples_one_by_one():
    task = MarkovICL(MarkovICLConfig(), device="cpu")
    assert not isinstance(task, ManySampler)
    assert_same_batches(sample_many(task, 5, [task.generator(s) for s in SEEDS]), per_run(task, 5))
    assert sample_many(task, 5, []) == []
