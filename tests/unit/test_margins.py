"""Non-saturating probe readings (probes/margins.py) and the extra keys of the evaluation (training/evaluation.py)."""

from __future__ import annotations

import math

import pytest
import torch

from birth.models.transformer import ModelConfig, attn_linear, build_model
from probes.margins import (
    kq1_position_recall,
    margin_probes,
    memory_margin,
    normalized_margins,
    recall_all_kq2,
)
from probes.recall import recall_kq1, recall_kq2
from tasks.triggered_bigram import TaskConfig, TriggeredBigram
from training.evaluation import evaluate, standard_groups
from training.matrices import gradient_norms, named_matrices, trained_matrices
from training.schedule import init_at_target

# --- normalized margins on score tables ---------------------------------------------------------


def brute_force_margins(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    out = []
    for row, y in zip(scores.tolist(), targets.tolist()):
        wrong = max(v for j, v in enumerate(row) if j != y)
        spread = max(row) - min(row)
        out.append(0.0 if spread == 0 else (row[y] - wrong) / spread)
    return out


def test_margins_of_hand_built_rows():
    scores = torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [2.0, 2.0, 2.0], [0.0, 5.0, 5.0]])
    targets = torch.tensor([0, 1, 2, 1])
    m = normalized_margins(scores, targets)
    assert m.tolist() == pytest.approx([2 / 3, -2 / 3, 0.0, 0.0])
    # a clean one-hot row reads exactly 1, one candidate has no wrong one
    assert normalized_margins(torch.eye(4) * 7, torch.arange(4)).tolist() == [1.0] * 4
    assert normalized_margins(torch.tensor([[-2.0]]), torch.tensor([0])).tolist() == [1.0]


def test_margins_equal_brute_force_and_sign_is_the_recall():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 17, generator=gen)
    targets = torch.randint(0, 17, (200,), generator=gen)
    m = normalized_margins(scores, targets)
    assert m.tolist() == pytest.approx(brute_force_margins(scores, targets), abs=1e-12)
    assert torch.equal(m > 0, scores.argmax(dim=1) == targets)
    assert bool((m >= -1).all() and (m <= 1).all())


def test_margins_ignore_scale_and_row_offsets():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(50, 9, generator=gen)
    targets = torch.randint(0, 9, (50,), generator=gen)
    shifted = 12.5 * scores + torch.randn(50, 1, generator=gen) * 100
    assert torch.allclose(
        normalized_margins(shifted, targets), normalized_margins(scores, targets), atol=1e-9
    )


def test_memory_margin_of_a_clean_and_a_noisy_memory():
    d, n = 64, 20
    basis = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(2)))[0]
    u, v = basis[:n], basis[n : 2 * n]  # orthonormal inputs and outputs
    W = u.T @ v  # Σ_i u_iᵀ v_i: row u_i ↦ v_i
    assert memory_margin(W, u, v, torch.arange(n)) == pytest.approx(1.0)
    noisy = W + 0.3 * torch.randn(d, d, generator=torch.Generator().manual_seed(3))
    m = memory_margin(noisy, u, v, torch.arange(n))
    assert 0.0 < m < 0.95
    assert memory_margin(torch.zeros(d, d), u, v, torch.arange(n)) == 0.0


# --- the readings on models ---------------------------------------------------------------------


def model_with_targets(
    d: int = 64, T: int = 16, seed: int = 0, triggers=None, names=("W_O2", "W_K2", "W_K1")
):
    model = build_model(ModelConfig(d_model=d, trainable_init="zero"), n_ctx=T, seed=seed)
    init_at_target(model, names, triggers, scale=30.0)
    return model


def test_recall_against_all_tokens_sees_a_distractor_the_trigger_probe_cannot():
    task = TriggeredBigram(TaskConfig(seq_len=16))
    triggers = task.fixed_triggers
    model = model_with_targets(d=128, triggers=triggers, names=("W_K2",))
    assert recall_kq2(model, triggers) == 1.0 and recall_all_kq2(model, triggers) == 1.0
    # every trigger query now also matches the key of one non-trigger token, far more strongly;
    # the added term reads only the part of that key orthogonal to the triggers' keys, so the
    # scores of the 5 trigger keys do not change at all
    W_E = model.W_E.detach()
    ov1 = model.OV[0, 0].AB
    trigger_keys = W_E[triggers] @ ov1  # [5, d]
    distractor = next(k for k in range(65) if k not in triggers.tolist())
    key = W_E[distractor] @ ov1
    basis = torch.linalg.qr(trigger_keys.T)[0]  # [d, 5]
    key = key - basis @ (basis.T @ key)
    k2 = attn_linear(model, 1, "k").weight
    queries = W_E[triggers]
    stored = ((queries @ k2) * trigger_keys).sum(-1).mean()
    with torch.no_grad():
        q = queries.sum(0)
        # score of the distractor for each trigger query ≈ 10x a stored pair's
        k2 += 10 * stored * torch.outer(q, key) / ((queries @ q).min() * key.dot(W_E[distractor] @ ov1))
    assert recall_kq2(model, triggers) == 1.0  # ranked among the 5 triggers only: unchanged
    assert recall_all_kq2(model, triggers) == 0.0  # among all 65 tokens the distractor wins
    assert margin_probes(model, triggers)["W_KQ2"] < 0


def test_margins_of_target_memories_beat_the_zero_model():
    zero = build_model(ModelConfig(d_model=64, trainable_init="zero"), n_ctx=16, seed=0)
    assert margin_probes(zero) == {"W_OV2": 0.0, "W_KQ2": 0.0, "W_KQ1": 0.0}
    narrow, wide = margin_probes(model_with_targets(d=64)), margin_probes(model_with_targets(d=256))
    # the target memories lead by a margin that grows with the width (cross-talk ∝ 1/√d)
    for name in narrow:
        assert 0.0 < narrow[name] < wide[name], (name, narrow[name], wide[name])


def test_kq1_bins_follow_the_stored_positions():
    T, d = 32, 128
    model = build_model(ModelConfig(d_model=d, trainable_init="zero"), n_ctx=T, seed=0)
    P = model.W_pos.detach()
    with torch.no_grad():  # store p_{t+1} -> p_t for t < 16 only
        attn_linear(model, 0, "k").weight.copy_(P[1:17].T @ P[:16])
    bins = kq1_position_recall(model, n_bins=4)
    # 31 pairs in 4 bins: t in 0-7, 8-15, 16-22, 23-30
    assert list(bins) == ["W_KQ1_64", "pos_000-007", "pos_008-015", "pos_016-022", "pos_023-030"]
    assert bins["pos_000-007"] == 1.0 and bins["pos_008-015"] == 1.0
    assert bins["pos_016-022"] < 0.5 and bins["pos_023-030"] < 0.5
    # the bins partition the pairs: their weighted mean is the W_KQ1 probe
    sizes = [8, 8, 7, 8]
    mean = sum(s * bins[k] for s, k in zip(sizes, list(bins)[1:])) / 31
    assert mean == pytest.approx(recall_kq1(model))
    assert bins["W_KQ1_64"] == pytest.approx(recall_kq1(model))  # T < 64: every position


def test_kq1_64_is_the_reference_cut():
    T = 80
    model = build_model(ModelConfig(d_model=128, trainable_init="zero"), n_ctx=T, seed=1)
    P = model.W_pos.detach()
    # store the first 64 positions' pairs, and let p_70 win every query through a term that reads
    # only the part of p_70 orthogonal to p_0..p_62 (so the scores of those keys do not change)
    basis = torch.linalg.qr(P[:63].T)[0]
    away = P[70] - basis @ (basis.T @ P[70])
    queries = P[1:].sum(0)
    with torch.no_grad():
        attn_linear(model, 0, "k").weight.copy_(P[1:64].T @ P[:63] + 1e3 * torch.outer(queries, away))
    bins = kq1_position_recall(model)
    assert bins["W_KQ1_64"] == 1.0  # keys p_0..p_62 only, as the reference's wk0_64: p_70 is no key
    assert recall_kq1(model) < 0.1  # over all keys p_70 wins


# --- evaluate -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_batch():
    task = TriggeredBigram(TaskConfig(seq_len=16, trigger_mode="random"))
    return task, task.sample(32, 0)


def test_evaluate_keeps_its_keys_and_adds_the_readings(task_batch):
    task, batch = task_batch
    model = model_with_targets()
    with torch.no_grad():  # a random W_K1: the readings must differ from the target ones
        attn_linear(model, 0, "k").weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    base = evaluate(model, batch, standard_groups(task))
    extra = evaluate(model, batch, standard_groups(task, attention=True, matrices=trained_matrices(model)))
    for key in (
        "eval/loss",
        "eval/icl_acc",
        "eval/first_acc",
        "eval/bigram_loss",
        "probes/W_OV2",
        "probes/W_KQ1",
    ):
        assert key in base and extra[key] == pytest.approx(base[key], abs=1e-5), key
    assert extra["recall_all/W_KQ2"] == base["probes/W_KQ2"]  # random triggers: all tokens already
    for name in ("score_acc", "score2_acc", "pred_attended_acc", "prev_mass", "induction_mass"):
        assert 0.0 <= extra[f"attn/{name}"] <= 1.0
    assert "attn/score_acc" not in base
    assert {"norm/W_K1", "norm/W_K2", "norm/W_O2"} <= set(extra)
    assert not any(k.startswith("grad_norm/") for k in extra)  # the loop adds those
    assert extra["norm/W_O2"] == pytest.approx(attn_linear(model, 1, "o").weight.norm().item())
    assert -1.0 <= extra["margin/W_KQ1"] <= 1.0


def test_gradient_norms_of_the_trained_matrices(task_batch):
    _, batch = task_batch
    model = build_model(ModelConfig(d_model=32), n_ctx=16, seed=0)
    matrices = trained_matrices(model)
    assert set(matrices) == {"W_K1", "W_K2", "W_O2"}
    assert {"W_Q1", "W_V2", "W_E", "W_U", "W_pos"} <= set(named_matrices(model))
    assert gradient_norms(matrices) == {}  # no gradient yet
    attn_linear(model, 0, "k").weight.requires_grad_(False)  # as --schedule freezes a matrix
    model(batch.inputs).logsumexp(-1).mean().backward()
    norms = gradient_norms(matrices)
    assert set(norms) == {"grad_norm/W_K2", "grad_norm/W_O2"}
    for name in ("W_K2", "W_O2"):
        assert norms[f"grad_norm/{name}"] == pytest.approx(matrices[name].grad.norm().item())


def test_the_attention_probes_of_the_hand_built_circuit(task_batch):
    """With the three target memories the circuit attends where the probes look."""
    task = TriggeredBigram(TaskConfig(seq_len=32, trigger_mode="fixed"))
    batch = task.sample(64, 1)
    model = model_with_targets(d=128, T=32, triggers=task.fixed_triggers)
    row = evaluate(model, batch, standard_groups(task, attention=True))
    assert row["attn/score_acc"] > 0.95  # layer 1 attends to the trigger from its output
    assert row["attn/score2_acc"] > 0.7  # layer 2 attends after an earlier occurrence
    assert row["attn/pred_attended_acc"] > 0.7
    assert not math.isnan(row["eval/icl_acc"])
