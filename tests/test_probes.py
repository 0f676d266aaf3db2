"""Memory-recall probes on hand-built memories and on random weights."""

from __future__ import annotations

import torch

from birth.model import ModelConfig, attn_linear, build_model
from probes.recall import (
    all_probes,
    memory_recall,
    recall_kq1,
    recall_kq2,
    recall_ov2,
    recall_scores,
)

TRIGGERS = torch.tensor([1, 47, 58, 53, 39])  # ' ', 'e', 't', 'o', 'a'


def test_memory_recall_on_one_hot_memories():
    n = 6
    eye = torch.eye(n)
    perm = torch.tensor([2, 0, 1, 5, 3, 4])
    W = eye[perm]  # row form: u_i @ W = e_{perm[i]}, a memory i -> perm[i]
    assert memory_recall(W, eye, eye, perm) == 1.0
    assert memory_recall(W, eye, eye, torch.arange(n)) == 0.0
    # half of the pairs stored
    W_half = W.clone()
    W_half[3:] = 0
    W_half[3:, 0] = 1  # the last three all map to output 0 instead
    assert abs(memory_recall(W_half, eye, eye, perm) - 0.5) < 1e-6


def _hand_built(model):
    """Insert the paper's target memories (section 5) into a simplified 2-layer model."""
    W_E, W_U, P = model.W_E.detach(), model.W_U.T.detach(), model.W_pos.detach()
    with torch.no_grad():
        # W_OV² = Σ_k w_U(k) w_E(k)ᵀ: with W_V² = I, row-form W_O² = Σ_k w_E(k)ᵀ w_U(k)
        attn_linear(model, 1, "v").weight.copy_(torch.eye(W_E.shape[1]))
        attn_linear(model, 1, "o").weight.copy_((W_E.T @ W_U).T)
        # W_KQ² = Σ_{k∈Q} w_E(k) (W_OV¹ w_E(k))ᵀ; with W_Q = I the row-form QK is k.weight
        keys = W_E[TRIGGERS] @ model.OV[0, 0].AB
        attn_linear(model, 1, "k").weight.copy_(W_E[TRIGGERS].T @ keys)
        # W_KQ¹ = Σ_t p_{t+1} p_tᵀ (query p_{t+1}, key p_t)
        attn_linear(model, 0, "k").weight.copy_(P[1:].T @ P[:-1])


def test_hand_built_memories_give_recall_one():
    model = build_model(ModelConfig(n_layers=2, d_model=256, n_ctx=32, seed=0))
    _hand_built(model)
    assert recall_ov2(model) == 1.0
    assert recall_kq2(model, TRIGGERS) == 1.0
    assert recall_kq1(model) == 1.0
    assert all_probes(model, TRIGGERS) == {"W_OV2": 1.0, "W_KQ2": 1.0, "W_KQ1": 1.0}


def test_random_weights_give_about_chance():
    recalls = {"ov2": [], "kq2": [], "kq1": []}
    for seed in range(3):
        model = build_model(ModelConfig(n_layers=2, d_model=64, n_ctx=64, seed=seed))
        recalls["ov2"].append(recall_ov2(model))  # chance 1/65
        recalls["kq2"].append(recall_kq2(model, None))  # whole vocabulary: chance 1/65
        recalls["kq1"].append(recall_kq1(model))  # chance 1/64
    for name, values in recalls.items():
        assert sum(values) / len(values) < 0.12, (name, values)


def test_probe_detects_a_partly_stored_memory():
    model = build_model(ModelConfig(n_layers=2, d_model=256, n_ctx=32, seed=1))
    _hand_built(model)
    W_E, W_U = model.W_E.detach(), model.W_U.T.detach()
    half = torch.arange(0, 65, 2)  # store only even tokens in W_OV²
    with torch.no_grad():
        attn_linear(model, 1, "o").weight.copy_((W_E[half].T @ W_U[half]).T)
    r = recall_ov2(model)
    assert 0.45 <= r <= 0.65  # the 33 stored tokens, plus rare lucky odd ones


def test_probes_never_build_the_gradient_graph():
    model = build_model(ModelConfig(n_layers=2, d_model=16, n_ctx=8, variant="full"))
    W = model.OV[1, 0]
    assert W.A.requires_grad  # the weights are trainable...
    scores = recall_scores(W, model.W_E, model.W_U.T)
    assert not scores.requires_grad and scores.grad_fn is None  # ...but the probe has no graph
    all_probes(model)
    assert all(p.grad is None for p in model.parameters())


def test_one_layer_model_probe():
    model = build_model(ModelConfig(n_layers=1, d_model=256, n_ctx=16, seed=0))
    W_E, W_U = model.W_E.detach(), model.W_U.T.detach()
    with torch.no_grad():
        attn_linear(model, 0, "v").weight.copy_(torch.eye(256))
        attn_linear(model, 0, "o").weight.copy_((W_E.T @ W_U).T)
    assert all_probes(model) == {"W_OV": 1.0}
