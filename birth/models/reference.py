"""The reference architecture: every transformer `ModelConfig` allows, written out in plain torch.

Read this file to know what a model computes. `build_model` returns a TransformerLens bridge (hooks,
caches, FactoredMatrix views) and `fast_logits` a folded, cheaper forward; both compute the function
below, and `tests/unit/test_model.py` holds them equal to it, values and gradients, across the
architectures. For tokens z_1..z_T:

    x_t = w_E(z_t) + p_t                      (rotary positions: no p_t; q and k rotate instead)
    for each layer l:
        x = x + Attention_l(LN1_l(x))         causal, n_heads heads of width d_head (default d / n_heads)
        x = x + MLP_l(LN2_l(x))               only in the layers that have an MLP
    logits = LN_f(x) W_Uᵀ                     (tied embeddings: W_U = w_E)

LN is a LayerNorm (eps 1e-5) with `normalization="pre_ln"` and the identity otherwise. An MLP is
x ↦ W_out act(W_in x + b_in) + b_out with act = ReLU, or the identity for a linear W_F (whose W_in is
a frozen d x d identity, so W_F = W_out). Linear maps follow torch's convention, y = x Wᵀ + b;
without `biases` they have no bias.

What trains (the variants), and the seeded draws, are the builder's (`birth.models.initialization`):
`ReferenceTransformer.from_bridge(model)` builds this module on a built model's own parameters, so a
loss through either forward puts its gradients in the same tensors. Constructed directly,
`ReferenceTransformer(config, n_ctx=..., vocab_size=...)` has torch's default initialization.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from birth.models.config import LN_EPS, ModelConfig
from birth.models.weights import attn_linear, layer_norm, mlp_linear, model_config, native, unwrap

ROTARY_BASE = 10000.0  # RoPE's frequencies ω_i = base^(-2i / d_head), TransformerLens' default


def normalization(config: ModelConfig) -> nn.Module:
    """A LayerNorm over the residual width (pre-LN models), or the identity."""
    if config.normalization == "pre_ln":
        return nn.LayerNorm(config.d_model, eps=LN_EPS)
    return nn.Identity()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """RoPE on queries or keys [B, heads, T, d_head]: the coordinate pair (2i, 2i+1) at position t
    is rotated by the angle t·ω_i, so q_tᵀ k_s depends on the positions through t - s only."""
    T, d_head = x.shape[-2], x.shape[-1]
    omega = ROTARY_BASE ** (-torch.arange(0, d_head, 2, device=x.device, dtype=x.dtype) / d_head)
    angle = torch.arange(T, device=x.device, dtype=x.dtype).unsqueeze(1) * omega  # [T, d_head / 2]
    cos, sin = angle.cos(), angle.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    """softmax(q kᵀ / scale, causal) v per head, the heads side by side, then W_O.

    Head h reads rows h·d_head:(h+1)·d_head of W_Q, W_K, W_V and writes through those columns of W_O.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, width = config.d_model, config.attention_width  # width = n_heads x d_head (d by default)
        self.n_heads, self.d_head = config.n_heads, config.d_head
        self.q = nn.Linear(d, width, bias=config.biases)  # W_Q (the simplified variant: a frozen identity)
        self.k = nn.Linear(d, width, bias=config.biases)  # W_K
        self.v = nn.Linear(d, width, bias=config.biases)  # W_V
        self.o = nn.Linear(width, d, bias=config.biases)  # W_O
        self.scale = math.sqrt(config.d_head) if config.attn_scale == "sqrt_d_head" else 1.0
        self.rotary = config.positions == "rotary"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = (
            lin(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2) for lin in (self.q, self.k, self.v)
        )
        if self.rotary:
            q, k = rotate_pairs(q), rotate_pairs(k)
        scores = q @ k.transpose(-1, -2) / self.scale  # [B, heads, T (query), T (key)]
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # key after query
        pattern = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        heads = (pattern @ v).transpose(1, 2).reshape(B, T, self.n_heads * self.d_head)
        return self.o(heads)


class FeedForward(nn.Module):
    """x ↦ W_out act(W_in x + b_in) + b_out: a ReLU MLP of width mlp_width·d, or a linear d x d map."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        width = config.mlp_width * d if config.mlp == "relu" else d
        self.fc_in = nn.Linear(d, width, bias=config.biases)  # W_in (linear W_F: a frozen identity)
        self.fc_out = nn.Linear(width, d, bias=config.biases)  # W_out (linear: W_F itself)
        self.relu = config.mlp == "relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc_in(x)
        return self.fc_out(hidden.relu() if self.relu else hidden)


class Block(nn.Module):
    """One layer: x + attention(LN1(x)), then + MLP(LN2(·)) of that sum where the layer has an MLP."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.ln1 = normalization(config)
        self.attn = CausalSelfAttention(config)
        self.mlp = FeedForward(config) if config.has_mlp(layer) else None
        self.ln2 = normalization(config) if self.mlp is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        if self.mlp is not None:
            x = x + self.mlp(self.ln2(x))
        return x


class ReferenceTransformer(nn.Module):
    """Tokens [B, T] -> logits [B, T, vocab_size], for any `ModelConfig`."""

    def __init__(self, config: ModelConfig, *, n_ctx: int, vocab_size: int) -> None:
        super().__init__()
        d = config.d_model
        self.config = config
        self.tok_embed = nn.Embedding(vocab_size, d)  # w_E
        # p_t: trained or frozen random draws, or a fixed sin-cos table; none with rotary positions
        self.pos_embed = nn.Embedding(n_ctx, d) if config.positions != "rotary" else None
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.ln_f = normalization(config)
        self.unembed = nn.Linear(d, vocab_size, bias=False)  # w_U, one row per token
        if config.embedding_mode == "tied":
            self.unembed.weight = self.tok_embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        x = self.tok_embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[:T]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_f(x))

    @classmethod
    def from_bridge(cls, model: nn.Module) -> ReferenceTransformer:
        """This architecture on the parameters of `model` (built by `build_model`): the same tensors,
        not copies, so training either trains both."""
        config, nm = model_config(model), native(model)
        with torch.device("meta"):  # shapes only: every parameter is replaced by the model's below
            reference = cls(config, n_ctx=nm.cfg.n_ctx, vocab_size=nm.cfg.d_vocab)
        _share(reference.tok_embed, unwrap(nm.tok_embed))
        if reference.pos_embed is not None:
            _share(reference.pos_embed, unwrap(nm.pos))
        _share(reference.unembed, unwrap(nm.head))
        _share(reference.ln_f, layer_norm(model, None))
        for layer, block in enumerate(reference.blocks):
            _share(block.ln1, layer_norm(model, layer, "ln1"))
            for name in ("q", "k", "v", "o"):
                _share(getattr(block.attn, name), attn_linear(model, layer, name))
            if block.mlp is not None:
                _share(block.ln2, layer_norm(model, layer, "ln2"))
                _share(block.mlp.fc_in, mlp_linear(model, layer, "in"))
                _share(block.mlp.fc_out, mlp_linear(model, layer, "out"))
        return reference


def _share(module: nn.Module, source: nn.Module) -> None:
    """Point each of `module`'s own parameters at the parameter of the same name in `source`."""
    for name, _ in list(module.named_parameters(recurse=False)):
        setattr(module, name, getattr(source, name))


def reference_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The reference forward on `model`'s parameters: equal to `model(tokens)` (to float rounding)."""
    return ReferenceTransformer.from_bridge(model)(tokens)
