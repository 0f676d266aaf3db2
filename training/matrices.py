"""The weight matrices of a transformer by name: what `--schedule` names and the `norm/` and
`grad_norm/` metrics report."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from birth.models.transformer import attn_linear, mlp_linear, model_config, native


def named_matrices(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every weight matrix of a `birth.models.transformer` transformer by its name (layers numbered
    from 1): W_Q1, W_K1, W_V1, W_O1, ... per attention layer, W_in1, W_out1, ... per feed-forward
    layer (a linear W_F is W_out of its layer), and W_E, W_U, W_pos (absent with rotary positions)."""
    config = model_config(model)
    out: dict[str, nn.Parameter] = {}
    for layer in range(config.n_layers):
        for name in ("q", "k", "v", "o"):
            out[f"W_{name.upper()}{layer + 1}"] = attn_linear(model, layer, name).weight
        if config.has_mlp(layer):
            out[f"W_in{layer + 1}"] = mlp_linear(model, layer, "in").weight
            out[f"W_out{layer + 1}"] = mlp_linear(model, layer, "out").weight
    nm = native(model)
    out["W_E"] = nm.tok_embed.weight
    out["W_U"] = nm.head.weight
    if nm.pos is not None:
        out["W_pos"] = nm.pos.weight
    return out


def trained_matrices(model: nn.Module) -> dict[str, nn.Parameter]:
    """The matrices of `named_matrices` that train (requires_grad), e.g. W_K1, W_K2, W_O2."""
    return {name: p for name, p in named_matrices(model).items() if p.requires_grad}


@torch.no_grad()
def gradient_norms(matrices: Mapping[str, nn.Parameter]) -> dict[str, float]:
    """`grad_norm/NAME`: the Frobenius norm of each matrix's gradient, for those that hold one (a
    matrix frozen at this step by `--schedule` has none)."""
    return {f"grad_norm/{name}": p.grad.norm().item() for name, p in matrices.items() if p.grad is not None}
