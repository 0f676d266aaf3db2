"""`fast_logits`: the logits of `model(tokens)` with fewer FLOPs, for the architectures
`supports_fast_path` accepts (the simplified model, with or without a linear W_F; any model with one
head per layer, no LayerNorm, additive positions and no feed-forward layer but a final linear W_F).

Same parameters, same function: `tests/unit/test_model.py` holds it equal, values and gradients, to
the TransformerLens forward and to the plain-torch reference (`birth.models.reference`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from birth.models.config import ModelConfig
from birth.models.weights import bias, mlp_linear, model_config, native


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
        b_ov = bias(attn.v) @ attn.o.weight.t() + bias(attn.o)  # [d]
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
    c = F.linear(bias(fc_in), fc_out.weight, fc_out.bias)  # [d]
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
    `groups` groups, each padded to its own largest count.
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
