"""The model builder, and its three forwards held equal: the TransformerLens bridge, the fast path and
the plain-torch reference architecture (`birth.models.reference`), values and gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from birth.models import fast as fast_module
from birth.models.transformer import (
    FULL_MODEL,
    NAMED_CONFIGS,
    SIMPLIFIED_FFN,
    ModelConfig,
    ReferenceTransformer,
    attn_linear,
    build_model,
    fast_cross_entropy,
    fast_logits,
    fast_logits_and_patterns,
    layer_norm,
    mlp_linear,
    native,
    reference_logits,
    sinusoidal_positions,
    supports_fast_path,
    trainable_parameters,
)
from probes.attention import forward_with_patterns


def _perturb_all(model, seed: int = 0) -> None:
    """Random non-zero values everywhere, biases included, so no term of the forward is trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("variant", ["simplified", "full"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_fast_logits_equal_transformer_lens_forward(variant, n_layers):
    model = build_model(ModelConfig(n_layers=n_layers, d_model=24, variant=variant), n_ctx=20, seed=3)
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
    model = build_model(ModelConfig(n_layers=2, d_model=16, variant="full"), n_ctx=12, seed=5)
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
    model = build_model(ModelConfig(n_layers=2, d_model=64), n_ctx=32, seed=0)
    trainable = {id(p) for p in trainable_parameters(model)}
    expected = {
        id(attn_linear(model, 0, "k").weight),
        id(attn_linear(model, 1, "k").weight),
        id(attn_linear(model, 1, "o").weight),
    }
    assert trainable == expected
    for layer in range(2):
        torch.testing.assert_close(attn_linear(model, layer, "q").weight, torch.eye(64))
        for name in "qkvo":
            assert torch.count_nonzero(attn_linear(model, layer, name).bias) == 0
    # N(0, 1/d) embeddings: std close to 1/sqrt(d)
    for w in (model.W_E, model.W_U, model.W_pos):
        assert abs(w.std().item() * math.sqrt(64) - 1) < 0.1


def test_full_variant_trains_everything_and_zero_init_option():
    full = build_model(ModelConfig(n_layers=2, d_model=16, variant="full"), n_ctx=8)
    assert all(p.requires_grad for p in full.parameters())
    zero = build_model(ModelConfig(n_layers=2, d_model=16, trainable_init="zero"), n_ctx=8)
    for p in trainable_parameters(zero):
        assert torch.count_nonzero(p) == 0


def test_same_seed_same_weights_different_seed_different_weights():
    a = build_model(ModelConfig(d_model=16), n_ctx=8, seed=7)
    b = build_model(ModelConfig(d_model=16), n_ctx=8, seed=7)
    c = build_model(ModelConfig(d_model=16), n_ctx=8, seed=8)
    for pa, pb in zip(native(a).state_dict().values(), native(b).state_dict().values()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.W_E, c.W_E)


def test_factored_matrices_follow_row_vector_orientation():
    model = build_model(ModelConfig(n_layers=2, d_model=16, variant="full"), n_ctx=8, seed=1)
    for layer in range(2):
        v, o = attn_linear(model, layer, "v"), attn_linear(model, layer, "o")
        q, k = attn_linear(model, layer, "q"), attn_linear(model, layer, "k")
        x = torch.randn(5, 16)
        # x @ OV == o(v(x)) without biases; x @ QK @ y^T == q(x) . k(y)
        torch.testing.assert_close(x @ model.OV[layer, 0].AB, x @ v.weight.T @ o.weight.T)
        y = torch.randn(5, 16)
        torch.testing.assert_close(x @ model.QK[layer, 0].AB @ y.T, (x @ q.weight.T) @ (y @ k.weight.T).T)


def test_attention_pattern_hook_matches_causal_softmax():
    model = build_model(ModelConfig(n_layers=2, d_model=16), n_ctx=10, seed=2)
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
    "kwargs, flag",
    [
        ({"n_layers": 3}, "--n-layers"),
        ({"variant": "tiny"}, "--variant"),
        ({"d_model": 0}, "--d-model"),
        ({"trainable_init": "ones"}, "--trainable-init"),
        # the architecture options and their invalid combinations
        ({"variant": "full", "n_heads": 3, "d_model": 64}, r"--n-heads must divide --d-model \(got 3, 64\)"),
        ({"n_heads": 4}, "--n-heads must be 1"),  # the simplified variant has one head
        ({"normalization": "pre_ln"}, "--normalization must be none"),  # nor LayerNorm
        ({"variant": "full", "n_heads": 2, "d_model": 30, "positions": "rotary"}, "--positions rotary"),
        ({"variant": "full", "n_layers": 0}, "--n-layers"),
        ({"mlp": "gelu"}, "--mlp"),
        ({"mlp": "relu", "mlp_width": 0}, "--mlp-width"),
        ({"mlp_layers": "middle"}, "--mlp-layers"),
        ({"embeddings": "learned"}, "--embeddings"),
        ({"positions": "alibi"}, "--positions"),
        ({"attn_scale": "sqrt_d"}, "--attn-scale"),
        ({"biases": 0}, "--biases"),
        ({"n_heads": 1.0}, "--n-heads"),
        ({"variant": "full", "head_width": 0}, "--head-width"),
        ({"variant": "full", "head_width": 2.0}, "--head-width"),
        ({"variant": "full", "head_width": 5, "positions": "rotary"}, "--positions rotary"),
        ({"d_model": 16, "head_width": 8}, "--head-width must be --d-model"),  # simplified: W_Q = I
    ],
)
def test_invalid_model_config_raises_naming_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_ctx": 1}, "n_ctx"),
        ({"n_ctx": 8, "vocab_size": 1}, "vocab_size"),
        ({"n_ctx": 8, "seed": -1}, "--seed"),
    ],
)
def test_build_model_checks_its_task_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(ModelConfig(d_model=8), **kwargs)


def test_fast_logits_rejects_too_long_sequences():
    model = build_model(ModelConfig(d_model=8), n_ctx=4)
    with pytest.raises(ValueError, match="n_ctx"):
        fast_logits(model, torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize("variant", ["simplified", "full"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_fast_logits_at_selected_positions_equal_full_logits(variant, n_layers):
    model = build_model(ModelConfig(n_layers=n_layers, d_model=24, variant=variant), n_ctx=20, seed=4)
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
    plain = build_model(ModelConfig(d_model=64), n_ctx=32, seed=0)
    unit = build_model(ModelConfig(d_model=64, unit_embeddings=True), n_ctx=32, seed=0)
    assert abs(unit.W_E.std().item() - 1) < 0.1 and abs(unit.W_pos.std().item() - 1) < 0.1
    torch.testing.assert_close(unit.W_E, plain.W_E * 8)  # same draws, times sqrt(d)
    torch.testing.assert_close(unit.W_U, plain.W_U)  # the unembedding keeps N(0, 1/d)


# --- the architecture options: every one built, run and checked against the reference forward ---

SMALL_FULL = dataclasses.replace(FULL_MODEL, d_model=32)  # 4 heads of width 8
ARCHITECTURES = {
    "full": SMALL_FULL,
    "full-biases-random-init": dataclasses.replace(SMALL_FULL, biases=True, unit_embeddings=False),
    "full-3-layers-linear-first": dataclasses.replace(
        SMALL_FULL, n_layers=3, mlp="linear", mlp_layers="first"
    ),
    "full-final-unscaled-tied-sinusoidal-no-ln": dataclasses.replace(
        SMALL_FULL,
        mlp_layers="final",
        attn_scale="none",
        embeddings="tied",
        positions="sinusoidal",
        normalization="none",
        unit_embeddings=False,  # unscaled scores of N(0, I) embeddings saturate the softmax
    ),
    "full-rotary-relu-width-2": dataclasses.replace(SMALL_FULL, positions="rotary", mlp_width=2),
    "full-1-layer-frozen-embeddings": dataclasses.replace(SMALL_FULL, n_layers=1, embeddings="frozen"),
    # attention of 3 heads x 5 (15 wide) in d = 32, and of 2 rotary heads x 24 (48 wide): W_Q, W_K, W_V
    # map d to n_heads x head_width and W_O back
    "full-3-heads-of-width-5": dataclasses.replace(SMALL_FULL, n_heads=3, head_width=5),
    "full-rotary-2-heads-of-width-24": dataclasses.replace(
        SMALL_FULL, n_heads=2, head_width=24, positions="rotary", n_layers=1
    ),
    "simplified-ffn": dataclasses.replace(SIMPLIFIED_FFN, d_model=32),
    "simplified-ffn-relu": dataclasses.replace(SIMPLIFIED_FFN, d_model=32, mlp="relu"),
    "simplified-first-ffn-1-layer": dataclasses.replace(
        SIMPLIFIED_FFN, n_layers=1, d_model=16, mlp_layers="first"
    ),
    "simplified-trained-rotary": ModelConfig(d_model=16, embeddings="trained", positions="rotary"),
    # the architectures the fast path runs (supports_fast_path), beside the two simplified-ffn ones above
    "simplified": ModelConfig(d_model=16),
    "simplified-1-layer-bias-free-unit-embeddings": ModelConfig(
        n_layers=1, d_model=16, biases=False, unit_embeddings=True
    ),
    "simplified-zero-init-sinusoidal-unscaled": ModelConfig(
        d_model=16, trainable_init="zero", positions="sinusoidal", attn_scale="none"
    ),
    "full-1-head-attention-only": ModelConfig(variant="full", d_model=16),
    "full-1-head-final-linear-ffn-tied-sinusoidal-unscaled": dataclasses.replace(
        SIMPLIFIED_FFN,
        d_model=24,
        variant="full",
        attn_scale="none",
        positions="sinusoidal",
        embeddings="tied",
    ),
}
FAST_ARCHITECTURES = [name for name, config in ARCHITECTURES.items() if supports_fast_path(config)]
TWO_LAYER_FAST = [name for name in FAST_ARCHITECTURES if ARCHITECTURES[name].n_layers == 2]
# the two ways the two-layer selected-query forward reads the first layer
# (`birth.models.fast._reads_first_layer_at_queries`), each forced by its FLOP allowance
READINGS = {"x2 everywhere": math.inf, "at the queries": 0.0}


@pytest.fixture(params=list(READINGS))
def reading(request, monkeypatch) -> str:
    monkeypatch.setattr(fast_module, "_EVERYWHERE_FLOP_ALLOWANCE", READINGS[request.param])
    return request.param


def _keep_identity_query(model, config) -> None:
    """The simplified model's W_Q back to its frozen identity (zero bias) after a perturbation: the
    fast path then skips the query matmul, the case training runs."""
    if config.variant != "simplified":
        return
    with torch.no_grad():
        for layer in range(config.n_layers):
            q = attn_linear(model, layer, "q")
            q.weight.copy_(torch.eye(config.d_model))
            if q.bias is not None:
                q.bias.zero_()


def _assert_gradients_close(got, expected) -> None:
    """float32 sums in another order: absolute tolerance relative to the largest gradient."""
    scale = max(float(e.abs().max()) for e in expected)
    for g, e in zip(got, expected):
        # an unused parameter (a key bias: q·b_K is the same for every key, softmax ignores it) has
        # no gradient through the fast path and a float-noise one through the others
        torch.testing.assert_close(torch.zeros_like(e) if g is None else g, e, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_computes_the_reference_forward_and_trains(name, one_thread):
    """The TransformerLens bridge equals the plain-torch reference on the same weights: logits and
    the gradient of every trained parameter."""
    config = ARCHITECTURES[name]
    model = build_model(config, n_ctx=12, seed=1)
    twin = build_model(config, n_ctx=12, seed=1)  # seeded: the same seed gives the same weights
    for (key, a), b in zip(native(model).state_dict().items(), native(twin).state_dict().values()):
        assert torch.equal(a, b), key
    _perturb_all(model, seed=3)  # LayerNorm gains/biases, skipped MLPs, identity W_in: all perturbed
    tokens = torch.randint(0, 65, (3, 12), generator=torch.Generator().manual_seed(0))
    targets = tokens.roll(-1, 1).flatten()
    params = trainable_parameters(model)
    reference = reference_logits(model, tokens)
    expected_grads = torch.autograd.grad(F.cross_entropy(reference.flatten(0, 1), targets), params)
    logits = model(tokens)
    assert logits.shape == reference.shape == (3, 12, 65)
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    F.cross_entropy(logits.flatten(0, 1), targets).backward()
    for pname, p in model.named_parameters():
        # every trained weight gets a gradient; frozen ones (biases of the bias-free model, the skipped
        # MLP, the identity W_in of a linear W_F, fixed sin-cos positions) none
        assert (p.grad is not None) == p.requires_grad, pname
        if p.requires_grad:
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    _assert_gradients_close([p.grad for p in params], expected_grads)


def _perturbed_fast_model(config, dtype=torch.float32):
    model = build_model(config, n_ctx=16, seed=2)
    _perturb_all(model, seed=6)
    _keep_identity_query(model, config)
    return model.to(dtype)


def _max_errors(got, exact) -> list[float]:
    return [
        float(((torch.zeros_like(e) if g is None else g).double() - e).abs().max())
        for g, e in zip(got, exact)
    ]


@pytest.mark.parametrize("name", FAST_ARCHITECTURES)
def test_fast_path_computes_the_reference_forward(name, reading, one_thread):
    """fast_logits equals the reference on the same weights, values and gradients, on every position
    and on selected ones (the training loss's): to float64 rounding in float64; in float32 within
    the tolerances below of the float32 reference, or at least as close to the float64 one as the
    float32 reference is (where unscaled scores saturate the softmax, float32 rounding in the
    reference itself exceeds those tolerances)."""
    config = ARCHITECTURES[name]
    exact_model, model = _perturbed_fast_model(config, torch.float64), _perturbed_fast_model(config)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 65, (7, 16), generator=gen)
    targets = torch.randint(0, 65, (7, 16), generator=gen)
    positions = torch.rand(7, 16, generator=gen) < torch.rand(7, 1, generator=gen)
    positions[1] = False  # a sequence with no selected position
    for select in (None, positions):
        picked = (targets if select is None else targets[select]).reshape(-1)
        results = {}
        for label, fast, m in (
            ("exact", False, exact_model),
            ("fast64", True, exact_model),
            ("reference32", False, model),
            ("fast32", True, model),
        ):
            if fast:
                logits = fast_logits(m, tokens, select)
            else:
                logits = reference_logits(m, tokens)
                logits = logits if select is None else logits[select]
            loss = F.cross_entropy(logits.reshape(-1, 65), picked)
            results[label] = (logits, torch.autograd.grad(loss, trainable_parameters(m), allow_unused=True))
        expected, exact_grads = results["exact"]
        scale = float(expected.detach().abs().max())
        got, grads = results["fast64"]
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * scale)
        assert max(_max_errors(grads, exact_grads)) <= 1e-9 * max(float(e.abs().max()) for e in exact_grads)
        got, grads = results["fast32"]
        torch.testing.assert_close(got, results["reference32"][0], rtol=1e-4, atol=2e-5 * scale)
        try:
            _assert_gradients_close(grads, results["reference32"][1])
        except AssertionError:
            fast_errors = _max_errors(grads, exact_grads)
            reference_errors = _max_errors(results["reference32"][1], exact_grads)
            assert all(f <= 2 * r for f, r in zip(fast_errors, reference_errors)), (
                fast_errors,
                reference_errors,
            )


@pytest.mark.parametrize("blocks", [2, 3])
@pytest.mark.parametrize("name", TWO_LAYER_FAST)
def test_fast_path_in_causal_blocks_computes_the_reference_forward(
    name, blocks, reading, monkeypatch, one_thread
):
    """The two-layer selected-query forward with the first layer's pattern in causal row blocks
    (`birth.models.fast._causal_blocks`: long sequences, the paper preset's; forced here at T = 16,
    with uneven blocks for 3, and the 7 sequences in groups of 2, `_by_groups`) equals the reference
    to float64 rounding, values and gradients."""
    monkeypatch.setattr(fast_module, "_BLOCK_ROWS", 16 // blocks)
    monkeypatch.setattr(fast_module, "_MAX_BLOCKS", blocks)
    monkeypatch.setattr(fast_module, "_MAX_GROUP_SIZE", 2)
    assert len(fast_module._causal_blocks(16)) == blocks
    assert fast_module._group_size(16) == 2
    model = _perturbed_fast_model(ARCHITECTURES[name], torch.float64)
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 65, (7, 16), generator=gen)
    targets = torch.randint(0, 65, (7, 16), generator=gen)
    positions = torch.rand(7, 16, generator=gen) < torch.rand(7, 1, generator=gen)
    positions[1] = False  # a sequence with no selected position
    positions[2] = True  # and one with all: queries in every block
    results = []
    for logits in (reference_logits(model, tokens)[positions], fast_logits(model, tokens, positions)):
        loss = F.cross_entropy(logits, targets[positions])
        results.append((logits, torch.autograd.grad(loss, trainable_parameters(model), allow_unused=True)))
    (expected, exact_grads), (got, grads) = results
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * float(expected.detach().abs().max()))
    assert max(_max_errors(grads, exact_grads)) <= 1e-9 * max(float(e.abs().max()) for e in exact_grads)


@pytest.mark.parametrize("name", FAST_ARCHITECTURES)
def test_fast_cross_entropy_is_the_loss_of_the_reference_logits(name, reading, monkeypatch, one_thread):
    """The training loss through the fast path (`fast_cross_entropy`: per group of sequences, the
    padded queries ignored, never gathered back into row order) equals the cross-entropy of the
    reference logits at the selected positions, value and gradients, to float64 rounding; with the
    7 sequences in groups of 2, a sequence with no selected position and one with all."""
    monkeypatch.setattr(fast_module, "_MAX_GROUP_SIZE", 2)
    model = _perturbed_fast_model(ARCHITECTURES[name], torch.float64)
    gen = torch.Generator().manual_seed(11)
    tokens = torch.randint(0, 65, (7, 16), generator=gen)
    targets = torch.randint(0, 65, (7, 16), generator=gen)
    positions = torch.rand(7, 16, generator=gen) < torch.rand(7, 1, generator=gen)
    positions[3], positions[5] = False, True
    params = trainable_parameters(model)
    results = []
    for loss in (
        F.cross_entropy(reference_logits(model, tokens)[positions], targets[positions]),
        fast_cross_entropy(model, tokens, positions, targets),
    ):
        results.append((loss, torch.autograd.grad(loss, params, allow_unused=True)))
    (expected, exact_grads), (got, grads) = results
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0.0)
    assert max(_max_errors(grads, exact_grads)) <= 1e-9 * max(float(e.abs().max()) for e in exact_grads)


@pytest.mark.parametrize("name", TWO_LAYER_FAST)
def test_fast_path_patterns_equal_the_hooked_forward(name, one_thread):
    """The evaluation's fast forward returns the logits and the attention patterns of the hooked
    TransformerLens forward the attention probes read."""
    model = _perturbed_fast_model(ARCHITECTURES[name])
    tokens = torch.randint(0, 65, (5, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, patterns = forward_with_patterns(model, tokens)
        got_logits, got_patterns = fast_logits_and_patterns(model, tokens)
    scale = float(logits.abs().max())
    torch.testing.assert_close(got_logits, logits, rtol=1e-4, atol=2e-5 * scale)
    assert len(got_patterns) == len(patterns) == 2
    for got, expected in zip(got_patterns, patterns):
        assert got.shape == expected.shape == (5, 16, 16)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_fast_path_architectures_cover_every_option_it_accepts():
    covered = [ARCHITECTURES[name] for name in FAST_ARCHITECTURES]
    assert {c.variant for c in covered} == {"simplified", "full"}
    assert {c.n_layers for c in covered} == {1, 2}
    assert {c.mlp for c in covered} == {"none", "linear"}
    assert {c.positions for c in covered} == {"random", "sinusoidal"}
    assert {c.attn_scale for c in covered} == {"sqrt_d_head", "none"}
    assert {c.embedding_mode for c in covered} == {"frozen", "trained", "tied"}
    assert {c.biases for c in covered} == {True, False}
    assert {c.unit_embeddings for c in covered} == {True, False}


def test_reference_runs_on_the_bridge_parameters_themselves():
    """from_bridge shares tensors (no copy): every trained weight of the bridge is a reference
    parameter, the reference has no other, and a step through the reference moves the bridge."""
    for config in (SMALL_FULL, ARCHITECTURES["simplified-ffn"], ARCHITECTURES["full-3-layers-linear-first"]):
        model = build_model(config, n_ctx=8, seed=0)
        reference = ReferenceTransformer.from_bridge(model)
        shared = {id(p) for p in reference.parameters()}
        assert shared <= {id(p) for p in model.parameters()}
        assert {id(p) for p in trainable_parameters(model)} <= shared
        assert not any(p.is_meta for p in reference.parameters())
    # FULL_MODEL trains every weight: the reference holds exactly the bridge's parameters
    model = build_model(SMALL_FULL, n_ctx=8, seed=0)
    reference = ReferenceTransformer.from_bridge(model)
    assert {id(p) for p in reference.parameters()} == {id(p) for p in model.parameters()}
    standalone = ReferenceTransformer(SMALL_FULL, n_ctx=8, vocab_size=65)
    assert sum(p.numel() for p in standalone.parameters()) == sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, 65, (2, 8), generator=torch.Generator().manual_seed(0))
    before = model(tokens).detach()
    F.cross_entropy(reference(tokens).flatten(0, 1), tokens.flatten()).backward()
    with torch.no_grad():
        for p in reference.parameters():
            p.sub_(0.1 * p.grad)
    assert not torch.allclose(model(tokens), before)


def test_a_layer_without_mlp_ignores_its_frozen_zero_mlp_weights():
    model = build_model(dataclasses.replace(SIMPLIFIED_FFN, d_model=16), n_ctx=8)
    tokens = torch.randint(0, 65, (2, 8), generator=torch.Generator().manual_seed(0))
    before = model(tokens)
    fc_in, fc_out = mlp_linear(model, 0, "in"), mlp_linear(model, 0, "out")
    assert torch.count_nonzero(fc_in.weight) == torch.count_nonzero(fc_out.weight) == 0
    assert not fc_in.weight.requires_grad and not fc_out.weight.requires_grad
    with torch.no_grad():
        fc_out.weight.normal_()
        fc_out.bias.normal_()
    torch.testing.assert_close(model(tokens), before)  # layer 0 has no feed-forward layer
    with torch.no_grad():
        mlp_linear(model, 1, "out").bias.add_(1.0)
    assert not torch.allclose(model(tokens), before)  # layer 1 has one: W_F


def test_full_model_preset_is_the_reference_architecture():
    assert (FULL_MODEL.n_layers, FULL_MODEL.n_heads, FULL_MODEL.d_model, FULL_MODEL.d_head) == (2, 4, 128, 32)
    assert (FULL_MODEL.mlp, FULL_MODEL.mlp_width, FULL_MODEL.mlp_layers) == ("relu", 4, "all")
    assert FULL_MODEL.normalization == "pre_ln" and FULL_MODEL.embedding_mode == "trained"
    assert not FULL_MODEL.biases and FULL_MODEL.variant == "full"
    assert NAMED_CONFIGS["full"] is FULL_MODEL and NAMED_CONFIGS["simplified-ffn"] is SIMPLIFIED_FFN
    d, T, N = 128, 16, 65
    model = build_model(FULL_MODEL, n_ctx=T)
    trainable = trainable_parameters(model)
    # embeddings, unembedding, positions; per layer q k v o, W_in W_out, two LayerNorms; final LayerNorm
    assert (
        sum(p.numel() for p in trainable) == 2 * N * d + T * d + 2 * (4 * d * d + 8 * d * d + 4 * d) + 2 * d
    )
    for layer in range(2):  # no biases: the reference's nn.Linear(bias=False)
        linears = [attn_linear(model, layer, n) for n in "qkvo"] + [
            mlp_linear(model, layer, n) for n in ("in", "out")
        ]
        assert all(lin.bias is None for lin in linears)
    assert all(p.requires_grad for p in model.parameters())  # every remaining weight trains
    assert isinstance(layer_norm(model, 0, "ln2"), torch.nn.LayerNorm)
    assert isinstance(layer_norm(model, None), torch.nn.LayerNorm)
    assert abs(model.W_E.std().item() - 1) < 0.1  # nn.Embedding's N(0, 1), as the reference
    assert model.run_with_cache(torch.zeros(1, T, dtype=torch.long))[1][
        "blocks.1.attn.hook_pattern"
    ].shape == (
        1,
        4,
        T,
        T,
    )


@pytest.mark.parametrize("mlp", ["linear", "relu"])
def test_simplified_ffn_trains_the_attention_memories_and_w_f(mlp):
    config = dataclasses.replace(SIMPLIFIED_FFN, d_model=16, mlp=mlp)
    model = build_model(config, n_ctx=8)
    fc_in, fc_out = mlp_linear(model, 1, "in"), mlp_linear(model, 1, "out")
    expected = {
        attn_linear(model, 0, "k").weight,
        attn_linear(model, 1, "k").weight,
        attn_linear(model, 1, "o").weight,
        fc_out.weight,
    }
    if mlp == "relu":
        expected.add(fc_in.weight)
    else:  # one d x d map W_F = fc_out behind a frozen identity
        torch.testing.assert_close(fc_in.weight, torch.eye(16))
    assert {id(p) for p in trainable_parameters(model)} == {id(p) for p in expected}
    zero = build_model(dataclasses.replace(config, trainable_init="zero"), n_ctx=8)
    assert torch.count_nonzero(mlp_linear(zero, 1, "out").weight) == 0
    assert torch.count_nonzero(mlp_linear(zero, 1, "in").weight) > 0  # a zero W_in would never move


@pytest.mark.parametrize("name", ["full", "full-rotary-relu-width-2", "simplified-ffn-relu"])
def test_every_architecture_is_seeded(name):
    config = ARCHITECTURES[name]
    a, b, c = (build_model(config, n_ctx=8, seed=s) for s in (5, 5, 6))
    for (key, pa), pb in zip(native(a).state_dict().items(), native(b).state_dict().values()):
        assert torch.equal(pa, pb), key
    assert not torch.equal(a.W_E, c.W_E)
    assert not torch.equal(attn_linear(a, 0, "k").weight, attn_linear(c, 0, "k").weight)
    assert not torch.equal(mlp_linear(a, 1, "out").weight, mlp_linear(c, 1, "out").weight)


def test_weights_are_the_documented_draws_in_order():
    """Re-derive every weight from the seeded generator: token embeddings, positions, unembedding,
    then per layer q, k, v, o (and the MLP's W_in, W_out), N(0, 1/fan_in)."""
    d, T, N = 16, 8, 65
    for config in (ModelConfig(d_model=d), dataclasses.replace(SMALL_FULL, d_model=d, unit_embeddings=False)):
        model = build_model(config, n_ctx=T, seed=11)
        gen = torch.Generator().manual_seed(11)

        def draw(*shape, fan_in=d, gen=gen):
            return torch.randn(shape, generator=gen) * (1.0 / math.sqrt(fan_in))

        torch.testing.assert_close(model.W_E, draw(N, d), rtol=0, atol=0)
        torch.testing.assert_close(model.W_pos, draw(T, d), rtol=0, atol=0)
        torch.testing.assert_close(model.W_U.T, draw(N, d), rtol=0, atol=0)
        for layer in range(config.n_layers):
            for name in "qkvo":
                expected = draw(d, d)
                if name == "q" and config.variant == "simplified":
                    expected = torch.eye(d)
                torch.testing.assert_close(attn_linear(model, layer, name).weight, expected, rtol=0, atol=0)
            if config.has_mlp(layer):
                torch.testing.assert_close(
                    mlp_linear(model, layer, "in").weight, draw(4 * d, d), rtol=0, atol=0
                )
                torch.testing.assert_close(
                    mlp_linear(model, layer, "out").weight, draw(d, 4 * d, fan_in=4 * d), rtol=0, atol=0
                )


def test_position_and_embedding_options():
    base = dataclasses.replace(SMALL_FULL, unit_embeddings=False)
    random_pos = build_model(base, n_ctx=10, seed=2)
    sinus = build_model(dataclasses.replace(base, positions="sinusoidal"), n_ctx=10, seed=2)
    rotary = build_model(dataclasses.replace(base, positions="rotary"), n_ctx=10, seed=2)
    tied = build_model(dataclasses.replace(base, embeddings="tied"), n_ctx=10, seed=2)
    # the sin-cos table of the reference code: sin(t ω_i), cos(t ω_i) at coordinates 2i, 2i+1
    t, i = 3, 5
    omega = 10000.0 ** (-2 * i / 32)
    table = sinusoidal_positions(10, 32)
    assert table[t, 2 * i] == pytest.approx(math.sin(t * omega), abs=1e-6)
    assert table[t, 2 * i + 1] == pytest.approx(math.cos(t * omega), abs=1e-6)
    torch.testing.assert_close(sinus.W_pos, table / math.sqrt(32))  # scaled like the N(0, I/d) draws
    assert not native(sinus).pos.weight.requires_grad  # a fixed table
    assert native(rotary).pos is None
    # the position option changes nothing else: same draws in the same order
    for other in (sinus, rotary):
        torch.testing.assert_close(other.W_E, random_pos.W_E, rtol=0, atol=0)
        torch.testing.assert_close(other.OV[1, 2].AB, random_pos.OV[1, 2].AB, rtol=0, atol=0)
    assert native(tied).head.weight is native(tied).tok_embed.weight  # one trained parameter
    assert native(tied).head.weight.requires_grad
    assert sum(p is native(tied).head.weight for p in trainable_parameters(tied)) == 1


def test_head_width_sets_the_attention_apart_from_d():
    # head_width = d / n_heads is the default: the same model, draw for draw
    default = build_model(SMALL_FULL, n_ctx=8, seed=0)
    explicit = build_model(dataclasses.replace(SMALL_FULL, head_width=8), n_ctx=8, seed=0)
    for (key, a), b in zip(native(default).state_dict().items(), native(explicit).state_dict().values()):
        assert torch.equal(a, b), key
    config = ARCHITECTURES["full-3-heads-of-width-5"]
    assert (config.d_head, config.attention_width) == (5, 15)
    model = build_model(config, n_ctx=8, seed=0)
    for name, shape in (("q", (15, 32)), ("k", (15, 32)), ("v", (15, 32)), ("o", (32, 15))):
        assert attn_linear(model, 0, name).weight.shape == shape, name
    assert tuple(model.blocks[0].attn.W_Q.shape) == (3, 32, 5)


def test_fast_path_support_and_its_error():
    assert supports_fast_path(ModelConfig()) and supports_fast_path(SIMPLIFIED_FFN)
    assert supports_fast_path(ModelConfig(variant="full", attn_scale="none", positions="sinusoidal"))
    assert not supports_fast_path(dataclasses.replace(SIMPLIFIED_FFN, mlp="relu"))
    assert not supports_fast_path(dataclasses.replace(SIMPLIFIED_FFN, mlp_layers="all"))
    assert not supports_fast_path(ModelConfig(positions="rotary"))
    assert not supports_fast_path(FULL_MODEL)
    assert not supports_fast_path(dataclasses.replace(FULL_MODEL, normalization="none", mlp="none"))  # heads
    assert not supports_fast_path(
        ModelConfig(variant="full", d_model=16, head_width=8)
    )  # one head, not d wide
    with pytest.raises(
        ValueError, match="fast_logits does not support a model with 4 heads.*model\\(tokens\\)"
    ):
        fast_logits(build_model(SMALL_FULL, n_ctx=8), torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="ReLU MLP"):
        fast_logits(
            build_model(ARCHITECTURES["simplified-ffn-relu"], n_ctx=8), torch.zeros(1, 8, dtype=torch.long)
        )


@pytest.mark.parametrize(
    "config",
    [
        dataclasses.replace(SIMPLIFIED_FFN, d_model=24),
        dataclasses.replace(SIMPLIFIED_FFN, d_model=24, n_layers=1, biases=False),
        dataclasses.replace(
            SIMPLIFIED_FFN,
            d_model=24,
            variant="full",
            attn_scale="none",
            positions="sinusoidal",
            embeddings="tied",
        ),
    ],
    ids=["2-layers", "1-layer-bias-free", "full-unscaled-sinusoidal-tied"],
)
def test_fast_path_with_a_linear_w_f_equals_transformer_lens(config):
    model = build_model(config, n_ctx=20, seed=4)
    _perturb_all(model, seed=5)
    if config.variant == "simplified":  # keep W_Q an exact frozen identity: exercises the skipped matmul
        with torch.no_grad():
            for layer in range(config.n_layers):
                attn_linear(model, layer, "q").weight.copy_(torch.eye(24))
                if config.biases:
                    attn_linear(model, layer, "q").bias.zero_()
    gen = torch.Generator().manual_seed(6)
    tokens = torch.randint(0, 65, (9, 20), generator=gen)
    targets = torch.randint(0, 65, (9, 20), generator=gen)
    positions = torch.rand(9, 20, generator=gen) < 0.4
    params = trainable_parameters(model)
    for select in (None, positions):
        expected = model(tokens) if select is None else model(tokens)[select]
        got = fast_logits(model, tokens, select)
        # float32 sums in another order: absolute tolerance relative to the largest logit
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-5 * float(expected.detach().abs().max()))
        picked = (targets if select is None else targets[select]).reshape(-1)
        expected_grads = torch.autograd.grad(F.cross_entropy(expected.reshape(-1, 65), picked), params)
        grads = torch.autograd.grad(F.cross_entropy(got.reshape(-1, 65), picked), params, allow_unused=True)
        scale = max(float(e.abs().max()) for e in expected_grads)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(
                torch.zeros_like(e) if g is None else g, e, rtol=1e-3, atol=1e-5 * scale
            )


def test_full_model_learns_bigrams_with_adamw_through_the_tl_forward(one_thread):
    """build_model + model(tokens) + AdamW(trainable_parameters) trains the full model: 60 steps on
    the triggered-bigram task (loss on all tokens) beat the unigram law, so it uses the current token."""
    from tasks.shakespeare import load_stats
    from tasks.triggered_bigram import TaskConfig, TriggeredBigram

    stats = load_stats()
    unigram_entropy = -(stats.unigram_probs * stats.unigram_probs.log()).sum().item()  # 3.31 nats
    task = TriggeredBigram(TaskConfig(seq_len=32), stats)
    model = build_model(dataclasses.replace(FULL_MODEL, d_model=32), n_ctx=32, seed=0)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=0.01, weight_decay=0.01, betas=(0.9, 0.99))
    held_out = task.sample(64, task.generator(123))

    def held_out_loss() -> float:
        with torch.no_grad():
            return F.cross_entropy(model(held_out.inputs).flatten(0, 1), held_out.targets.flatten()).item()

    before = held_out_loss()
    for step in range(60):
        batch = task.sample(16, task.generator(step))
        loss = F.cross_entropy(model(batch.inputs).flatten(0, 1), batch.targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert before > math.log(65) and after < unigram_entropy - 0.1, (before, after)


@pytest.mark.parametrize(
    "name", ["full", "full-rotary-relu-width-2", "simplified-ffn", "full-rotary-2-heads-of-width-24"]
)
def test_fused_attention_equals_transformer_lens_explicit_attention(name, one_thread):
    """Without hooks on the pattern the attention runs fused; a hook on hook_pattern (or a cache)
    switches to TransformerLens' explicit forward: same logits, same gradients, and the hook sees
    the causal softmax pattern of every head."""
    config = ARCHITECTURES[name]
    model = build_model(config, n_ctx=12, seed=2)
    _perturb_all(model, seed=4)
    tokens = torch.randint(0, 65, (3, 12), generator=torch.Generator().manual_seed(1))
    params = trainable_parameters(model)

    def run():
        logits = model(tokens)
        return logits, torch.autograd.grad(F.cross_entropy(logits.flatten(0, 1), tokens.flatten()), params)

    fused_logits, fused_grads = run()
    seen = []
    for layer in range(config.n_layers):
        model.blocks[layer].attn.hook_pattern.add_hook(lambda pattern, hook: seen.append(pattern.detach()))
    explicit_logits, explicit_grads = run()
    model.reset_hooks()
    assert len(seen) == config.n_layers and seen[0].shape == (3, config.n_heads, 12, 12)
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(3, config.n_heads, 12))
    assert torch.all(seen[0].triu(diagonal=1) == 0)
    torch.testing.assert_close(fused_logits, explicit_logits, rtol=1e-4, atol=1e-4)
    scale = max(float(g.abs().max()) for g in explicit_grads)
    for g_fused, g_explicit in zip(fused_grads, explicit_grads):
        torch.testing.assert_close(g_fused, g_explicit, rtol=1e-3, atol=1e-5 * scale)
    _, cache = model.run_with_cache(tokens)  # a cache also takes the explicit forward
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"], seen[0])
