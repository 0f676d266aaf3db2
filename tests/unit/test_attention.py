"""Attention scores on hand-built patterns with known answers; heatmap and offline HTML files."""

from __future__ import annotations

import re

import pytest
import torch

from birth.models.transformer import ModelConfig, attn_linear, build_model
from probes.attention import (
    attended_token_agreement,
    attention_patterns,
    prefix_matching_score,
    previous_occurrence,
    previous_token_score,
    repeated_random_tokens,
    repeated_sequence_scores,
    save_attention_heatmaps,
    save_attention_html,
    target_attention,
    trigger_induction_score,
    trigger_induction_targets,
    triggered_bigram_scores,
)
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import Batch, TaskConfig, TriggeredBigram, occurrence_counter


def one_hot_rows(targets: list[int]) -> torch.Tensor:
    """[1, T, T] pattern whose query t puts all its attention on key targets[t]."""
    T = len(targets)
    pattern = torch.zeros(1, T, T)
    pattern[0, torch.arange(T), torch.tensor(targets)] = 1.0
    return pattern


def uniform_causal(batch: int, T: int) -> torch.Tensor:
    return torch.ones(batch, T, T).tril() / torch.arange(1, T + 1).view(1, T, 1)


# --- previous-token score -----------------------------------------------------------------------


def test_previous_token_score_of_exact_previous_token_head():
    pattern = one_hot_rows([0] + list(range(7)))  # query 0 can only attend to itself
    score = previous_token_score(pattern.expand(3, 8, 8))
    assert (score.mass, score.argmax, score.n_queries) == (1.0, 1.0, 3 * 7)


def test_previous_token_score_mass_and_argmax_differ():
    T = 6
    pattern = torch.zeros(1, T, T)
    pattern[0, 0, 0] = 1.0
    for t in range(1, T):
        # queries 1, 3, 5: 0.7 on t-1 and 0.3 on t; queries 2, 4: 0.4 on t-1 and 0.6 on t
        prev = 0.7 if t % 2 else 0.4
        pattern[0, t, t - 1], pattern[0, t, t] = prev, 1 - prev
    score = previous_token_score(pattern)
    assert score.mass == pytest.approx((3 * 0.7 + 2 * 0.4) / 5)
    assert score.argmax == pytest.approx(3 / 5)


def test_uniform_attention_gives_the_chance_level_mass():
    T = 10
    score = previous_token_score(uniform_causal(2, T))
    assert score.mass == pytest.approx(sum(1 / (t + 1) for t in range(1, T)) / (T - 1))


def test_pattern_shape_is_checked():
    with pytest.raises(ValueError, match="batch, query, key"):
        previous_token_score(torch.ones(2, 1, 4, 4))


# --- induction on triggered-bigram sequences ---------------------------------------------------


def test_previous_occurrence():
    tokens = torch.tensor([[5, 1, 5, 5, 2, 1, 7]])
    assert previous_occurrence(tokens).tolist() == [[-1, -1, 0, 2, -1, 1, -1]]


def test_trigger_induction_score_on_hand_built_pattern():
    # trigger 5 at positions 0, 4, 7 with outputs 1, 3, 4; token 2 repeats but is no trigger
    inputs = torch.tensor([[5, 1, 2, 2, 5, 3, 9, 5, 4]])
    counter = occurrence_counter(inputs, torch.tensor([[5]]))
    assert counter.tolist() == [[1, 0, 0, 0, 2, 0, 0, 3, 0]]
    T = inputs.shape[1]
    pattern = uniform_causal(1, T)
    # query 4 (2nd trigger): all on 1 (after the trigger at 0); query 7: 0.3 on 5, 0.7 on 1
    pattern[0, 4] = 0.0
    pattern[0, 4, 1] = 1.0
    pattern[0, 7] = 0.0
    pattern[0, 7, 5], pattern[0, 7, 1] = 0.3, 0.7
    # query 3 repeats token 2 with all attention on 3: it is no trigger and must not count
    pattern[0, 3] = 0.0
    pattern[0, 3, 3] = 1.0
    score = trigger_induction_score(pattern, inputs, counter)
    assert score.n_queries == 2
    assert score.mass == pytest.approx((1.0 + 0.3) / 2)
    assert score.argmax == pytest.approx(0.5)


def test_no_repeated_trigger_gives_nan_not_an_error():
    inputs = torch.tensor([[5, 1, 2, 3]])
    counter = occurrence_counter(inputs, torch.tensor([[5]]))
    score = trigger_induction_score(uniform_causal(1, 4), inputs, counter)
    assert score.n_queries == 0 and score.mass != score.mass  # nan


def test_attended_token_agreement():
    inputs = torch.tensor([[4, 8, 6, 9]])
    pattern = one_hot_rows([0, 0, 1, 2])  # attended tokens: 4, 4, 8, 6
    predictions = torch.tensor([[0, 4, 8, 1]])
    valid = torch.tensor([[False, True, True, True]])
    assert attended_token_agreement(pattern, inputs, predictions, valid) == pytest.approx(2 / 3)


# --- the standard induction score on repeated random tokens --------------------------------------


def test_prefix_matching_score_of_ideal_induction_head():
    n = 5
    # second-half query t attends t - n + 1; the first half attends to itself
    targets = list(range(n)) + [t - n + 1 for t in range(n, 2 * n)]
    score = prefix_matching_score(one_hot_rows(targets), n)
    assert (score.mass, score.argmax, score.n_queries) == (1.0, 1.0, n)


def test_duplicate_token_head_is_not_an_induction_head():
    n = 5
    # attending to the same token's first copy (t - n) is off by one from induction (t - n + 1)
    targets = list(range(n)) + [t - n for t in range(n, 2 * n)]
    score = prefix_matching_score(one_hot_rows(targets), n)
    assert score.mass == 0.0 and score.argmax == 0.0


def test_prefix_matching_matches_the_transformerlens_diagonal():
    n = 6
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 2 * n, 2 * n, generator=gen)
    pattern = logits.masked_fill(torch.ones(2 * n, 2 * n).triu(1).bool(), float("-inf")).softmax(-1)
    # ARENA: mean of the stripe at offset -(n - 1); without BOS we keep its second-half queries
    stripe = pattern.diagonal(-(n - 1), dim1=-2, dim2=-1)[:, 1:]
    assert prefix_matching_score(pattern, n).mass == pytest.approx(stripe.mean().item(), rel=1e-6)


def test_repeated_random_tokens_repeat():
    tokens = repeated_random_tokens(3, 7, vocab_size=65, seed=1)
    assert tokens.shape == (3, 14)
    assert torch.equal(tokens[:, :7], tokens[:, 7:])
    assert not torch.equal(tokens[0], tokens[1])


def test_target_attention_checks_shapes():
    with pytest.raises(ValueError, match="batch, query"):
        target_attention(
            uniform_causal(1, 4), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool)
        )


# --- on models ----------------------------------------------------------------------------------


def test_hand_built_previous_token_memory_gives_a_previous_token_head():
    """W_KQ¹ = c Σ_t p_{t+1} p_tᵀ makes layer 1 attend to the previous position (paper, sec. 5)."""
    model = build_model(ModelConfig(n_layers=2, d_model=64), n_ctx=16, seed=0)
    batch = TriggeredBigram(TaskConfig(seq_len=16)).sample(8, 0)
    before = triggered_bigram_scores(model, batch)["layer1"]["previous_token"]
    P = model.W_pos.detach()
    with torch.no_grad():  # with W_Q = I the row-form QK of layer 1 is its k.weight
        attn_linear(model, 0, "k").weight.copy_(100 * (P[1:].T @ P[:-1]))
    after = triggered_bigram_scores(model, batch)["layer1"]["previous_token"]
    assert before["argmax"] < 0.5
    assert after["argmax"] > 0.9 and after["mass"] > 0.7


def test_scores_of_a_model_are_probabilities():
    model = build_model(ModelConfig(n_layers=2, d_model=16), n_ctx=16, seed=0)
    batch = TriggeredBigram(TaskConfig(seq_len=16)).sample(8, 0)
    scores = triggered_bigram_scores(model, batch)
    repeated = repeated_sequence_scores(model, half_len=8, batch_size=4)
    for part in (scores, repeated):
        for layer in ("layer1", "layer2"):
            for name in ("previous_token", "induction"):
                assert 0.0 <= part[layer][name]["mass"] <= 1.0
    assert repeated["layer2"]["induction"]["n_queries"] == 4 * 8


# --- files --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_batch() -> Batch:
    return TriggeredBigram(TaskConfig(seq_len=16)).sample(4, 0)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_heatmaps_one_png_per_layer(tmp_path, tiny_batch, n_layers):
    model = build_model(ModelConfig(n_layers=n_layers, d_model=16), n_ctx=16, seed=0)
    paths = save_attention_heatmaps(model, load_stats(), tiny_batch, tmp_path / "maps", step=7)
    assert [p.name for p in paths] == [f"attention_layer{i}_step000007.png" for i in range(1, n_layers + 1)]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_rejects_a_bad_index(tmp_path, tiny_batch):
    model = build_model(ModelConfig(n_layers=2, d_model=16), n_ctx=16, seed=0)
    with pytest.raises(ValueError, match="out of range"):
        save_attention_heatmaps(model, load_stats(), tiny_batch, tmp_path / "maps", index=4)
    assert not (tmp_path / "maps").exists()


def test_html_is_self_contained(tmp_path, tiny_batch):
    model = build_model(ModelConfig(n_layers=2, d_model=16), n_ctx=16, seed=0)
    path = save_attention_html(model, load_stats(), tiny_batch, tmp_path / "attention.html")
    page = path.read_text(encoding="utf-8")
    # no script loaded from the network: every <script> is inline
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.IGNORECASE)
    assert "unpkg.com" not in page and "cdn.jsdelivr" not in page
    assert "var CircuitsVis=" in page  # the bundle itself is inlined
    assert "CircuitsVis.AttentionHeads" in page and '"layer 2"' in page
    # the inline bundle must not be cut short by a literal closing tag inside it
    assert page.count("</script>") == 1


def test_induction_over_all_earlier_occurrences_counts_split_attention():
    from probes.attention import after_earlier_occurrences, target_set_attention

    # a b a c a : query 4 ('a') may attend to keys 1 and 3 (after the 'a's at 0 and 2)
    tokens = torch.tensor([[0, 1, 0, 2, 0]])
    keys = after_earlier_occurrences(tokens)
    assert keys[0, 4].tolist() == [False, True, False, True, False]
    assert keys[0, 2].tolist() == [False, True, False, False, False]
    assert not keys[0, 0].any() and not keys[0, 1].any()
    pattern = torch.zeros(1, 5, 5)
    pattern[0, :, 0] = 1.0
    pattern[0, 4] = torch.tensor([0.1, 0.45, 0.0, 0.45, 0.0])  # split over both earlier outputs
    valid = torch.tensor([[False, False, False, False, True]])
    score = target_set_attention(pattern, keys, valid)
    assert score.mass == pytest.approx(0.9) and score.argmax == 1.0 and score.n_queries == 1
    pattern[0, 4] = torch.tensor([0.6, 0.2, 0.0, 0.2, 0.0])
    score = target_set_attention(pattern, keys, valid)
    assert score.mass == pytest.approx(0.4) and score.argmax == 0.0


# --- the reference's attention probes during training (circuit_probes) -------------------------


def reference_probes(pattern1, pattern2, x, outs, pred) -> dict[str, float]:
    """The reference code's definitions (ihead_basic_main.py), written out as loops."""
    B, T = x.shape
    amax1, amax2 = pattern1.argmax(-1), pattern2.argmax(-1)
    first = [(b, t) for b in range(B) for t in range(T - 1) if outs[b, t] >= 1]
    second = [(b, t) for b in range(B) for t in range(T) if outs[b, t] >= 2]
    score = sum(int(amax1[b, t + 1] == t) for b, t in first) / len(first)
    score2 = sum(int(amax2[b, t] >= 1 and x[b, amax2[b, t] - 1] == x[b, t]) for b, t in second) / len(second)
    attended = sum(int(x[b, amax2[b, t]] == pred[b, t]) for b, t in second) / len(second)
    return {"score_acc": score, "score2_acc": score2, "pred_attended_acc": attended}


def random_patterns(B: int, T: int, seed: int, sharp: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = sharp * torch.randn(B, T, T, generator=gen)
    return logits.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)


def test_circuit_probes_equal_the_reference_definitions_and_the_scores():
    from probes.attention import (
        after_earlier_occurrences,
        circuit_probes,
        target_set_attention,
        trigger_previous_token_targets,
    )

    batch = TriggeredBigram(TaskConfig(seq_len=24, trigger_mode="random")).sample(16, 3)
    x, outs = batch.inputs, batch.counter
    p1, p2 = random_patterns(16, 24, 0), random_patterns(16, 24, 1)
    pred = torch.randint(0, 65, x.shape, generator=torch.Generator().manual_seed(2))
    # make half of layer 2's argmaxes land after an earlier occurrence, so the score is not ~0
    targets, valid = trigger_induction_targets(x, outs)
    rows = torch.nonzero(valid)[::2]
    for b, t in rows.tolist():
        p2[b, t] = 0.0
        p2[b, t, targets[b, t]] = 1.0
    got = circuit_probes(p1, p2, x, outs, pred)
    want = reference_probes(p1, p2, x, outs, pred)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    assert want["score2_acc"] >= 0.5
    # masses: the attention scores of this module on the same queries
    prev = target_attention(p1, *trigger_previous_token_targets(outs))
    induction = target_set_attention(p2, after_earlier_occurrences(x), outs >= 2)
    assert got["prev_mass"] == pytest.approx(prev.mass, abs=1e-6)
    assert got["score_acc"] == pytest.approx(prev.argmax, abs=1e-6)
    assert got["induction_mass"] == pytest.approx(induction.mass, abs=1e-6)
    assert got["pred_attended_acc"] == pytest.approx(
        attended_token_agreement(p2, x, pred, outs >= 2), abs=1e-6
    )


def test_circuit_probes_of_an_ideal_circuit_and_of_latent_positions():
    from probes.attention import circuit_probes

    # trigger 5 -> output 1; 9 and 3 are ordinary; latents (counter -1) are never scored
    x = torch.tensor([[5, 9, 5, 1, 3, 5, 1]])
    outs = torch.tensor([[-1, 0, 1, 0, 0, 2, 0]])
    T = x.shape[1]
    p1 = one_hot_rows([0] + list(range(T - 1)))  # previous-token head
    p2 = one_hot_rows([0, 1, 2, 3, 4, 3, 6])  # query 5 (2nd trigger) attends to 3 (after the 1st)
    pred = torch.tensor([[0, 0, 0, 0, 0, 1, 0]])
    got = circuit_probes(p1, p2, x, outs, pred)
    assert got["score_acc"] == 1.0 and got["prev_mass"] == 1.0  # query 3 -> key 2 only
    assert got["score2_acc"] == 1.0 and got["induction_mass"] == 1.0 and got["pred_attended_acc"] == 1.0
    p2 = one_hot_rows([0, 1, 2, 3, 4, 1, 6])  # query 5 on key 1, after the latent 5 at 0: counts too
    assert circuit_probes(p1, p2, x, outs, pred)["score2_acc"] == 1.0
    p2 = one_hot_rows([0, 1, 2, 3, 4, 0, 6])  # key 0 has no token before it
    got = circuit_probes(p1, p2, x, outs, pred)
    assert got["score2_acc"] == 0.0 and got["pred_attended_acc"] == 0.0
    none = circuit_probes(p1, p2, x, torch.zeros_like(outs), pred)
    assert all(v != v for v in none.values())  # nan without triggers


def test_forward_with_patterns_equals_the_cache_and_the_logits():
    from probes.attention import forward_with_patterns

    model = build_model(ModelConfig(n_layers=2, d_model=16), n_ctx=16, seed=0)
    with torch.no_grad():  # a sharp layer-1 pattern, not the near-uniform one of the init
        attn_linear(model, 0, "k").weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    tokens = TriggeredBigram(TaskConfig(seq_len=16)).sample(4, 0).inputs
    logits, patterns = forward_with_patterns(model, tokens)
    ref_logits, ref_patterns = attention_patterns(model, tokens)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    for got, want in zip(patterns, ref_patterns):
        assert got.shape == (4, 16, 16) and torch.allclose(got, want, atol=1e-6)
