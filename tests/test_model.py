"""The TransformerLens model builder and the fast forward path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from birth.model import (
    ModelConfig,
    attn_linear,
    build_model,
    fast_logits,
    native,
    trainable_parameters,
)


def _perturb_all(model, seed: int = 0) -> None:
    """Random non-zero values everywhere, biases included, so no term of the forward is trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("variant", ["simplified", "full"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_fast_logits_equal_transformer_lens_forward(variant, n_layers):
    model = build_model(ModelConfig(n_layers=n_layers, d_model=24, n_ctx=20, variant=variant, seed=3))
    _perturb_all(model)
    if variant == "simplified":  # keep W_Q an exact frozen identity: exercises the skipped matmul
        with torch.no_grad():
            for layer in range(n_layers):
                attn_linear(model, layer, "q").weight.copy_(torch.eye(24))
                attn_linear(model, layer, "q").bias.zero_()
    tokens = torch.randint(0, 65, (4, 20), generator=torch.Generator().manual_seed(1))
    reference = model(tokens)
    fast = fast_logits(model, tokens)
    assert reference.shape == fast.shape == (4, 20, 65)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    # shorter sequences than n_ctx use the first positions only
    torch.testing.assert_close(fast_logits(model, tokens[:, :7]), model(tokens[:, :7]), rtol=1e-4, atol=1e-4)


def test_fast_path_gradients_equal_transformer_lens_gradients():
    model = build_model(ModelConfig(n_layers=2, d_model=16, n_ctx=12, variant="full", seed=5))
    _perturb_all(model, seed=2)
    tokens = torch.randint(0, 65, (3, 12), generator=torch.Generator().manual_seed(4))
    targets = torch.randint(0, 65, (3, 12), generator=torch.Generator().manual_seed(5))
    grads = []
    for forward in (lambda t: model(t), lambda t: fast_logits(model, t)):
        model.zero_grad()
        F.cross_entropy(forward(tokens).flatten(0, 1), targets.flatten()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g_ref, g_fast in zip(*grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-6)


def test_simplified_variant_freezes_all_but_wk1_wk2_wo2():
    cfg = ModelConfig(n_layers=2, d_model=64, n_ctx=32, seed=0)
    model = build_model(cfg)
    trainable = {id(p) for p in trainable_parameters(model)}
    expected = {id(attn_linear(model, 0, "k").weight), id(attn_linear(model, 1, "k").weight),
                id(attn_linear(model, 1, "o").weight)}
    assert trainable == expected
    for layer in range(2):
        torch.testing.assert_close(attn_linear(model, layer, "q").weight, torch.eye(64))
        for name in "qkvo":
            assert torch.count_nonzero(attn_linear(model, layer, name).bias) == 0
    # N(0, 1/d) embeddings: std close to 1/sqrt(d)
    for w in (model.W_E, model.W_U, model.W_pos):
        assert abs(w.std().item() * math.sqrt(64) - 1) < 0.1


def test_full_variant_trains_everything_and_zero_init_option():
    full = build_model(ModelConfig(n_layers=2, d_model=16, n_ctx=8, variant="full"))
    assert all(p.requires_grad for p in full.parameters())
    zero = build_model(ModelConfig(n_layers=2, d_model=16, n_ctx=8, trainable_init="zero"))
    for p in trainable_parameters(zero):
        assert torch.count_nonzero(p) == 0


def test_same_seed_same_weights_different_seed_different_weights():
    a = build_model(ModelConfig(d_model=16, n_ctx=8, seed=7))
    b = build_model(ModelConfig(d_model=16, n_ctx=8, seed=7))
    c = build_model(ModelConfig(d_model=16, n_ctx=8, seed=8))
    for pa, pb in zip(native(a).state_dict().values(), native(b).state_dict().values()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.W_E, c.W_E)


def test_factored_matrices_follow_row_vector_orientation():
    model = build_model(ModelConfig(n_layers=2, d_model=16, n_ctx=8, variant="full", seed=1))
    for layer in range(2):
        v, o = attn_linear(model, layer, "v"), attn_linear(model, layer, "o")
        q, k = attn_linear(model, layer, "q"), attn_linear(model, layer, "k")
        x = torch.randn(5, 16)
        # x @ OV == o(v(x)) without biases; x @ QK @ y^T == q(x) . k(y)
        torch.testing.assert_close(x @ model.OV[layer, 0].AB, x @ v.weight.T @ o.weight.T)
        y = torch.randn(5, 16)
        torch.testing.assert_close(x @ model.QK[layer, 0].AB @ y.T, (x @ q.weight.T) @ (y @ k.weight.T).T)


def test_attention_pattern_hook_matches_causal_softmax():
    model = build_model(ModelConfig(n_layers=2, d_model=16, n_ctx=10, seed=2))
    tokens = torch.randint(0, 65, (2, 10))
    _, cache = model.run_with_cache(tokens)
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, query, key]
    assert pattern.shape == (2, 1, 10, 10)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 1, 10))
    assert torch.all(pattern[0, 0].triu(diagonal=1) == 0)
    x = model.W_E[tokens] + model.W_pos[:10]
    scores = (x @ model.QK[0, 0].AB @ x.transpose(1, 2)) / 4.0  # sqrt(d) = 4
    scores = scores.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(pattern[:, 0], scores.softmax(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"n_layers": 3}, "n_layers"), ({"variant": "tiny"}, "variant"), ({"d_model": 0}, "d_model"),
     ({"trainable_init": "ones"}, "trainable_init")],
)
def test_invalid_model_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        build_model(ModelConfig(**kwargs))


def test_fast_logits_rejects_too_long_sequences():
    model = build_model(ModelConfig(d_model=8, n_ctx=4))
    with pytest.raises(ValueError, match="n_ctx"):
        fast_logits(model, torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize("variant", ["simplified", "full"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_fast_logits_at_selected_positions_equal_full_logits(variant, n_layers):
    model = build_model(ModelConfig(n_layers=n_layers, d_model=24, n_ctx=20, variant=variant, seed=4))
    _perturb_all(model, seed=9)
    gen = torch.Generator().manual_seed(2)
    # 29 sequences with different numbers of selected positions: the last layer groups them by
    # count (several sequences per group) and must return them in row-major (b, t) order
    tokens = torch.randint(0, 65, (29, 20), generator=gen)
    positions = torch.rand(29, 20, generator=gen) < torch.rand(29, 1, generator=gen)
    positions[2] = False  # a sequence with no selected position
    positions[3] = True  # and one with all
    weights = torch.randn(int(positions.sum()), 65, generator=gen)
    expected = model(tokens)[positions]
    expected_grads = torch.autograd.grad((expected * weights).sum(), trainable_parameters(model))
    got = fast_logits(model, tokens, positions)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad((got * weights).sum(), trainable_parameters(model), allow_unused=True)
    # float32 sums over 29 x 20 positions: absolute tolerance relative to the largest gradient
    scale = max(float(e.abs().max()) for e in expected_grads)
    for g, e in zip(grads, expected_grads):
        # an unused parameter (a key bias: q·b_K is the same for every key, softmax ignores it) has
        # no gradient here and a float-noise one (~1e-5) through TransformerLens
        torch.testing.assert_close(torch.zeros_like(e) if g is None else g, e, rtol=1e-3, atol=1e-5 * scale)


def test_unit_embeddings_have_the_reference_scale():
    plain = build_model(ModelConfig(d_model=64, n_ctx=32, seed=0))
    unit = build_model(ModelConfig(d_model=64, n_ctx=32, seed=0, unit_embeddings=True))
    assert abs(unit.W_E.std().item() - 1) < 0.1 and abs(unit.W_pos.std().item() - 1) < 0.1
    torch.testing.assert_close(unit.W_E, plain.W_E * 8)  # same draws, times sqrt(d)
    torch.testing.assert_close(unit.W_U, plain.W_U)  # the unembedding keeps N(0, 1/d)
