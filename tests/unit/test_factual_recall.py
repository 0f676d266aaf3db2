"""The factual-recall task (tasks/factual_recall.py): its facts, its sequences' statistics, its
loss mask, metrics and baselines, and its registration."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.factual_recall import FACT_ACC, RELATION_ACC, FactualRecall, FactualRecallConfig
from tasks.protocol import Task
from tasks.registry import build_task, get_task

CONFIG = FactualRecallConfig(n_subjects=12, n_relations=3, answers_per_relation=5, n_noise=7, seq_len=6)


def test_registered_and_a_task():
    assert get_task("factual-recall").config is FactualRecallConfig
    task = build_task(CONFIG)
    assert isinstance(task, FactualRecall) and isinstance(task, Task)
    assert task.vocab_size == 12 + 3 + 15 + 7 and task.seq_len == 6


def test_facts_lie_in_their_relation_answer_set_and_are_seeded():
    task = FactualRecall(CONFIG)
    for r in range(3):
        lo, hi = (int(v) for v in task.answer_sets(torch.tensor(r)))
        assert ((task.facts[:, r] >= lo) & (task.facts[:, r] < hi)).all()
    assert torch.equal(task.facts, FactualRecall(CONFIG).facts)
    other = FactualRecall(FactualRecallConfig(**{**CONFIG.__dict__, "facts_seed": 1}))
    assert not torch.equal(task.facts, other.facts)


def test_sequence_statistics():
    task = FactualRecall(CONFIG)
    batch = task.sample(20000, task.generator(0))
    inputs = batch.inputs
    # exactly one subject and one relation token per sequence, the rest noise
    is_subject = inputs < 12
    is_relation = (inputs >= 12) & (inputs < 15)
    is_noise = inputs >= task.noise_offset
    assert (is_subject.sum(1) == 1).all() and (is_relation.sum(1) == 1).all()
    assert (is_noise.sum(1) == 4).all()
    assert torch.equal(inputs[is_subject], batch.subjects)
    assert torch.equal(inputs[is_relation] - 12, batch.relations)
    # the target after the last input is the fact
    assert torch.equal(batch.targets[:, -1], task.facts[batch.subjects, batch.relations])
    # subjects, relations, noise tokens and both positions uniform (within 5 standard errors)
    for values, k in (
        (batch.subjects, 12),
        (batch.relations, 3),
        (inputs[is_noise] - task.noise_offset, 7),
        (is_subject.float().argmax(1), 6),
        (is_relation.float().argmax(1), 6),
    ):
        freq = torch.bincount(values, minlength=k).double() / values.numel()
        se = math.sqrt((1 / k) * (1 - 1 / k) / values.numel())
        assert (freq - 1 / k).abs().max() < 5 * se


def test_relation_last_layout_and_seeding():
    task = FactualRecall(FactualRecallConfig(seq_len=5, layout="relation-last"))
    batch = task.sample(500, task.generator(3))
    assert ((batch.inputs[:, -1] - task.relation_offset) == batch.relations).all()
    assert (batch.inputs[:, :-1] < task.config.n_subjects).sum(1).eq(1).all()
    assert torch.equal(batch.tokens, task.sample(500, task.generator(3)).tokens)


def test_all_facts_enumerates_each_fact_once():
    task = FactualRecall(CONFIG)
    batch = task.all_facts(task.generator(1))
    pairs = set(zip(batch.subjects.tolist(), batch.relations.tolist()))
    assert len(batch.subjects) == CONFIG.num_facts == len(pairs) == 36


def test_loss_mask_metrics_and_baselines():
    task = FactualRecall(CONFIG)
    batch = task.sample(64, task.generator(2))
    mask = task.loss_mask(batch, "outputs")
    assert mask.sum() == 64 and mask[:, -1].all()
    assert task.loss_mask(batch, "all").all()
    logits = torch.zeros(64, 6, task.vocab_size)
    logits[torch.arange(64), -1, batch.answers] = 10.0  # the right answer everywhere
    assert task.metrics(logits, batch)[FACT_ACC] == 1.0
    wrong_subject = torch.zeros(64, 6, task.vocab_size)
    lo, _ = task.answer_sets(batch.relations)
    other = lo + (batch.answers - lo + 1) % 5  # another answer of the same relation
    wrong_subject[torch.arange(64), -1, other] = 10.0
    metrics = task.metrics(wrong_subject, batch)
    assert metrics[FACT_ACC] == 0.0 and metrics[RELATION_ACC] == 1.0
    # the relation-only loss: the entropy of each relation's answers, at most log D
    assert 0 < task.relation_only_loss() <= task.uniform_loss() == pytest.approx(math.log(5))
    single = FactualRecall(FactualRecallConfig(n_subjects=1, n_relations=2))
    assert single.relation_only_loss() == 0.0  # one subject: the relation says everything


def test_bad_config_names_the_option():
    with pytest.raises(ValueError, match="--n-noise"):
        FactualRecallConfig(n_noise=0, seq_len=4)
    with pytest.raises(ValueError, match="--seq-len"):
        FactualRecallConfig(seq_len=1)
