"""The markov-icl task: its prior, sampler, exact strategies and metrics; the circuit patterns."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import torch

from birth.base.config_io import config_from_dict
from birth.base.io import to_jsonable
from birth.models.targets import insert_memories, orthogonal_blocks, orthogonal_embeddings
from birth.models.transformer import ModelConfig, attn_linear
from tasks.circuits import (
    follows_current_token,
    induction_mass,
    previous_token_mass,
    previous_token_pattern,
    statistical_induction_pattern,
)
from tasks.markov_icl import (
    BAYES_LOSS,
    EXCESS_LOSS,
    KL_BIGRAM,
    KL_UNIFORM,
    KL_UNIGRAM,
    MarkovICL,
    MarkovICLConfig,
    gamma,
    stationary_law,
    strategy_laws,
)
from tasks.protocol import MemoryTargets, MemoryTask, memory_targets
from tasks.registry import build_task
from training.config import TrainConfig
from training.evaluation import evaluate, standard_groups


def test_registered_and_built_by_name():
    task = build_task(MarkovICLConfig(n_states=3))
    assert isinstance(task, MarkovICL) and task.vocab_size == 3


@pytest.mark.parametrize(
    "changes, option",
    [(dict(n_states=1), "--n-states"), (dict(alpha=0.0), "--alpha"), (dict(alpha=math.nan), "--alpha"),
     (dict(alpha=-1.0), "--alpha"), (dict(seq_len=1), "--seq-len")],
)  # fmt: skip
def test_bad_values_name_their_option(changes, option):
    with pytest.raises(ValueError, match=option):
        MarkovICLConfig(**changes)


@pytest.mark.parametrize("concentration", [0.3, 1.0, 2.5])
def test_gamma_moments(concentration):
    draws = gamma(concentration, (200_000,), torch.Generator().manual_seed(0))
    assert abs(draws.mean().item() - concentration) < 0.02 * max(concentration, 1)
    assert abs(draws.var().item() - concentration) < 0.05 * max(concentration, 1)


def test_seeded_and_rows_are_laws():
    task = MarkovICL(MarkovICLConfig(n_states=4, seq_len=20))
    a, b = task.sample(16, task.generator(7)), task.sample(16, task.generator(7))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.transitions, b.transitions)
    assert not torch.equal(a.tokens, task.sample(16, task.generator(8)).tokens)
    assert torch.allclose(a.transitions.sum(-1), torch.ones(16, 4, dtype=torch.float64))
    assert a.tokens.min() >= 0 and a.tokens.max() < 4


def test_dirichlet_rows_have_the_prior_mean_and_variance():
    alpha, k = 0.5, 3
    P = MarkovICL(MarkovICLConfig(n_states=k, alpha=alpha)).sample_transitions(
        20_000, torch.Generator().manual_seed(0)
    )
    # Dirichlet(α·1): mean 1/k, variance (k - 1) / (k² (kα + 1))
    assert abs(P.mean().item() - 1 / k) < 1e-3
    assert abs(P.var().item() - (k - 1) / (k**2 * (k * alpha + 1))) < 2e-3


def test_doubly_stochastic_prior_has_a_uniform_stationary_law():
    task = MarkovICL(MarkovICLConfig(n_states=5, prior="doubly_stochastic"))
    P = task.sample_transitions(64, torch.Generator().manual_seed(1))
    ones = torch.ones(64, 5, dtype=torch.float64)
    assert torch.allclose(P.sum(-1), ones) and torch.allclose(P.sum(-2), ones)
    assert torch.allclose(stationary_law(P), ones / 5)


def test_the_chain_follows_its_transition_matrix():
    task = MarkovICL(MarkovICLConfig(n_states=3, seq_len=400))
    batch = task.sample(200, task.generator(0))
    # pool the transitions of each sequence against its own rows: observed counts vs expected
    x, y = batch.inputs, batch.targets
    expected = batch.transitions.gather(1, x[:, :, None].expand(-1, -1, 3)).sum(dim=(0, 1))  # Σ_t P[z_t]
    observed = torch.nn.functional.one_hot(y, 3).sum(dim=(0, 1)).double()
    assert torch.allclose(observed / observed.sum(), expected / expected.sum(), atol=3e-3)


@pytest.mark.parametrize("first_state", ["stationary", "uniform"])
def test_first_state_law(first_state):
    task = MarkovICL(MarkovICLConfig(n_states=2, first_state=first_state))
    batch = task.sample(20_000, task.generator(3))
    pi = stationary_law(batch.transitions)
    is_one = (batch.tokens[:, 0] == 1).double()
    # P(z_1 = 1) is E[π(1)] = 1/2 either way; only the stationary start correlates with π(1)
    assert abs(is_one.mean().item() - 0.5) < 0.02
    correlation = torch.corrcoef(torch.stack([is_one, pi[:, 1]]))[0, 1].item()
    assert (correlation > 0.3) if first_state == "stationary" else (abs(correlation) < 0.03)


def test_strategies_by_hand():
    # z = 0 1 0 0 1, k = 2, α = 1
    laws = strategy_laws(torch.tensor([[0, 1, 0, 0, 1]]), 2, 1.0)
    assert torch.allclose(laws["uniform"], torch.full((1, 5, 2), 0.5, dtype=torch.float64))
    # unigram at t = 3 (z_1..z_4 = 0 1 0 0): (3 + 1, 1 + 1) / (4 + 2)
    assert torch.allclose(laws["unigram"][0, 3], torch.tensor([4 / 6, 2 / 6], dtype=torch.float64))
    # bigram at t = 3 (current 0; transitions out of 0 before: 0->1, 1->0 no, 0->0): (1 + 1, 1 + 1) / 4
    assert torch.allclose(laws["bigram"][0, 3], torch.tensor([0.5, 0.5], dtype=torch.float64))
    # at t = 4 (current 1; 1->0 once): (1 + 1, 0 + 1) / 3
    assert torch.allclose(laws["bigram"][0, 4], torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    # first position: no transition seen, the prior mean
    assert torch.allclose(laws["bigram"][0, 0], torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_metrics_of_each_strategy_and_the_bayes_order():
    task = MarkovICL(MarkovICLConfig(n_states=3, first_state="uniform", seq_len=50))
    batch = task.sample(2000, task.generator(0))
    laws = task.strategies(batch)
    exact = task.metrics(laws["bigram"].log().float(), batch)
    assert exact[KL_BIGRAM] < 1e-6 and abs(exact[EXCESS_LOSS]) < 1e-6
    assert exact[KL_UNIGRAM] > 0.05 and exact[KL_UNIFORM] > exact[KL_UNIGRAM]
    flat = task.metrics(torch.zeros(2000, 50, 3), batch)
    assert flat[KL_UNIFORM] < 1e-6
    # the Bayes-optimal predictor beats the unigram and uniform ones on held-out chains
    unigram = task.metrics(laws["unigram"].log().float(), batch)
    assert exact[BAYES_LOSS] < unigram["eval/model_loss"] < flat["eval/model_loss"]
    assert exact["eval/oracle_loss"] < exact[BAYES_LOSS]


def test_circuit_patterns_and_masses():
    inputs = torch.tensor([[0, 1, 0, 0, 1]])
    match = follows_current_token(inputs)[0]
    # query 2 (token 0): key 1 follows the 0 at position 0; key 3? no (3 > 2). query 3: keys 1, 3
    assert match[2].nonzero().flatten().tolist() == [1]
    assert match[3].nonzero().flatten().tolist() == [1, 3]
    assert match[4].nonzero().flatten().tolist() == [2]  # the 1 at position 1 is followed by key 2
    pattern, rows = statistical_induction_pattern(inputs)
    assert rows[0].tolist() == [False, False, True, True, True]
    assert torch.allclose(pattern[0, 3], torch.tensor([0, 0.5, 0, 0.5, 0]))
    assert induction_mass(pattern, inputs) == pytest.approx(1.0)
    prev = previous_token_pattern(1, 5)
    assert previous_token_mass(prev) == pytest.approx(1.0)
    assert prev[0, 0, 0] == 1 and prev[0, 4, 3] == 1
    uniform = torch.ones(1, 5, 5).tril() / torch.arange(1, 6)[:, None]
    assert previous_token_mass(uniform) == pytest.approx(sum(1 / t for t in range(2, 6)) / 4)


@dataclass(frozen=True)
class _HoldsARun:
    """An experiment-like config with a training config field, as experiment configs have."""

    train: TrainConfig = field(default_factory=TrainConfig)


def test_a_train_config_field_reads_back_as_its_own_task():
    held = _HoldsARun(train=TrainConfig(task=MarkovICLConfig(n_states=4, alpha=0.5, seq_len=16)))
    written = json.loads(json.dumps(to_jsonable(held)))
    assert written["train"]["task_name"] == "markov-icl"
    assert config_from_dict(_HoldsARun, written) == held
    # a section without task_name is the default task's, as in run configs written before it
    plain = config_from_dict(_HoldsARun, {"train": {"task": {"seq_len": 32}}})
    assert plain.train.task_name == "triggered-bigram" and plain.train.task.seq_len == 32
    with pytest.raises(ValueError, match=r"config\.train\.task: unknown key 'alpha'"):
        config_from_dict(_HoldsARun, {"train": {"task": {"alpha": 1.0}}})
    with pytest.raises(ValueError, match=r"config\.train\.task_name: --task must be one of"):
        config_from_dict(_HoldsARun, {"train": {"task_name": "nope"}})


# --- the recall probes on markov-icl ---------------------------------------------------------------


def _hand_built(stored: bool) -> tuple[MarkovICL, torch.nn.Module]:
    """A 2-layer simplified model on markov-icl (k = 4, T = 6) with orthogonal embeddings and the
    memories of the statistical induction head written in: every state is a query (W_KQ² stores
    w_E(k) -> W_OV¹ w_E(k) and W_OV² stores w_E(k) -> w_U(k) for all k) and W_KQ¹ p_{t+1} -> p_t.
    `stored` False: each memory shifted by one (state k -> k + 1 mod k, position t+1 -> t+2)."""
    task = MarkovICL(MarkovICLConfig(n_states=4, seq_len=6))
    config = TrainConfig(task=task.config, model=ModelConfig(d_model=3 * 4 + 2 * 6))
    model = config.build_model(task.vocab_size)
    orthogonal_embeddings(model)
    targets = memory_targets(task)
    insert_memories(model, targets.triggers, scale=10.0)
    if not stored:
        blocks = orthogonal_blocks(4, 6)
        # rows of W_O² (output dims: the unembeddings), of W_K² and W_K¹ (row-form QK with W_Q = I:
        # query dims, the states and the positions) rolled by one
        for layer, name, block in ((1, "o", "unembedding"), (1, "k", "tokens"), (0, "k", "positions")):
            weight = attn_linear(model, layer, name).weight
            rows = torch.arange(model.cfg.d_model)[blocks[block]]
            with torch.no_grad():
                weight[rows] = weight[rows.roll(1)].clone()
    return task, model


def test_markov_icl_stores_every_state_in_the_memories():
    """markov-icl has no trigger set and no global bigram table: every state is a trigger and an
    output (`tasks.protocol.memory_targets` gives every token, no W_F probe); its batches carry no
    occurrence counter, so it is not a `MemoryTask` (no trigger-based attention probes)."""
    task = MarkovICL(MarkovICLConfig(n_states=4))
    assert memory_targets(task) == MemoryTargets(triggers=None, bigram=None)
    assert not isinstance(task, MemoryTask)


@pytest.mark.parametrize("stored", [True, False])
def test_recall_probes_read_the_hand_built_statistical_induction_head(stored):
    task, model = _hand_built(stored)
    batch = task.sample(8, 0)
    row = evaluate(model, batch, standard_groups(task, loss_on="all"))
    probes = [row[f"probes/{name}"] for name in ("W_OV2", "W_KQ2", "W_KQ1")]
    if stored:
        assert probes == [1.0, 1.0, 1.0]
        assert row["recall_all/W_KQ2"] == 1.0 and row["margin/W_OV2"] > 0 and row["margin/W_KQ2"] > 0
    else:
        assert probes[0] == probes[1] == 0.0  # every state's best candidate is the next one
        # p_{t+1} picks p_{t-1}; p_1's row is now empty: its keys tie and the first, p_0, is a hit
        assert probes[2] == pytest.approx(1 / 5)
