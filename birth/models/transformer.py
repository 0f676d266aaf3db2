"""The transformers of *Birth of a Transformer*, built on TransformerLens 4.x.

`build_model` boots a TL-native `TransformerBridge` (no HF download) and re-initializes every weight
from a generator seeded by `seed`:

    token embeddings w_E(k), unembeddings w_U(k), positional embeddings p_t  ~ N(0, I/d)
        (`unit_embeddings`: w_E, p_t ~ N(0, I), the scale of the reference code)
    W_Q = identity in every layer (simplified) or N(0, 1/d) (full)
    W_K, W_V, W_O                                                            ~ N(0, 1/d) entries
    MLP: W_in ~ N(0, 1/d), W_out ~ N(0, 1/(width·d)); a linear MLP is one d x d map W_F ~ N(0, 1/d)
    all biases = 0 (`biases=False`: no bias parameters), LayerNorm gains = 1

With N(0, 1/fan_in) entries a matrix roughly preserves norms, so W_OV¹ w_E(k) has norm ≈ 1 like
the embeddings, and attention scores x_tᵀ W_KQ x_s / √d_head start near zero (uniform attention).

Two variants:
- `simplified` (paper, section 4.2): one head per layer, no LayerNorm; only W_K¹, W_K², W_O² and the
  feed-forward layers (W_F) train. W_Q = I, W_V¹, W_O¹ (so W_OV¹ is a fixed random map), W_V², every
  bias and (unless `embeddings` says otherwise) the embeddings and unembedding are frozen.
- `full`: every weight trains (the reference full model: `FULL_MODEL`).

Orientation: TransformerLens multiplies row vectors, x ↦ x @ W. The paper's column-vector memory
W_paper = Σ v_j u_iᵀ is W_TL = W_paperᵀ = Σ u_iᵀ v_j here: `model.OV[l, h]` is W_V W_O (row form)
and `model.QK[l, h]` is W_Q W_Kᵀ with score(query x_t, key x_s) = x_t @ QK @ x_sᵀ / √d_head.

Every architecture trains through `model(tokens)`; its attention and LayerNorms run fused kernels
unless a hook reads their intermediate values (`_configure_layers`). `fast_logits` computes the same
function with fewer FLOPs for the architectures `supports_fast_path` accepts (the simplified model,
with or without a linear W_F); `tests/test_model.py` checks the forwards agree on random weights.
docs/model.md describes every option.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from birth.base.seeds import check_seed

Variant = Literal["simplified", "full"]
TrainableInit = Literal["random", "zero"]
Mlp = Literal["none", "relu", "linear"]
MlpLayers = Literal["all", "first", "final"]
Normalization = Literal["none", "pre_ln"]
Embeddings = Literal["auto", "frozen", "trained", "tied"]
Positions = Literal["random", "sinusoidal", "rotary"]
AttnScale = Literal["sqrt_d_head", "none"]
VARIANTS: tuple[str, ...] = get_args(Variant)
TRAINABLE_INITS: tuple[str, ...] = get_args(TrainableInit)

LN_EPS = 1e-5  # the reference full model's LayerNorm epsilon


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture (the sequence length and vocabulary come from the task: `build_model`)."""

    n_layers: int = 2  # attention layers (the simplified variant: 1 or 2)
    d_model: int = 256  # residual width d (d_head = d / n_heads)
    variant: Variant = "simplified"  # simplified: only W_K¹, W_K², W_O² and W_F train, W_Q = I; full: all
    trainable_init: TrainableInit = "random"  # zero: every W_K, the last W_O and each MLP's W_out start at 0
    # token and positional embeddings N(0, 1) per coordinate (norm √d), as nn.Embedding / randn
    # give in the reference code, instead of N(0, 1/d) (norm 1). Scores and gradients then scale
    # with d, which is what its SGD learning rate of 0.03 is tuned for.
    unit_embeddings: bool = False  # w_E, p_t ~ N(0, I) (the reference code's scale) instead of N(0, I/d)
    n_heads: int = 1  # attention heads per layer (the simplified variant: 1)
    mlp: Mlp = "none"  # feed-forward layer: none, ReLU MLP of width --mlp-width x d, or one linear d x d map
    mlp_width: int = 4  # hidden width of a ReLU MLP as a multiple of --d-model (a linear one is d x d)
    mlp_layers: MlpLayers = "all"  # which layers have the MLP; final: only after the last attention (W_F)
    normalization: Normalization = "none"  # pre_ln: LayerNorm before attention and MLP, and a final one
    # token, positional and output embeddings w_E, p_t, w_U: frozen, trained, or trained and tied
    embeddings: Embeddings = "auto"  # frozen/trained/tied (w_U = w_E); auto: frozen iff simplified
    positions: Positions = "random"  # p_t: N(0, I/d) draws, a fixed sin-cos table, or rotary in attention
    attn_scale: AttnScale = "sqrt_d_head"  # attention scores divided by √d_head, or not scaled
    biases: bool = True  # linear-layer biases (frozen at 0 if simplified); false: none, as the reference

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "mlp_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{_flag(name)} must be an integer >= 1, got {value!r}")
        for name, kind in (
            ("variant", Variant),
            ("trainable_init", TrainableInit),
            ("mlp", Mlp),
            ("mlp_layers", MlpLayers),
            ("normalization", Normalization),
            ("embeddings", Embeddings),
            ("positions", Positions),
            ("attn_scale", AttnScale),
        ):
            if getattr(self, name) not in get_args(kind):
                raise ValueError(
                    f"{_flag(name)} must be one of {get_args(kind)}, got {getattr(self, name)!r}"
                )
        for name in ("unit_embeddings", "biases"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{_flag(name)} must be true or false, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"--n-heads must divide --d-model (got {self.n_heads}, {self.d_model})")
        if self.positions == "rotary" and self.d_head % 2:
            raise ValueError(
                f"--positions rotary rotates pairs of coordinates: the head width --d-model / --n-heads "
                f"must be even, got {self.d_model} / {self.n_heads} = {self.d_head}"
            )
        if self.variant == "simplified":
            if self.n_layers not in (1, 2):
                raise ValueError(f"--n-layers must be 1 or 2 for --variant simplified, got {self.n_layers}")
            if self.n_heads != 1:
                raise ValueError(
                    f"--variant simplified has one head per layer: --n-heads must be 1, got {self.n_heads}"
                )
            if self.normalization != "none":
                raise ValueError(
                    f"--variant simplified has no LayerNorm: --normalization must be none, "
                    f"got {self.normalization!r}"
                )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def embedding_mode(self) -> Literal["frozen", "trained", "tied"]:
        """`embeddings` with "auto" resolved: frozen for the simplified variant, trained for full."""
        if self.embeddings == "auto":
            return "frozen" if self.variant == "simplified" else "trained"
        return self.embeddings

    def has_mlp(self, layer: int) -> bool:
        """Whether `layer` (0-based) ends with a feed-forward layer."""
        if self.mlp == "none":
            return False
        if self.mlp_layers == "first":
            return layer == 0
        if self.mlp_layers == "final":
            return layer == self.n_layers - 1
        return True

    @property
    def has_final_ffn(self) -> bool:
        """Whether the last layer has a feed-forward layer W_F (what the W_F probe reads)."""
        return self.has_mlp(self.n_layers - 1)


# The reference full model (`ihead_full_model.py`): 2 layers, 4 heads of width 32, pre-LayerNorm
# and a final LayerNorm, ReLU MLPs of width 4d in both layers, no biases, learned token, positional
# and output embeddings (N(0, 1) embeddings as its nn.Embedding draws). It trains with AdamW
# (lr 0.01, weight decay 0.01, betas (0.9, 0.99)), batch 64, loss on all tokens: the train presets
# hold that side.
FULL_MODEL = ModelConfig(
    n_layers=2,
    d_model=128,
    variant="full",
    n_heads=4,
    mlp="relu",
    mlp_width=4,
    mlp_layers="all",
    normalization="pre_ln",
    embeddings="trained",
    positions="random",
    unit_embeddings=True,
    biases=False,
)

# The simplified model plus a trainable feed-forward layer W_F after the second attention layer
# (the reference's `final_ffn` with `linear_final_ffn`): W_F can store the global bigrams, which the
# attention-only model must otherwise fit into W_O². `mlp="relu"` gives the ReLU version.
SIMPLIFIED_FFN = ModelConfig(mlp="linear", mlp_layers="final")

NAMED_CONFIGS: MappingProxyType[str, ModelConfig] = MappingProxyType(
    {"simplified": ModelConfig(), "simplified-ffn": SIMPLIFIED_FFN, "full": FULL_MODEL}
)


def native(model: nn.Module) -> nn.Module:
    """The TL-native `NativeModel` that holds the bridge's parameters."""
    return model.original_model


def _unwrap(module: nn.Module) -> nn.Module:
    """The torch module behind a bridge component (the module itself if it is not wrapped)."""
    inner = getattr(module, "original_component", None)
    return inner if isinstance(inner, nn.Module) else module


def attn_linear(model: nn.Module, layer: int, name: str) -> nn.Linear:
    """blocks[layer].attn.{q,k,v,o} as the underlying nn.Linear (weight [out, in], y = x Wᵀ + b).

    With several heads, head h owns rows h·d_head:(h+1)·d_head of q, k, v and those columns of o.
    """
    return _unwrap(getattr(model.blocks[layer].attn, name))


def mlp_linear(model: nn.Module, layer: int, name: Literal["in", "out"]) -> nn.Linear:
    """blocks[layer].mlp's input (d -> width) or output (width -> d) nn.Linear."""
    mlp = _unwrap(model.blocks[layer].mlp)
    return _unwrap(mlp.fc_in if name == "in" else mlp.fc_out)


def apply_mlp(model: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    """blocks[layer]'s feed-forward map x ↦ W_out act(W_in x + b_in) + b_out (no residual, no LN)."""
    mlp = _unwrap(model.blocks[layer].mlp)
    return mlp_linear(model, layer, "out")(mlp.act(mlp_linear(model, layer, "in")(x)))


def layer_norm(model: nn.Module, layer: int | None, name: Literal["ln1", "ln2"] = "ln1") -> nn.Module:
    """The normalization before attention (ln1) or the MLP (ln2) of `layer`, or the final one
    (`layer` None): an nn.LayerNorm, or nn.Identity in a model without normalization."""
    if layer is None:
        return _unwrap(native(model).ln_out)
    return _unwrap(getattr(_unwrap(model.blocks[layer]), name))


def model_config(model: nn.Module) -> ModelConfig:
    """The ModelConfig a model was built from (`build_model` records it)."""
    config = getattr(model, "birth_config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError(
            "this model was not built by birth.models.transformer.build_model (it has no birth_config)"
        )
    return config


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
    and nothing reads it, so the fused kernel computes the same output (to float32 rounding) at a
    fraction of the memory traffic. `_pattern_hooks` holds the bridge's hook_pattern and
    hook_attn_scores (set by `_configure_layers`).
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
            # hooks (5x the fused nn.LayerNorm's forward + backward); this mode runs the fused one and
            # still fires hook_scale / hook_normalized (computed without autograd) for caches
            module.use_native_layernorm_autograd = True
    fused = _fused_attention_class()
    for layer in range(config.n_layers):
        block = _unwrap(model.blocks[layer])
        bridge = model.blocks[layer].attn
        attention = _unwrap(bridge)
        attention.__class__ = fused  # same module, same parameters, a forward without redundant passes
        attention._pattern_hooks = (bridge.hook_pattern, bridge.hook_attn_scores)
        if not config.biases:
            linears = [attn_linear(model, layer, name) for name in ("q", "k", "v", "o")]
            if config.mlp != "none":
                linears += [mlp_linear(model, layer, "in"), mlp_linear(model, layer, "out")]
            for lin in linears:
                lin.register_parameter("bias", None)  # F.linear without a bias; TL reads None as bias-free
        if config.attn_scale == "none":
            _unwrap(block.attn).scale = 1.0  # NativeAttention divides its scores by this attribute
        if config.mlp == "none":
            continue
        if config.mlp == "linear":
            _unwrap(block.mlp).act = _identity
        if not config.has_mlp(layer):
            # TL builds an MLP in every layer or in none: this block skips its own (its frozen,
            # zeroed weights stay in the state dict so that every layer has the same parameters)
            block.cfg = copy.copy(block.cfg)
            block.cfg.attn_only = True


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
    tok, head = _unwrap(nm.tok_embed), _unwrap(nm.head)
    pos = _unwrap(nm.pos) if nm.pos is not None else None

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


def _bias(lin: nn.Linear) -> torch.Tensor:
    """lin's bias, zeros for a bias-free layer."""
    lin = _unwrap(lin)
    if lin.bias is not None:
        return lin.bias
    return torch.zeros(lin.out_features, device=lin.weight.device, dtype=lin.weight.dtype)


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
        weights += [_unwrap(nm.tok_embed).weight, _unwrap(nm.head).weight]
        if config.positions == "random":
            weights.append(_unwrap(nm.pos).weight)
    if config.variant == "full" and config.biases:
        weights += [b for b in biases if b is not None]
    for p in weights:
        p.requires_grad_(True)


def trainable_matrices(config: ModelConfig) -> list[tuple[int, str]]:
    """(layer, linear) pairs trained in the simplified variant: W_K¹, W_K², W_O² (1 layer: W_K, W_O);
    at any depth every W_K and the last W_O (what `trainable_init="zero"` zeroes)."""
    last = config.n_layers - 1
    return [(layer, "k") for layer in range(config.n_layers)] + [(last, "o")]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def fast_path_obstacle(config: ModelConfig) -> str | None:
    """Why `fast_logits` cannot run `config` (None: it can)."""
    if config.n_heads != 1:
        return f"{config.n_heads} heads per layer"
    if config.normalization != "none":
        return "LayerNorm"
    if config.positions == "rotary":
        return "rotary positions"
    if config.mlp == "relu" and any(config.has_mlp(layer) for layer in range(config.n_layers)):
        return "a ReLU MLP"
    if config.mlp == "linear" and any(config.has_mlp(layer) for layer in range(config.n_layers - 1)):
        return "a feed-forward layer before the last attention layer"
    return None


def supports_fast_path(config: ModelConfig) -> bool:
    """Whether `fast_logits` computes `config`'s model: one head per layer, no LayerNorm, additive
    positions, and no feed-forward layer except a linear W_F after the last attention layer."""
    return fast_path_obstacle(config) is None


def _first_layer_table(
    lin: nn.Linear, tok_embed: torch.Tensor, pos_embed: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """lin(w_E(z_t) + p_t) for all (b, t) by gathering from per-token and per-position tables.

    The first layer's input is an embedding lookup, so any linear map of it is a lookup in
    [N, d] and [T, d] tables: N·d² + T·d² FLOPs instead of B·T·d².
    """
    T = tokens.shape[1]
    tok_table = F.linear(tok_embed, lin.weight, lin.bias)
    pos_table = F.linear(pos_embed[:T], lin.weight)
    return F.embedding(tokens, tok_table) + pos_table


def _is_frozen_identity(lin: nn.Linear) -> bool:
    """W_Q of the simplified model: a frozen identity with zero bias, so q = x needs no matmul."""
    w = lin.weight
    return (
        not w.requires_grad
        and w.shape[0] == w.shape[1]
        and (lin.bias is None or (not lin.bias.requires_grad and not bool(lin.bias.any())))
        and torch.equal(w, torch.eye(w.shape[0], device=w.device, dtype=w.dtype))
    )


def _query(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x if _is_frozen_identity(lin) else lin(x)


def fast_logits(
    model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits equal to `model(tokens)`: [B, T, N], or [M, N] = `model(tokens)[positions]` when a
    boolean mask `positions` [B, T] is given (the training loss only needs counter >= 2 targets).

    Same parameters, same function, fewer FLOPs than TransformerLens' eager forward:
    - layer 1's q, k, v are gathered from token/position tables (its input is an embedding);
    - a frozen identity W_Q (simplified model) is skipped;
    - each layer's o ∘ v is applied before attention (A (x W_V) W_O = A (x W_V W_O), rows of A
      sum to one, so biases fold in too);
    - the last layer's value path is projected to the N-dimensional logit space before attention
      (A (x W_OV) W_U = A (x W_OV W_U)), so its attention mixes N < d channels;
    - with `positions`, the last layer attends from the selected queries only;
    - a linear W_F after the last attention layer folds into the unembedding:
      (h + h W_F) W_U = h (I + W_F) W_U;
    - attention itself is fused scaled_dot_product_attention.

    Raises ValueError for an architecture `supports_fast_path` refuses (train those through
    `model(tokens)`).
    """
    obstacle = fast_path_obstacle(model_config(model))
    if obstacle is not None:
        raise ValueError(f"fast_logits does not support a model with {obstacle}: use model(tokens)")
    nm = native(model)
    cfg = nm.cfg
    B, T = tokens.shape
    if T > cfg.n_ctx:
        raise ValueError(f"sequence length {T} exceeds n_ctx={cfg.n_ctx}")
    E, P = nm.tok_embed.weight, nm.pos.weight  # [N, d], [n_ctx, d]
    U, logit_bias = _readout(model)  # [N, d], [N] or None
    scale = 1.0 / nm.layers[0].attn.scale
    x = F.embedding(tokens, E) + P[:T]
    n_layers = len(nm.layers)
    for i, block in enumerate(nm.layers):
        attn = block.attn
        first, last = i == 0, i == n_layers - 1
        # value path folded with W_O (and W_U for the last layer): [d, d'] matrix and bias
        w_ov = attn.v.weight.t() @ attn.o.weight.t()  # [d, d]
        b_ov = _bias(attn.v) @ attn.o.weight.t() + _bias(attn.o)  # [d]
        if last:
            w_ov, b_ov = w_ov @ U.t(), b_ov @ U.t()  # [d, N], [N]
        if first:
            v = F.embedding(tokens, F.linear(E, w_ov.t(), b_ov)) + F.linear(P[:T], w_ov.t())
        else:
            v = x @ w_ov + b_ov
        if last and positions is not None:
            # first layer: keys from the tables; later: W_K moves to the selected queries' side
            k = _first_layer_table(attn.k, E, P, tokens) if first else None
            logits = _selected_query_logits(attn, x, k, v, U, positions, scale)
            return logits if logit_bias is None else logits + logit_bias
        k = _first_layer_table(attn.k, E, P, tokens) if first else attn.k(x)
        if first:
            q = x if _is_frozen_identity(attn.q) else _first_layer_table(attn.q, E, P, tokens)
        else:
            q = _query(attn.q, x)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), is_causal=True, scale=scale
        ).squeeze(1)
        if last:
            return F.linear(x, U, logit_bias) + out
        x = x + out
    raise AssertionError("unreachable: the model has at least one layer")


def _readout(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The map from the last attention layer's output h to the logits, as (U', b): logits = h U'ᵀ + b.

    Without a feed-forward layer U' = W_U and no bias. A linear W_F (h ↦ h + fc_out(fc_in(h)),
    the last block's residual MLP with identity activation) is M = W_out W_in, c its bias:
    logits = (h + h Mᵀ + c) W_Uᵀ = h (W_U (I + M))ᵀ + c W_Uᵀ.
    """
    config = model_config(model)
    U = native(model).head.weight
    if not config.has_final_ffn:
        return U, None
    last = config.n_layers - 1
    fc_in, fc_out = mlp_linear(model, last, "in"), mlp_linear(model, last, "out")
    M = fc_out.weight @ fc_in.weight  # [d, d], y = x Mᵀ
    c = F.linear(_bias(fc_in), fc_out.weight, fc_out.bias)  # [d]
    return U + U @ M, c @ U.t()


def _selected_query_logits(
    attn: nn.Module,
    x: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor,
    U: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
    groups: int = 8,
) -> torch.Tensor:
    """Last layer from the selected queries only, as `logits[positions]` in row-major (b, t) order.

    Rows are padded to the largest count of selected positions within a group of sequences: a few
    sequences can have far more than the rest (a trigger whose output is itself repeats to the
    end: every later target is a 2nd+ occurrence), so the batch is sorted by count and cut into
    `groups` groups, each padded to its own largest count (at the paper preset the batch's largest
    count is 255 for a mean of ~76).
    """
    B = x.shape[0]
    counts = positions.sum(dim=1)
    by_count = torch.argsort(counts)
    n_groups = max(1, min(groups, B))
    sorted_positions = positions[by_count]
    # chunk (not indexing) so that backward concatenates the groups' gradients instead of filling
    # a batch-sized zero tensor per group
    xs, vs = x[by_count].chunk(n_groups), v[by_count].chunk(n_groups)
    ks = [None] * len(xs) if k is None else k[by_count].chunk(n_groups)
    pieces = [
        _padded_query_logits(attn, xg, kg, vg, U, pg, scale)
        for xg, kg, vg, pg in zip(xs, ks, vs, sorted_positions.chunk(n_groups))
    ]
    # the pieces hold the sorted rows' selected positions in row-major order: number them, then
    # read the numbers back in the caller's row order
    rank = torch.empty_like(sorted_positions, dtype=torch.long)
    rank[sorted_positions] = torch.arange(int(positions.sum()), device=x.device)
    index = torch.empty_like(rank)
    index[by_count] = rank
    return torch.cat(pieces)[index[positions]]


def _padded_query_logits(
    attn: nn.Module,
    x: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor,
    U: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Last layer from the selected queries only: rows padded to the largest count per sequence.

    `k` None: the keys are not projected; q·(x_s W_Kᵀ + b_K) = (q W_K)·x_s + q·b_K, and q·b_K is the
    same for every key s, which softmax ignores, so W_K is applied to the few selected queries
    instead of to all B·T positions.
    """
    B, T, d = x.shape
    counts = positions.sum(dim=1)
    n_query = int(counts.max()) if B else 0
    # stable sort puts each row's selected positions first, in increasing order
    order = torch.argsort((~positions).to(torch.int8), dim=1, stable=True)[:, :n_query]  # [B, Q]
    valid = torch.arange(n_query, device=x.device) < counts.unsqueeze(1)  # [B, Q]
    xq = x.gather(1, order.unsqueeze(-1).expand(B, n_query, d))  # [B, Q, d]
    future = torch.arange(T, device=x.device) > order.unsqueeze(-1)  # [B, Q, T]
    # explicit attention: a boolean mask sends SDPA to its unfused path anyway, with extra copies
    query = _query(attn.q, xq) * scale  # scale the smaller side
    if k is None:
        scores = torch.bmm(query @ attn.k.weight, x.transpose(1, 2))
    else:
        scores = torch.bmm(query, k.transpose(1, 2))
    out = torch.bmm(scores.masked_fill_(future, float("-inf")).softmax(dim=-1), v)
    return (F.linear(xq, U) + out)[valid]  # row-major (b, t) order, as logits[positions]
