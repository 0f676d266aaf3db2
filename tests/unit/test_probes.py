"""Memory-recall probes on hand-built memories and on random weights."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from birth.models.transformer import (
    SIMPLIFIED_FFN,
    ModelConfig,
    attn_linear,
    build_model,
    layer_norm,
    mlp_linear,
    native,
)
from probes.recall import (
    FF_PROBE,
    all_probes,
    effective_embeddings,
    ff_bigram_kl,
    ff_logits,
    head_probes,
    in_context_trigger_shares,
    induction_weights,
    kq1_by_position,
    kq1_recalls,
    kq2_layer_hits,
    kq2_layer_recall,
    kq2_layer_recalls,
    kq2_recalls,
    layer_probes,
    memory_recall,
    ov2_layer_recall,
    ov2_recalls,
    previous_token_weights,
    probe_report,
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
    model = build_model(ModelConfig(n_layers=2, d_model=256), n_ctx=32, seed=0)
    _hand_built(model)
    assert recall_ov2(model) == 1.0
    assert recall_kq2(model, TRIGGERS) == 1.0
    assert recall_kq1(model) == 1.0
    assert all_probes(model, TRIGGERS) == {"W_OV2": 1.0, "W_KQ2": 1.0, "W_KQ1": 1.0}


def test_random_weights_give_about_chance():
    recalls = {"ov2": [], "kq2": [], "kq1": []}
    for seed in range(3):
        model = build_model(ModelConfig(n_layers=2, d_model=64), n_ctx=64, seed=seed)
        recalls["ov2"].append(recall_ov2(model))  # chance 1/65
        recalls["kq2"].append(recall_kq2(model, None))  # whole vocabulary: chance 1/65
        recalls["kq1"].append(recall_kq1(model))  # chance 1/64
    for name, values in recalls.items():
        assert sum(values) / len(values) < 0.12, (name, values)


def test_probe_detects_a_partly_stored_memory():
    model = build_model(ModelConfig(n_layers=2, d_model=256), n_ctx=32, seed=1)
    _hand_built(model)
    W_E, W_U = model.W_E.detach(), model.W_U.T.detach()
    half = torch.arange(0, 65, 2)  # store only even tokens in W_OV²
    with torch.no_grad():
        attn_linear(model, 1, "o").weight.copy_((W_E[half].T @ W_U[half]).T)
    r = recall_ov2(model)
    assert 0.45 <= r <= 0.65  # the 33 stored tokens, plus rare lucky odd ones


def test_probes_never_build_the_gradient_graph():
    model = build_model(ModelConfig(n_layers=2, d_model=16, variant="full"), n_ctx=8)
    W = model.OV[1, 0]
    assert W.A.requires_grad  # the weights are trainable...
    scores = recall_scores(W, model.W_E, model.W_U.T)
    assert not scores.requires_grad and scores.grad_fn is None  # ...but the probe has no graph
    all_probes(model)
    assert all(p.grad is None for p in model.parameters())


def test_one_layer_model_probe():
    model = build_model(ModelConfig(n_layers=1, d_model=256), n_ctx=16, seed=0)
    W_E, W_U = model.W_E.detach(), model.W_U.T.detach()
    with torch.no_grad():
        attn_linear(model, 0, "v").weight.copy_(torch.eye(256))
        attn_linear(model, 0, "o").weight.copy_((W_E.T @ W_U).T)
    assert all_probes(model) == {"W_OV": 1.0}


# --- per-head probes of the multi-head (LayerNorm) model, and the W_F probe ---

MULTI = ModelConfig(n_layers=2, d_model=256, n_heads=2, variant="full", normalization="pre_ln")  # d_head 128


def _perturb_norms(model) -> None:
    """LayerNorm gains in [0.5, 1.5] and biases N(0, 0.1²), so the probes' LayerNorm reading matters."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for norm in native(model).modules():
            if isinstance(norm, torch.nn.LayerNorm):
                norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=gen))
                norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=gen))


def _ln(model, layer, x, name="ln1"):
    norm = layer_norm(model, layer, name)
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, 1e-5)


def _store(model, layer, head, kind, inputs, outputs) -> None:
    """Make head (layer, head)'s row-form OV or QK equal inputsᵀ outputs (= Σ_i u_iᵀ v_i), padding the
    rank-n factors to d_head: v (or q) rows hold the inputs u_i, o columns (or k rows) the outputs."""
    dh = model.cfg.d_head
    rows = slice(head * dh, head * dh + inputs.shape[0])
    with torch.no_grad():
        first, second = ("v", "o") if kind == "OV" else ("q", "k")
        attn_linear(model, layer, first).weight[head * dh : (head + 1) * dh] = 0
        attn_linear(model, layer, first).weight[rows] = inputs
        if kind == "OV":
            attn_linear(model, layer, second).weight[:, head * dh : (head + 1) * dh] = 0
            attn_linear(model, layer, second).weight[:, rows] = outputs.T
        else:
            attn_linear(model, layer, second).weight[head * dh : (head + 1) * dh] = 0
            attn_linear(model, layer, second).weight[rows] = outputs


def test_per_head_probes_find_hand_built_memories_through_layer_norm():
    """The induction head in (layer 1, head 0), the previous-token head in (layer 0, head 1), the other
    heads random: the per-head values are 1 there and near chance elsewhere, the best-head values 1."""
    model = build_model(MULTI, n_ctx=32, seed=0)
    _perturb_norms(model)
    W_E, W_U, P = model.W_E.detach(), model.W_U.T.detach(), model.W_pos.detach()
    final = layer_norm(model, None)
    readout = W_U * final.weight
    readout = readout - readout.mean(-1, keepdim=True)  # the final LN's linear part, on the unembedding
    # W_OV²: LN1(w_E(k)) -> readout(k)
    _store(model, 1, 0, "OV", _ln(model, 1, W_E), readout)
    # W_KQ¹: query LN0(p_{t+1}) -> key LN0(p_t)
    P0 = _ln(model, 0, P)
    _store(model, 0, 1, "QK", P0[1:], P0[:-1])
    # W_KQ²: query LN1(w_E(k)) -> key: the previous-token head's output, through LN1's linear part
    written = _ln(model, 0, W_E) @ model.OV[0, 1].AB.detach()
    keys = (written - written.mean(-1, keepdim=True)) * layer_norm(model, 1).weight
    _store(model, 1, 0, "QK", _ln(model, 1, W_E), keys)

    probes = head_probes(model)  # random triggers: the whole vocabulary
    assert list(probes)[:3] == ["W_OV2", "W_KQ2", "W_KQ1"]
    assert probes["W_OV2"] == probes["W_KQ2"] == probes["W_KQ1"] == 1.0
    assert probes["W_OV2/l1h0"] == probes["W_KQ2/l1h0"] == probes["W_KQ1/l0h1"] == 1.0
    for key in ("W_OV2/l1h1", "W_KQ2/l1h1", "W_KQ1/l0h0"):
        assert probes[key] < 0.15, (key, probes[key])  # chance: 1/65, 1/65, 1/31
    assert ov2_recalls(model).keys() == {(1, 0), (1, 1)} and kq1_recalls(model).keys() == {(0, 0), (0, 1)}
    assert recall_ov2(model) == recall_kq2(model) == recall_kq1(model) == 1.0
    # the layer readings (what `all_probes` reports for this model) find the memories too, and
    # name the heads: the previous-token head, then the induction head, by their attention
    assert all_probes(model) == {"W_OV2": 1.0, "W_KQ2": 1.0, "W_KQ1": 1.0}
    assert previous_token_weights(model).argmax() == 1 and previous_token_weights(model)[1] > 0.5
    assert induction_weights(model).argmax() == 0 and induction_weights(model)[0] > 0.5
    assert kq2_layer_recalls(model)[0] == 1.0 and kq2_layer_recalls(model)[1] < 0.15
    # the keys go through the previous-token head: wiping it breaks W_KQ² but not W_OV²
    with torch.no_grad():
        attn_linear(model, 0, "o").weight[:, 128:] = 0
    assert kq2_recalls(model)[1, 0] < 0.15 and ov2_recalls(model)[1, 0] == 1.0
    assert layer_probes(model)["W_KQ2"] < 0.15 and layer_probes(model)["W_KQ1"] == 1.0


def test_w_kq1_by_position_and_the_probe_report_of_a_multi_head_model():
    """A previous-token memory stored for the first 12 positions only: the by-position reading says
    where, the layer reading is its mean; `probe_report` (what `birth inspect` prints) gathers the
    readings a run logs, the per-head ones and the heads' weights."""
    model = build_model(MULTI, n_ctx=32, seed=0)
    _perturb_norms(model)
    P0 = _ln(model, 0, model.W_pos.detach())
    _store(model, 0, 1, "QK", 4 * P0[1:13], P0[:12])  # query t+1 -> key t for t < 12, in head 1
    stored = kq1_by_position(model)
    assert stored.shape == (31,) and stored.dtype == torch.bool
    assert stored[:12].all() and stored[12:].float().mean() < 0.5
    report = probe_report(model)
    assert report["reading"] == "layer" and report["probes"] == all_probes(model)
    assert report["probes"]["W_KQ1"] == pytest.approx(stored.float().mean().item())
    assert report["kq1_by_position"] == stored.tolist()
    assert report["head_probes"] == head_probes(model)
    assert report["previous_token_weights"] == previous_token_weights(model).tolist()
    assert report["induction_weights"] == induction_weights(model).tolist()
    assert len(report["previous_token_weights"]) == len(report["induction_weights"]) == 2
    assert max(range(2), key=report["previous_token_weights"].__getitem__) == 1  # the head that stores it
    simplified = build_model(ModelConfig(n_layers=2, d_model=32), n_ctx=8, seed=1)
    assert probe_report(simplified, TRIGGERS) == {
        "reading": "per_head",
        "probes": all_probes(simplified, TRIGGERS),
    }


def test_w_kq2_weighted_by_the_in_context_targets_and_read_after_the_first_mlp():
    """Random triggers: W_KQ² counts each token with its share of the in-context targets; the query
    is the token after the first layer's MLP (`effective_embeddings`); W_OV² adds the last MLP."""
    inputs = torch.tensor([[3, 5, 3, 5, 3], [2, 7, 2, 7, 2]])
    counter = torch.tensor([[1, 0, 2, 0, 3], [0, 0, 0, 0, 0]])
    shares = in_context_trigger_shares(inputs, counter, 8)
    assert shares[3] == 1.0 and shares.sum() == 1.0  # only token 3 is a repeated trigger
    assert torch.allclose(
        in_context_trigger_shares(inputs, torch.zeros_like(counter), 8),
        torch.full((8,), 1 / 8, dtype=torch.float64),
    )

    model = build_model(MULTI, n_ctx=32, seed=0)  # no MLP: the effective embedding is w_E
    _perturb_norms(model)
    W_E = model.W_E.detach()
    assert torch.equal(effective_embeddings(model), W_E)
    written = _ln(model, 0, W_E) @ model.OV[0, 1].AB.detach()  # W_KQ² on the previous-token head
    _store(
        model, 0, 1, "QK", _ln(model, 0, model.W_pos.detach())[1:], _ln(model, 0, model.W_pos.detach())[:-1]
    )
    keys = (written - written.mean(-1, keepdim=True)) * layer_norm(model, 1).weight
    stored = torch.arange(65) < 20  # the memory holds tokens 0..19 only
    _store(model, 1, 0, "QK", _ln(model, 1, W_E)[stored], keys[stored])
    hits = kq2_layer_hits(model)[0]
    assert hits[:20].all() and hits[20:].float().mean() < 0.2
    weights = torch.zeros(65, dtype=torch.float64)
    weights[:10], weights[30:40] = 0.08, 0.02  # 80% of the in-context targets on stored tokens
    assert kq2_layer_recalls(model, None, weights)[0] == pytest.approx(0.8 + 0.02 * hits[30:40].sum().item())
    assert kq2_layer_recall(model, None, weights) == max(kq2_layer_recalls(model, None, weights).values())
    assert kq2_layer_recall(model) == max(kq2_layer_recalls(model).values()) < 0.5  # unweighted
    assert all_probes(model, None, None, weights)["W_KQ2"] == kq2_layer_recall(model, None, weights)
    with pytest.raises(ValueError, match="random triggers"):
        kq2_layer_recalls(model, TRIGGERS, weights)

    mlp = build_model(dataclasses.replace(MULTI, mlp="relu"), n_ctx=32, seed=0)
    _perturb_norms(mlp)
    E = mlp.W_E.detach()
    first = torch.relu(layer_norm(mlp, 0, "ln2")(E) @ mlp_linear(mlp, 0, "in").weight.T)
    effective = E + first @ mlp_linear(mlp, 0, "out").weight.T  # w_E + MLP0(LN2_0(w_E)), no biases
    assert torch.allclose(effective_embeddings(mlp), effective, atol=1e-4)
    final = layer_norm(mlp, None)
    readout = mlp.W_U.T.detach() * final.weight
    readout = readout - readout.mean(-1, keepdim=True)
    inputs = (effective - effective.mean(-1, keepdim=True)) * layer_norm(mlp, 1).weight
    # the copy stored on the tokens after the first MLP (dual basis: inputs @ OV = readout exactly)
    _store(mlp, 1, 0, "OV", torch.linalg.pinv(inputs).T, 1e3 * readout)
    assert ov2_layer_recall(mlp) == 1.0
    with torch.no_grad():  # without the first MLP's output the memory is read on the raw w_E
        mlp_linear(mlp, 0, "out").weight.zero_()
    assert torch.equal(effective_embeddings(mlp), E) and ov2_layer_recall(mlp) < 0.5


def test_one_head_models_keep_the_probe_names():
    full = build_model(ModelConfig(n_layers=2, d_model=32, variant="full", normalization="pre_ln"), n_ctx=8)
    assert set(all_probes(full)) == set(head_probes(full)) == {"W_OV2", "W_KQ2", "W_KQ1"}
    one = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=4, variant="full"), n_ctx=8)
    assert set(all_probes(one)) == {"W_OV"}  # the layer reading: the heads' sum
    assert set(head_probes(one)) == {"W_OV", "W_OV/l0h0", "W_OV/l0h1", "W_OV/l0h2", "W_OV/l0h3"}
    rotary = build_model(ModelConfig(d_model=32, n_heads=2, variant="full", positions="rotary"), n_ctx=8)
    assert set(all_probes(rotary)) == {"W_OV2", "W_KQ2"}  # no p_t to probe
    assert "W_KQ1" not in head_probes(rotary) and "W_KQ2/l1h1" in head_probes(rotary)


def _bigram_table(n: int = 65) -> torch.Tensor:
    """A random π_b with zeros in it (the Shakespeare table has them): rows sum to one."""
    gen = torch.Generator().manual_seed(3)
    table = torch.rand(n, n, generator=gen, dtype=torch.float64) ** 4
    table[torch.rand(n, n, generator=gen) < 0.3] = 0.0
    table[:, 0] += 1e-3  # no empty row
    return table / table.sum(1, keepdim=True)


def _brute_force_kl(bigram: torch.Tensor, logits: torch.Tensor, tokens) -> float:
    total = 0.0
    for row, k in enumerate(tokens):
        log_q = torch.log_softmax(logits[row].double(), dim=0)
        p = bigram[k]
        total += sum(float(p[j] * (p[j].log() - log_q[j])) for j in range(len(p)) if p[j] > 0)
    return total / len(tokens)


def test_w_f_probe_on_hand_built_and_zero_feed_forward_layers():
    bigram = _bigram_table()
    model = build_model(dataclasses.replace(SIMPLIFIED_FFN, d_model=128), n_ctx=16, seed=0)
    others = [k for k in range(65) if k not in set(TRIGGERS.tolist())]
    W_E, W_U = model.W_E.detach(), model.W_U.detach()  # [N, d], [d, N]
    # W_F storing log π_b: logits_k = w_E(k) W_Fᵀ W_U = log π_b(·|k) (d >= N: exactly solvable)
    target = (bigram + 1e-12).log().float()
    w_f_t = torch.linalg.pinv(W_E) @ target @ torch.linalg.pinv(W_U)  # row form: x ↦ x @ w_f_t
    with torch.no_grad():
        mlp_linear(model, 1, "out").weight.copy_(w_f_t.T)
    torch.testing.assert_close(ff_logits(model, torch.tensor(others)), target[others], atol=2e-3, rtol=0)
    stored = ff_bigram_kl(model, bigram, TRIGGERS)
    assert stored < 1e-3
    assert stored == pytest.approx(
        _brute_force_kl(bigram, ff_logits(model, torch.tensor(others)), others), abs=1e-6
    )
    # a zero W_F predicts the uniform law: KL = mean over k of log N - H(π_b(·|k))
    with torch.no_grad():
        mlp_linear(model, 1, "out").weight.zero_()
    entropy = -(bigram * bigram.clamp_min(1e-300).log()).sum(1)
    expected = (math.log(65) - entropy[others]).mean().item()
    assert ff_bigram_kl(model, bigram, TRIGGERS) == pytest.approx(expected, rel=1e-9)
    assert ff_bigram_kl(model, bigram) == pytest.approx((math.log(65) - entropy).mean().item(), rel=1e-9)
    probes = all_probes(model, TRIGGERS, bigram)
    assert probes[FF_PROBE] == pytest.approx(expected, rel=1e-9)
    assert set(probes) == {"W_OV2", "W_KQ2", "W_KQ1", "W_F_kl"}
    assert FF_PROBE not in all_probes(model, TRIGGERS)  # no bigram table, no W_F probe


def test_w_f_probe_reads_the_relu_mlp_through_layer_norms():
    """A random ReLU W_F with biases in the pre-LN model: the probe is the brute-force KL of
    softmax(LN_f(W_out relu(W_in LN2(w_E(k)) + b_in) + b_out) W_U)."""
    bigram = _bigram_table()
    config = dataclasses.replace(MULTI, d_model=32, mlp="relu")
    model = build_model(config, n_ctx=8, seed=1)
    _perturb_norms(model)
    with torch.no_grad():
        for name in ("in", "out"):
            mlp_linear(model, 1, name).bias.normal_(generator=torch.Generator().manual_seed(2))
    fc_in, fc_out, final = mlp_linear(model, 1, "in"), mlp_linear(model, 1, "out"), layer_norm(model, None)
    others = [k for k in range(65) if k not in set(TRIGGERS.tolist())]
    with torch.no_grad():
        rows = []
        for k in others:
            hidden = fc_out(torch.relu(fc_in(_ln(model, 1, model.W_E[k], "ln2"))))
            rows.append(F.layer_norm(hidden, (32,), final.weight, final.bias, 1e-5) @ model.W_U)
        logits = torch.stack(rows)
    assert ff_bigram_kl(model, bigram, TRIGGERS) == pytest.approx(
        _brute_force_kl(bigram, logits, others), rel=1e-5
    )
    assert all_probes(model, TRIGGERS, bigram)[FF_PROBE] == pytest.approx(
        ff_bigram_kl(model, bigram, TRIGGERS)
    )
    first_only = build_model(dataclasses.replace(config, mlp_layers="first"), n_ctx=8)
    assert FF_PROBE not in all_probes(first_only, TRIGGERS, bigram)  # no feed-forward layer after the last
    with pytest.raises(ValueError, match="no feed-forward layer"):
        ff_bigram_kl(first_only, bigram)
    assert all(p.grad is None for p in model.parameters())  # no autograd graph


def test_simplified_model_probes_unchanged_by_the_layer_readings():
    """The simplified model keeps the paper's per-head reading: these values were computed by the
    probes before the full model's layer readings existed, and must not move."""
    model = build_model(ModelConfig(n_layers=2, d_model=64), n_ctx=32, seed=3)
    P, E = model.W_pos.detach(), model.W_E.detach()
    with torch.no_grad():  # partly formed W_KQ¹ and W_KQ² memories
        attn_linear(model, 0, "k").weight.add_(0.2 * (P[1:].T @ P[:-1]))
        attn_linear(model, 1, "k").weight.add_(0.3 * (E.T @ (E @ model.OV[0, 0].AB)))
    expected = {"W_OV2": 0.015384615398943424, "W_KQ2": 0.6000000238418579, "W_KQ1": 0.35483869910240173}
    assert all_probes(model, TRIGGERS) == head_probes(model, TRIGGERS) == expected
    assert all_probes(model)["W_KQ2"] == 0.7538461685180664  # the whole vocabulary
    one = build_model(ModelConfig(n_layers=1, d_model=32), n_ctx=16, seed=2)
    assert all_probes(one) == {"W_OV": 0.015384615398943424}
