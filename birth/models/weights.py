"""Where each weight of a built model lives: accessors on the TransformerLens bridge.

`build_model` (`birth.models.bridge`) returns a `TransformerBridge` whose parameters are held by a
TL-native `NativeModel` (`native(model)`): `tok_embed` (w_E), `pos` (p_t; None with rotary
positions), `layers[l]` with `ln1`, `attn.{q,k,v,o}`, `ln2`, `mlp.{fc_in,fc_out}`, then `ln_out`
and `head` (w_U). Every accessor below returns the plain torch module (nn.Linear, nn.LayerNorm or
nn.Identity) so that probes, the fast path and the reference forward read the same tensors.

Orientation: TransformerLens multiplies row vectors, x ↦ x @ W. The paper's column-vector memory
W_paper = Σ v_j u_iᵀ is W_TL = W_paperᵀ = Σ u_iᵀ v_j here: `model.OV[l, h]` is W_V W_O (row form)
and `model.QK[l, h]` is W_Q W_Kᵀ with score(query x_t, key x_s) = x_t @ QK @ x_sᵀ / √d_head.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from birth.models.config import ModelConfig


def native(model: nn.Module) -> nn.Module:
    """The TL-native `NativeModel` that holds the bridge's parameters."""
    return model.original_model


def unwrap(module: nn.Module) -> nn.Module:
    """The torch module behind a bridge component (the module itself if it is not wrapped)."""
    inner = getattr(module, "original_component", None)
    return inner if isinstance(inner, nn.Module) else module


def attn_linear(model: nn.Module, layer: int, name: str) -> nn.Linear:
    """blocks[layer].attn.{q,k,v,o} as the underlying nn.Linear (weight [out, in], y = x Wᵀ + b).

    With several heads, head h owns rows h·d_head:(h+1)·d_head of q, k, v and those columns of o.
    """
    return unwrap(getattr(model.blocks[layer].attn, name))


def mlp_linear(model: nn.Module, layer: int, name: Literal["in", "out"]) -> nn.Linear:
    """blocks[layer].mlp's input (d -> width) or output (width -> d) nn.Linear."""
    mlp = unwrap(model.blocks[layer].mlp)
    return unwrap(mlp.fc_in if name == "in" else mlp.fc_out)


def apply_mlp(model: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    """blocks[layer]'s feed-forward map x ↦ W_out act(W_in x + b_in) + b_out (no residual, no LN)."""
    mlp = unwrap(model.blocks[layer].mlp)
    return mlp_linear(model, layer, "out")(mlp.act(mlp_linear(model, layer, "in")(x)))


def layer_norm(model: nn.Module, layer: int | None, name: Literal["ln1", "ln2"] = "ln1") -> nn.Module:
    """The normalization before attention (ln1) or the MLP (ln2) of `layer`, or the final one
    (`layer` None): an nn.LayerNorm, or nn.Identity in a model without normalization."""
    if layer is None:
        return unwrap(native(model).ln_out)
    return unwrap(getattr(unwrap(model.blocks[layer]), name))


def bias(lin: nn.Linear) -> torch.Tensor:
    """lin's bias, zeros for a bias-free layer."""
    lin = unwrap(lin)
    if lin.bias is not None:
        return lin.bias
    return torch.zeros(lin.out_features, device=lin.weight.device, dtype=lin.weight.dtype)


def model_config(model: nn.Module) -> ModelConfig:
    """The ModelConfig a model was built from (`build_model` records it)."""
    config = getattr(model, "birth_config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError(
            "this model was not built by birth.models.transformer.build_model (it has no birth_config)"
        )
    return config


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
