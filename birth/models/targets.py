"""The hand-built target memories of the simplified 2-layer transformer, and the orthogonal
embeddings of the theorem's infinite-width idealization: functions of a model's weights.

With near-orthonormal random embeddings the three target associative memories are, in the
paper's column-vector notation (Bietti et al., 2023, section 5),

    W_KQ¹ = Σ_t p_{t+1} p_tᵀ                       (previous-token head: query p_{t+1}, key p_t)
    W_KQ² = Σ_{k∈Q} w_E(k) (W_OV¹ w_E(k))ᵀ          (induction head: query trigger, key "after q")
    W_OV² = Σ_k w_U(k) w_E(k)ᵀ                      (copy the attended token to the output)

TransformerLens multiplies row vectors, so each is inserted transposed (see `birth.models.weights`):
row-form QK of a simplified layer is `k.weight` (W_Q = I) and row-form OV is W_V W_O.

`training.schedule` writes them at the start of a run (`--init-at-target`); the theory experiments
(`birth.experiments.theory`) measure them and take gradient steps towards them.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import nn

from birth.models.weights import attn_linear, native

Memory = Literal["W_OV2", "W_KQ2", "W_KQ1"]  # the three memories, as the probes name them
MEMORIES: tuple[Memory, ...] = get_args(Memory)
# which nn.Linear of the simplified model stores each memory: (layer, name)
MEMORY_LINEAR: dict[Memory, tuple[int, str]] = {"W_OV2": (1, "o"), "W_KQ2": (1, "k"), "W_KQ1": (0, "k")}


def require_two_layer_simplified(model: nn.Module) -> None:
    if model.cfg.n_layers != 2:
        raise ValueError(f"the induction memories need a 2-layer model, got {model.cfg.n_layers} layers")
    if not torch.equal(attn_linear(model, 1, "q").weight.detach().cpu(), torch.eye(model.cfg.d_model)):
        raise ValueError("hand-built memories need the simplified model (W_Q = identity)")


@torch.no_grad()
def target_memories(
    model: nn.Module, triggers: torch.Tensor | None, *, first_position_fix: bool = False
) -> dict[str, torch.Tensor]:
    """The three target memories in row form, each [d, d], unscaled (one term per stored pair).

    `triggers`: the fixed trigger set stored in W_KQ²; None stores every token (random triggers).
    `first_position_fix`: add one correction term to W_KQ² for the first position (see below).
    """
    require_two_layer_simplified(model)
    W_E, W_U, P = model.W_E.detach(), model.W_U.T.detach(), model.W_pos.detach()  # rows
    tokens = torch.arange(W_E.shape[0], device=W_E.device) if triggers is None else triggers
    queries = W_E[tokens.to(W_E.device)]
    keys = queries @ model.OV[0, 0].AB  # W_OV¹ w_E(k), row form
    kq2 = queries.T @ keys  # score(query w_E(k), key W_OV¹ w_E(k)) large
    if first_position_fix:
        # Position 0 can only attend to itself, so when z_1 is a trigger q its layer-1 output is
        # W_OV¹ w_E(q) and the induction key matches there too, copying q instead of o. The key at
        # position 0 alone carries p_0 + W_OV¹ p_0: a term scoring −1 on it (net ≈ 0 after the +1
        # match) mutes that spurious match. The paper's memories have no such term. (−2 would
        # push it below zero but doubles the noise the term adds to every other key: worse.)
        sink = P[0] + P[0] @ model.OV[0, 0].AB
        kq2 = kq2 - 1.0 * queries.T @ (sink / sink.dot(sink)).expand_as(keys)
    return {
        "W_OV2": W_E.T @ W_U,  # Σ_k w_E(k)ᵀ w_U(k): row vector w_E(k) ↦ w_U(k)
        "W_KQ2": kq2,
        "W_KQ1": P[1:].T @ P[:-1],  # score(query p_{t+1}, key p_t) large
    }


@torch.no_grad()
def insert_memories(
    model: nn.Module,
    triggers: torch.Tensor | None,
    scale: float = 30.0,
    *,
    attention_scale: float | None = None,
    first_position_fix: bool = False,
) -> None:
    """Write the paper's hand-built memories into a simplified 2-layer model, in place.

    `scale` is the logit given to the stored output by W_OV²; `attention_scale` (default: `scale`)
    is the attention score of a stored (query, key) pair. Attention scores are divided by √d in the
    model, so the key-query memories are multiplied by √d to make the score ≈ attention_scale.
    W_V² is set to the identity so that W_OV² = W_O² is the memory itself (a random frozen W_V²
    would have to be inverted, which is ill-conditioned). `first_position_fix`: see
    `target_memories`; it only changes W_KQ², so the probes are unaffected.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    attention_scale = scale if attention_scale is None else attention_scale
    d = model.cfg.d_model
    memories = target_memories(model, triggers, first_position_fix=first_position_fix)
    attn_linear(model, 1, "v").weight.copy_(torch.eye(d))
    # nn.Linear stores weight [out, in] with y = x weightᵀ: row-form matrix M goes in as Mᵀ
    attn_linear(model, 1, "o").weight.copy_(scale * memories["W_OV2"].T)
    # row-form QK of a W_Q = I layer is k.weight itself (score = x_t @ k.weight @ x_sᵀ / √d)
    attn_linear(model, 1, "k").weight.copy_(attention_scale * math.sqrt(d) * memories["W_KQ2"])
    attn_linear(model, 0, "k").weight.copy_(attention_scale * math.sqrt(d) * memories["W_KQ1"])


def orthogonal_width(vocab_size: int, seq_len: int) -> int:
    """The smallest d for `orthogonal_embeddings`: 3N + 2T basis vectors (w_E, p_t, their W_OV¹
    images, w_U)."""
    return 3 * vocab_size + 2 * seq_len


def orthogonal_blocks(vocab_size: int, seq_len: int) -> dict[str, slice]:
    """The five disjoint blocks of basis vectors of `orthogonal_embeddings`: token embeddings w_E(k),
    positions p_t, their images W_OV¹ w_E(k) and W_OV¹ p_t, unembeddings w_U(k) (any dimension
    past 3N + 2T is unused)."""
    n, T = vocab_size, seq_len
    edges = [0, n, n + T, 2 * n + T, 2 * n + 2 * T, 3 * n + 2 * T]
    names = ("tokens", "positions", "tokens_remapped", "positions_remapped", "unembedding")
    return {name: slice(lo, hi) for name, lo, hi in zip(names, edges, edges[1:])}


@torch.no_grad()
def orthogonal_embeddings(model: nn.Module) -> None:
    """The theorem's infinite-width idealization at finite d: every embedding exactly orthogonal.

    Random N(0, 1/d) embeddings overlap by O(1/√d), and that cross-talk is as large as the signal
    of a single gradient step on W_K² or W_K¹ at d = 256. Here the token embeddings w_E(k), the
    positions p_t, their images under W_OV¹ and the unembeddings w_U(k) are standard basis vectors
    of five disjoint blocks (`orthogonal_blocks`; 3N + 2T <= d needed), W_OV¹ maps the first two
    blocks onto the next two (W_V¹ = I, W_O¹ a partial isometry) and W_V² = I. Frozen weights only;
    the trainable matrices are untouched.
    """
    require_two_layer_simplified(model)
    nm = native(model)
    n, T, d = nm.tok_embed.weight.shape[0], nm.pos.weight.shape[0], model.cfg.d_model
    if orthogonal_width(n, T) > d:
        raise ValueError(f"orthogonal embeddings need d >= 3N + 2T = {orthogonal_width(n, T)}, got d = {d}")
    blocks = orthogonal_blocks(n, T)
    eye = torch.eye(d, dtype=nm.tok_embed.weight.dtype, device=nm.tok_embed.weight.device)
    nm.tok_embed.weight.copy_(eye[blocks["tokens"]])
    nm.pos.weight.copy_(eye[blocks["positions"]])
    nm.head.weight.copy_(eye[blocks["unembedding"]])
    # row form OV¹ = W_Vᵀ W_Oᵀ: with W_V = I, o.weight = OV¹ᵀ; blocks 1, 2 -> blocks 3, 4
    ov1 = torch.zeros(d, d, dtype=eye.dtype, device=eye.device)
    ov1[: n + T, n + T : 2 * (n + T)] = torch.eye(n + T, dtype=eye.dtype, device=eye.device)
    attn_linear(model, 0, "v").weight.copy_(eye)
    attn_linear(model, 0, "o").weight.copy_(ov1.T)
    attn_linear(model, 1, "v").weight.copy_(eye)


@torch.no_grad()
def token_value(model: nn.Module) -> None:
    """The theorem's layer-2 value reads the token part only: W_V² = the projector on the token
    block of `orthogonal_embeddings` (frozen). With W_V² = I the value also carries layer 1's
    output, and the first step's W_O² then stores W_OV¹ w_E(k) → w_U(k) next to w_E(k) → w_U(k)."""
    nm = native(model)
    n, T = nm.tok_embed.weight.shape[0], nm.pos.weight.shape[0]
    tokens = orthogonal_blocks(n, T)["tokens"]
    value = attn_linear(model, 1, "v").weight
    value.zero_()
    value[tokens, tokens] = torch.eye(n, dtype=value.dtype, device=value.device)
