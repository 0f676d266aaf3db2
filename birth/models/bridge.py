"""`build_model`: a `ModelConfig` as a seeded TransformerLens 4.x `TransformerBridge`.

The bridge is booted TL-native (`TransformerBridge.boot_native`, no HF download), shaped by what
TL's config cannot say (`_configure_layers`: no biases, unscaled attention, linear MLPs, layers
without one), then every weight is re-drawn from the seed (`birth.models.initialization`).

Every architecture trains through `model(tokens)`; its attention and LayerNorms run fused kernels
unless a hook reads their intermediate values. The function it computes is written out in plain
torch in `birth.models.reference`, which the tests hold it equal to.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from birth.base.seeds import check_seed
from birth.models.config import LN_EPS, ModelConfig
from birth.models.initialization import initialize
from birth.models.weights import attn_linear, mlp_linear, unwrap


def build_model(
    config: ModelConfig,
    *,
    n_ctx: int,
    vocab_size: int = 65,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A seeded TransformerBridge of `config` with `n_ctx` positions (the task's T) and `vocab_size`
    tokens, frozen per variant. `model.birth_config` records `config`."""
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 2:
        raise ValueError(f"n_ctx (the task's --seq-len) must be an integer >= 2, got {n_ctx!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
    check_seed(seed)
    # Imported here: transformer_lens takes seconds to import, and CLI help should not pay for it.
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    d = config.d_model
    any_mlp = any(config.has_mlp(layer) for layer in range(config.n_layers))
    tl_cfg = TransformerBridgeConfig(
        d_model=d,
        d_head=config.d_head,
        n_heads=config.n_heads,
        n_layers=config.n_layers,
        n_ctx=n_ctx,
        d_vocab=vocab_size,
        attn_only=not any_mlp,
        d_mlp=(config.mlp_width * d if config.mlp == "relu" else d) if any_mlp else None,
        normalization_type="LN" if config.normalization == "pre_ln" else None,
        eps=LN_EPS,
        positional_embedding_type="rotary" if config.positions == "rotary" else "standard",
        act_fn="relu",  # a linear MLP swaps in the identity below
        seed=seed,  # boot_native forks the RNG: the caller's global RNG is untouched
    )
    model = TransformerBridge.boot_native(tl_cfg)
    _configure_layers(model, config)
    initialize(model, config, seed)
    model.birth_config = config
    device = torch.device(device)
    if device.type != "cpu":  # the bridge prints a line on every .to(); skip the no-op move
        model = model.to(device)
    return model


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hooked(point: nn.Module) -> bool:
    """Whether a HookPoint has a TransformerLens or torch hook (run_with_cache, run_with_hooks)."""
    return bool(
        getattr(point, "fwd_hooks", None)
        or getattr(point, "bwd_hooks", None)
        or point._forward_hooks
        or point._forward_pre_hooks
        or point._backward_hooks
    )


@functools.cache  # one class (built on first use: transformer_lens takes seconds to import)
def _fused_attention_class() -> type:
    """NativeAttention that runs fused causal attention (scaled_dot_product_attention) whenever no
    hook observes its pattern, and TransformerLens' own explicit forward otherwise.

    The explicit forward masks the scores, takes the softmax, then masks the pattern a second time
    and hands it to hook_pattern; with causal attention and no padding mask the pattern is the same
    and nothing reads it, so the fused kernel computes the same output (to float32 rounding) with
    less memory traffic. `_pattern_hooks` holds the bridge's hook_pattern and hook_attn_scores (set
    by `_configure_layers`).
    """
    from transformer_lens.model_bridge.sources.native.model import NativeAttention

    class FusedCausalAttention(NativeAttention):
        _pattern_hooks: tuple[nn.Module, ...] = ()

        def forward(self, hidden_states, attention_mask=None, position_ids=None, pattern_fn=None, **kwargs):
            explicit = (
                attention_mask is not None
                or not self.causal
                or self.kv_repeats != 1
                or self.attn_scores_soft_cap > 0
                or any(_hooked(point) for point in self._pattern_hooks)
            )
            if explicit:
                return super().forward(hidden_states, attention_mask, position_ids, pattern_fn, **kwargs)
            B, T, _ = hidden_states.shape
            q, k, v = (
                lin(hidden_states).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
                for lin in (self.q, self.k, self.v)
            )
            if self.rotary is not None:
                q, k = self.rotary.apply_rope(q, k, position_ids=position_ids)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / self.scale)
            return self.o(out.transpose(1, 2).reshape(B, T, -1)), None

    return FusedCausalAttention


def _configure_layers(model: nn.Module, config: ModelConfig) -> None:
    """What TL's config cannot say: no biases, unscaled attention, linear MLPs, layers without one;
    and fused LayerNorm and attention kernels where no hook needs the unfused ones."""
    from transformer_lens.model_bridge.generalized_components import NormalizationBridge

    for module in model.modules():
        if isinstance(module, NormalizationBridge):
            # the bridge's default LayerNorm is written out in eight autograd ops to expose its
            # hooks; this mode runs the fused nn.LayerNorm and still fires hook_scale /
            # hook_normalized (computed without autograd) for caches
            module.use_native_layernorm_autograd = True
    fused = _fused_attention_class()
    for layer in range(config.n_layers):
        block = unwrap(model.blocks[layer])
        bridge = model.blocks[layer].attn
        attention = unwrap(bridge)
        attention.__class__ = fused  # same module, same parameters, a forward without redundant passes
        attention._pattern_hooks = (bridge.hook_pattern, bridge.hook_attn_scores)
        if not config.biases:
            linears = [attn_linear(model, layer, name) for name in ("q", "k", "v", "o")]
            if config.mlp != "none":
                linears += [mlp_linear(model, layer, "in"), mlp_linear(model, layer, "out")]
            for lin in linears:
                lin.register_parameter("bias", None)  # F.linear without a bias; TL reads None as bias-free
        if config.attn_scale == "none":
            unwrap(block.attn).scale = 1.0  # NativeAttention divides its scores by this attribute
        if config.mlp == "none":
            continue
        if config.mlp == "linear":
            unwrap(block.mlp).act = _identity
        if not config.has_mlp(layer):
            # TL builds an MLP in every layer or in none: this block skips its own (its frozen,
            # zeroed weights stay in the state dict so that every layer has the same parameters)
            block.cfg = copy.copy(block.cfg)
            block.cfg.attn_only = True
