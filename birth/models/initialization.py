"""The seeded weights of a built model and which of them train.

`initialize` re-draws every weight from a generator seeded by `seed`:

    token embeddings w_E(k), unembeddings w_U(k), positional embeddings p_t  ~ N(0, I/d)
        (`unit_embeddings`: w_E, p_t ~ N(0, I), the scale of the reference code)
    W_Q = identity in every layer (simplified) or N(0, 1/d) (full)
    W_K, W_V, W_O                                                            ~ N(0, 1/d) entries
    MLP: W_in ~ N(0, 1/d), W_out ~ N(0, 1/(width·d)); a linear MLP is one d x d map W_F ~ N(0, 1/d)
    all biases = 0 (`biases=False`: no bias parameters), LayerNorm gains = 1

With N(0, 1/fan_in) entries a matrix roughly preserves norms, so W_OV¹ w_E(k) has norm ≈ 1 like
the embeddings, and attention scores x_tᵀ W_KQ x_s / √d_head start near zero (uniform attention).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from birth.models.config import ModelConfig
from birth.models.weights import attn_linear, layer_norm, mlp_linear, native, unwrap


def sinusoidal_positions(n_ctx: int, d: int) -> torch.Tensor:
    """The sin-cos table [n_ctx, d] of the reference code: sin at even and cos at odd coordinates,
    frequencies 10000^(-2i/d); entries in [-1, 1]."""
    position = torch.arange(n_ctx, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    table = torch.zeros(n_ctx, d, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d // 2])
    return table.float()


@torch.no_grad()
def initialize(model: nn.Module, config: ModelConfig, seed: int) -> None:
    """Re-draw every weight from a generator seeded by `seed` and freeze per variant.

    The draws come in a fixed order (token embeddings, positions, unembedding, then per layer
    q, k, v, o and the MLP), and the positional draw happens whatever `positions` is, so two models
    that differ in one option share all their other weights.
    """
    gen = torch.Generator().manual_seed(seed)
    d = config.d_model
    std = 1.0 / math.sqrt(d)
    nm = native(model)
    tok, head = unwrap(nm.tok_embed), unwrap(nm.head)
    pos = unwrap(nm.pos) if nm.pos is not None else None

    def normal_(p: torch.Tensor, scale: float = std) -> None:
        p.copy_(torch.randn(p.shape, generator=gen) * scale)

    normal_(tok.weight)
    pos_draw = torch.randn((nm.cfg.n_ctx, d), generator=gen) * std
    normal_(head.weight)
    if config.unit_embeddings:
        tok.weight.mul_(math.sqrt(d))
        pos_draw.mul_(math.sqrt(d))
    if config.positions == "random":
        pos.weight.copy_(pos_draw)
    elif config.positions == "sinusoidal":
        # the reference table, divided by √d as its `sqrtd_embeddings` does unless unit_embeddings
        table = sinusoidal_positions(nm.cfg.n_ctx, d)
        pos.weight.copy_(table if config.unit_embeddings else table * std)
    if config.embedding_mode == "tied":
        head.weight = tok.weight  # one parameter: w_U(k) = w_E(k)

    simplified = config.variant == "simplified"
    for layer in range(config.n_layers):
        for name in ("q", "k", "v", "o"):
            lin = attn_linear(model, layer, name)
            normal_(lin.weight)
            _zero_bias(lin)
        if simplified:
            attn_linear(model, layer, "q").weight.copy_(torch.eye(d))
        if config.mlp != "none":
            fc_in, fc_out = mlp_linear(model, layer, "in"), mlp_linear(model, layer, "out")
            if not config.has_mlp(layer):
                fc_in.weight.zero_()
                fc_out.weight.zero_()
            elif config.mlp == "relu":
                normal_(fc_in.weight)
                normal_(fc_out.weight, 1.0 / math.sqrt(fc_out.weight.shape[1]))
            else:  # linear: W_F = fc_out behind a frozen identity fc_in
                fc_in.weight.copy_(torch.eye(d))
                normal_(fc_out.weight)
            _zero_bias(fc_in)
            _zero_bias(fc_out)
    if config.trainable_init == "zero":
        for layer, name in trainable_matrices(config):
            attn_linear(model, layer, name).weight.zero_()
        for layer in range(config.n_layers):
            if config.has_mlp(layer):
                mlp_linear(model, layer, "out").weight.zero_()
    _set_trainable(model, config)


def _zero_bias(lin: nn.Linear) -> None:
    if lin.bias is not None:
        lin.bias.zero_()


def _set_trainable(model: nn.Module, config: ModelConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter | None] = []
    if config.variant == "simplified":
        weights += [attn_linear(model, layer, name).weight for layer, name in trainable_matrices(config)]
    for layer in range(config.n_layers):
        if config.variant == "full":
            for name in ("q", "k", "v", "o"):
                weights.append(attn_linear(model, layer, name).weight)
                biases.append(attn_linear(model, layer, name).bias)
            weights += list(layer_norm(model, layer, "ln1").parameters())
        if config.has_mlp(layer):
            fc_in, fc_out = mlp_linear(model, layer, "in"), mlp_linear(model, layer, "out")
            if config.mlp == "relu":
                weights.append(fc_in.weight)
                biases.append(fc_in.bias)
            weights.append(fc_out.weight)
            biases.append(fc_out.bias)
            if config.variant == "full":
                weights += list(layer_norm(model, layer, "ln2").parameters())
    if config.variant == "full":
        weights += list(layer_norm(model, None).parameters())
    if config.embedding_mode != "frozen":
        nm = native(model)
        weights += [unwrap(nm.tok_embed).weight, unwrap(nm.head).weight]
        if config.positions == "random":
            weights.append(unwrap(nm.pos).weight)
    if config.variant == "full" and config.biases:
        weights += [b for b in biases if b is not None]
    for p in weights:
        p.requires_grad_(True)


def trainable_matrices(config: ModelConfig) -> list[tuple[int, str]]:
    """(layer, linear) pairs trained in the simplified variant: W_K¹, W_K², W_O² (1 layer: W_K, W_O);
    at any depth every W_K and the last W_O (what `trainable_init="zero"` zeroes)."""
    last = config.n_layers - 1
    return [(layer, "k") for layer in range(config.n_layers)] + [(last, "o")]
