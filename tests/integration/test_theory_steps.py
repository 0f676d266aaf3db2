"""The three gradient steps in the theorem's setting: its data model, its simplified architecture, the
symmetrized population gradients, and a working induction head after three steps."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from birth.experiments.theory.steps import (
    PAPER_ORDER,
    StepsConfig,
    induction_logits,
    large_batch_gradient,
    run_gradient_steps,
    uniform_stats,
)
from birth.experiments.theory.theorem import (
    THEOREM_BLOCKS,
    THEOREM_STEP_NORMS,
    symmetrize,
    theorem_batch,
    theorem_projection,
    token_orbits,
)
from birth.experiments.theory.three_steps import ThreeStepsConfig
from birth.models.targets import (
    orthogonal_blocks,
    orthogonal_embeddings,
    orthogonal_width,
    target_memories,
    token_value,
)
from birth.models.transformer import attn_linear
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import TaskConfig, TriggeredBigram, loss_mask
from training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _relabeling(perm: torch.Tensor, vocab_size: int, seq_len: int, d: int) -> torch.Tensor:
    """[d, d] permutation matrix P that moves basis vector i of every token block to token perm[i]."""
    index = torch.arange(d)
    for name in ("tokens", "tokens_remapped", "unembedding"):
        start = orthogonal_blocks(vocab_size, seq_len)[name].start
        index[start + perm] = start + torch.arange(vocab_size)  # P[new, old] = 1: new = perm[old]
    return torch.eye(d)[index]


def test_symmetrize_is_the_average_over_every_relabeling_that_keeps_the_triggers():
    n, T, triggers = 4, 2, torch.tensor([0, 2])
    d = orthogonal_width(n, T) + 1  # one unused dimension
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(d, d, generator=gen, dtype=torch.float64)
    # brute force: every permutation of the 4 tokens that maps the trigger set {0, 2} onto itself
    group = [torch.tensor(p) for p in itertools.permutations(range(n)) if {p[0], p[2]} == {0, 2}]
    assert len(group) == 4
    average = sum(_relabeling(p, n, T, d).double() @ M @ _relabeling(p, n, T, d).double().T for p in group)
    orbits = token_orbits(n, T, d, triggers)
    assert torch.allclose(symmetrize(M, orbits), average / len(group), atol=1e-12)
    # an invariant matrix is left alone; the positions block has no token index and is untouched
    once = symmetrize(M, orbits)
    assert torch.allclose(symmetrize(once, orbits), once, atol=1e-12)
    pos = orthogonal_blocks(n, T)["positions"]
    assert torch.equal(once[pos, pos], M[pos, pos])


def _theorem_model(seq_len: int, seed: int = 0):
    config = TrainConfig().replace(
        d_model=256, seq_len=seq_len, output_mode="no_repeat", trainable_init="zero"
    )
    stats = uniform_stats(load_stats())
    model = config.build_model(stats.vocab_size)
    orthogonal_embeddings(model)
    token_value(model)
    return config, stats, model


def test_the_gradient_of_a_relabeling_invariant_model_moves_with_the_relabeling():
    # what makes `symmetrize` exact: with every frozen weight invariant, the gradient on relabeled
    # sequences is the relabeled gradient (checked on W_K² after an invariant W_O² is in place)
    config, stats, model = _theorem_model(seq_len=16)
    task = TriggeredBigram(config.task, stats)
    n, T, d = stats.vocab_size, 16, 256
    with torch.no_grad():
        attn_linear(model, 1, "o").weight.copy_(3.0 * target_memories(model, task.fixed_triggers)["W_OV2"].T)
    batch = task.sample(24, task.generator(5))
    # a random relabeling that permutes the triggers among themselves and the other tokens too
    gen = torch.Generator().manual_seed(1)
    is_trigger = torch.zeros(n, dtype=torch.bool)
    is_trigger[task.fixed_triggers] = True
    perm = torch.arange(n)
    for group in (torch.nonzero(is_trigger).flatten(), torch.nonzero(~is_trigger).flatten()):
        perm[group] = group[torch.randperm(group.numel(), generator=gen)]
    moved = type(batch)(perm[batch.tokens], batch.counter, perm[batch.triggers], perm[batch.outputs])

    def loss(m, b):
        mask = loss_mask(b, "outputs")
        return F.cross_entropy(induction_logits(m, b.inputs, mask, direct_path=False), b.targets[mask])

    def count(b):
        return int(loss_mask(b, "outputs").sum())

    weight = attn_linear(model, 1, "k").weight
    grad, _ = large_batch_gradient(model, weight, [batch], loss, count)
    grad_moved, _ = large_batch_gradient(model, weight, [moved], loss, count)
    P = _relabeling(perm, n, T, d)
    assert grad.abs().max() > 0
    assert torch.allclose(grad_moved, P @ grad @ P.T, atol=1e-6 * grad.abs().max().item())


def test_theorem_batch_is_the_second_output_token_with_first_occurrences_stratified():
    stats = uniform_stats(load_stats())
    T = 12
    task = TriggeredBigram(TaskConfig(seq_len=T, output_mode="no_repeat"), stats)
    batch = theorem_batch(task, 3, torch.Generator().manual_seed(0))
    b = 3 * (T - 2)
    assert batch.tokens.shape == (b, T + 1)
    first = torch.arange(T - 2).repeat_interleave(3)
    rows = torch.arange(b)
    q, o = batch.triggers[:, 0], batch.outputs[:, 0]
    assert torch.isin(q, task.fixed_triggers).all() and (o != q).all()
    assert torch.equal(batch.tokens[rows, first], q) and torch.equal(batch.tokens[:, T - 1], q)
    assert torch.equal(batch.tokens[rows, first + 1], o) and torch.equal(batch.targets[:, T - 1], o)
    noise = torch.ones(b, T + 1, dtype=torch.bool)
    noise[rows, first] = noise[rows, first + 1] = False
    noise[:, T - 1] = noise[:, T] = False
    assert not torch.isin(batch.tokens[noise], task.fixed_triggers).any()  # one trigger, twice
    mask = loss_mask(batch, "outputs")  # the loss sees the second output token only
    assert mask.sum() == b and mask[:, T - 1].all()
    assert torch.equal(batch.counter[rows, first], torch.ones(b, dtype=torch.long))
    with pytest.raises(ValueError, match="fixed triggers"):
        theorem_batch(TriggeredBigram(TaskConfig(seq_len=T, trigger_mode="random"), stats), 1, 0)


def test_theorem_projection_keeps_the_block_of_the_simplified_model():
    n, T, triggers = 65, 16, torch.arange(5)
    d = 256
    grad = torch.randn(d, d, generator=torch.Generator().manual_seed(0))
    blocks = orthogonal_blocks(n, T)
    restricted = theorem_projection(n, T, d, triggers, symmetric=False)
    for name, (rows, cols) in THEOREM_BLOCKS.items():
        kept = restricted(name, grad)
        assert torch.equal(kept[blocks[rows], blocks[cols]], grad[blocks[rows], blocks[cols]])
        assert int((kept != 0).sum()) == int((kept[blocks[rows], blocks[cols]] != 0).sum()) > 0
    both = theorem_projection(n, T, d, triggers)("W_KQ2", grad)[blocks["tokens"], blocks["tokens_remapped"]]
    # the trigger x trigger diagonal is one orbit: one value
    assert torch.allclose(both.diagonal()[:5], both.diagonal()[:5].mean().expand(5))


def test_three_steps_in_the_theorem_setting_give_a_working_induction_head():
    config = TrainConfig().replace(d_model=256, seq_len=24, output_mode="no_repeat", eval_batch_size=256)
    common = dict(
        order=PAPER_ORDER,
        n_sequences=2 * 22,
        embeddings="orthogonal",
        data="theorem",
        step_norms=THEOREM_STEP_NORMS,
    )
    theorem = run_gradient_steps(
        config, StepsConfig(value_tokens=True, restrict=True, symmetric=True, **common)
    )
    assert [r.probes[r.matrix] for r in theorem[1:3]] == [1.0, 1.0]
    assert theorem[3].probes["W_KQ1"] >= 0.9  # measured 0.96
    assert theorem[3].icl_acc >= 0.9  # measured 0.985 (chance 1/65): the induction head works
    # the same sequences without the theorem's simplifications: no induction head (measured 0.0)
    plain = run_gradient_steps(config, StepsConfig(**common))
    assert plain[3].icl_acc < 0.5


def test_theorem_options_refuse_what_they_cannot_do():
    config = TrainConfig().replace(d_model=256, seq_len=16, output_mode="no_repeat")
    with pytest.raises(ValueError, match="need embeddings='orthogonal'"):
        StepsConfig(n_sequences=8, value_tokens=True)
    with pytest.raises(ValueError, match="data must be one of"):
        StepsConfig(n_sequences=8, embeddings="orthogonal", data="paper")
    with pytest.raises(ValueError, match="symmetric needs fixed triggers"):
        StepsConfig(n_sequences=8, embeddings="orthogonal", symmetric=True, base="shakespeare")
    symmetric = StepsConfig(n_sequences=8, embeddings="orthogonal", symmetric=True)
    with pytest.raises(ValueError, match="symmetric needs fixed triggers"):
        run_gradient_steps(config.replace(trigger_mode="random"), symmetric)
    with pytest.raises(ValueError, match="--n-sequences"):
        StepsConfig(n_sequences=0)
    with pytest.raises(ValueError, match="--order"):
        StepsConfig(order=("W_OV2", "W_QK9"))
    with pytest.raises(ValueError, match="--trigger-mode must be fixed"):
        ThreeStepsConfig(train=config.replace(trigger_mode="random"))
    with pytest.raises(ValueError, match="--variants must be one of"):
        ThreeStepsConfig(variants=("theorem", "exact"))
    with pytest.raises(ValueError, match="--per-position"):
        ThreeStepsConfig(per_position=0)
