"""`fast_logits`: the logits of `model(tokens)` with fewer FLOPs, for the architectures
`supports_fast_path` accepts (the simplified model, with or without a linear W_F; any model with one
head per layer, no LayerNorm, additive positions and no feed-forward layer but a final linear W_F).

Same parameters, same function: `tests/unit/test_model.py` holds it equal, values and gradients, to
the TransformerLens forward and to the plain-torch reference (`birth.models.reference`).

The first layer's input x_t = w_E(z_t) + p_t is a token row plus a position row, so any linear map
of it is a lookup in an [N, ·] token table plus a [T, ·] position table, computed once per call on
N + T rows instead of B·T: W_K¹'s keys, the layer-1 values W_OV¹ x, their images under the second
layer's W_O² W_V² W_U, and the first layer's scores themselves. What stays B·T·T work is attention:
the first layer's scores and softmax, and the weighted sums that the second layer reads; at long
sequences these are computed in causal row blocks that skip part of the pattern's zero upper half.
Two steps of the two-layer training forward have hand-written backwards (`_SecondLayerInput`,
`_QueryAttention`): they sum a tensor's gradients as they form them and write large tensors once,
where the composed ops would make more passes over memory (what bounds a CPU step here).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from birth.models.config import ModelConfig
from birth.models.weights import bias, mlp_linear, model_config, native


def fast_path_obstacle(config: ModelConfig) -> str | None:
    """Why `fast_logits` cannot run `config` (None: it can)."""
    if config.n_heads != 1:
        return f"{config.n_heads} heads per layer"
    if config.d_head != config.d_model:
        return f"a head width {config.d_head} other than d = {config.d_model}"
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


def _linear_tables(lin: nn.Linear, E: torch.Tensor, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lin(w_E(z) + p_t) = tok[z] + pos[t]: (tok, pos) = (lin(E), P Wᵀ), the bias in the token table."""
    return F.linear(E, lin.weight, lin.bias), F.linear(P, lin.weight)


def _tables(
    E: torch.Tensor, P: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E w + b, P w): the tables of x ↦ x w + b on token rows E and position rows P."""
    tok = E @ w
    return (tok if b is None else tok + b), P @ w


def _gathered(tokens: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """tok[z_t] + pos[t] for every (b, t): [B, T, ·]. The sum is taken in place, in the lookup's
    output (its backward does not read it): a second [B, T, ·] tensor would be one more pass over
    fresh memory."""
    return F.embedding(tokens, tok).add_(pos)


def _is_frozen_identity(lin: nn.Linear) -> bool:
    """W_Q of the simplified model: a frozen identity with zero bias, so q = x needs no matmul.

    Under `torch.func.vmap` (stacked runs, `birth.models.stacked`) only the parameters that differ
    between the runs or train are batched, and such a parameter is no frozen identity; its values
    cannot be read there (a data-dependent branch), so a batched weight or bias answers False."""
    w = lin.weight
    if any(_batched(p) for p in (w, lin.bias) if p is not None):
        return False
    return (
        not w.requires_grad
        and w.shape[0] == w.shape[1]
        and (lin.bias is None or (not lin.bias.requires_grad and not bool(lin.bias.any())))
        and torch.equal(w, torch.eye(w.shape[0], device=w.device, dtype=w.dtype))
    )


def _batched(tensor: torch.Tensor) -> bool:
    return torch._C._functorch.is_batchedtensor(tensor)


def _query(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x if _is_frozen_identity(lin) else lin(x)


def _value_map(attn: nn.Module, U: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The value path folded with W_O, as (w, b) with out = x w + b: A (x W_Vᵀ + b_V) W_Oᵀ + b_O =
    A (x w + b) since the rows of A sum to one; with `U` also projected to the logits (w Uᵀ, b Uᵀ)."""
    w = attn.v.weight.t() @ attn.o.weight.t()  # [d, d]
    b = bias(attn.v) @ attn.o.weight.t() + bias(attn.o)  # [d]
    return (w, b) if U is None else (w @ U.t(), b @ U.t())


def _causal_bias(T: int, like: torch.Tensor) -> torch.Tensor:
    """[T, T]: 0 where the key s <= the query t, -inf after it (added to the scores)."""
    return torch.full((T, T), float("-inf"), device=like.device, dtype=like.dtype).triu(1)


def _checked(model: nn.Module, tokens: torch.Tensor) -> nn.Module:
    obstacle = fast_path_obstacle(model_config(model))
    if obstacle is not None:
        raise ValueError(f"fast_logits does not support a model with {obstacle}: use model(tokens)")
    nm = native(model)
    if tokens.shape[1] > nm.cfg.n_ctx:
        raise ValueError(f"sequence length {tokens.shape[1]} exceeds n_ctx={nm.cfg.n_ctx}")
    return nm


def fast_logits(
    model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor | None = None, *, compiled: bool = False
) -> torch.Tensor:
    """Logits equal to `model(tokens)`: [B, T, N], or [M, N] = `model(tokens)[positions]` when a
    boolean mask `positions` [B, T] is given (the training loss only needs counter >= 2 targets).

    Same parameters, same function, fewer FLOPs than TransformerLens' eager forward:
    - the first layer's q, k, v are gathered from token/position tables (its input is an embedding);
    - a frozen identity W_Q (simplified model) is skipped;
    - each layer's o ∘ v is applied before attention (A (x W_V) W_O = A (x W_V W_O), rows of A
      sum to one, so biases fold in too);
    - the last layer's value path is projected to the N-dimensional logit space before attention
      (A (x W_OV) W_U = A (x W_OV W_U)), so its attention mixes N < d channels;
    - a linear W_F after the last attention layer folds into the unembedding:
      (h + h W_F) W_U = h (I + W_F) W_U;
    - with `positions`, the last layer attends from the selected queries only, with W_K applied
      to those queries instead of to every key, and sequences are processed in groups of similar
      query counts (`_by_groups`); with two layers the first layer's scores are table lookups, its
      pattern is formed in causal row blocks at long sequences (`_causal_blocks`), and the second
      layer reads the first either at every position or through its tables at the queries only,
      whichever costs less (`_two_layer_padded`);
    - attention over all positions is fused scaled_dot_product_attention.

    `compiled`: the two-layer selected-query forward (what training runs) through `torch.compile`
    (its first call compiles; the same function, fused kernels).

    Raises ValueError for an architecture `supports_fast_path` refuses (train those through
    `model(tokens)`).
    """
    nm = _checked(model, tokens)
    if positions is None:
        return _all_positions(model, tokens)[0]
    if len(nm.layers) == 2:
        last_layer = _two_layer_selected(model, tokens.shape[1], compiled)
    else:
        last_layer = lambda z, selected: _all_positions(model, z, selected=selected)[0]  # noqa: E731
    return _by_groups(last_layer, tokens, positions)


# the target of a padded query in `fast_cross_entropy`: F.cross_entropy ignores it
_PADDING_TARGET = -100


def fast_cross_entropy(
    model: nn.Module,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
    *,
    compiled: bool = False,
) -> torch.Tensor:
    """`F.cross_entropy(fast_logits(model, tokens, positions), targets[positions])`: the training
    loss, the mean over the positions the boolean mask `positions` [B, T] selects (at least one).

    With two layers each group of sequences (`_by_groups`) adds the loss of its padded queries,
    the padding ignored, so the logits are never put back in the caller's row order (a gather
    forward, a scatter of [M, N] backward); equal to the former up to the order of the sum."""
    nm = _checked(model, tokens)
    if len(nm.layers) != 2:
        return F.cross_entropy(fast_logits(model, tokens, positions, compiled=compiled), targets[positions])
    at_queries = _two_layer_queries(model, tokens.shape[1], compiled)
    total = 0.0
    for group in _sorted_groups(positions)[1]:
        order, valid = _query_order(positions[group])
        if not valid.any():
            continue
        picked = targets[group].gather(1, order).masked_fill_(~valid, _PADDING_TARGET)
        logits = at_queries(tokens[group], order)
        loss = F.cross_entropy(
            logits.flatten(0, 1), picked.flatten(), ignore_index=_PADDING_TARGET, reduction="sum"
        )
        total = total + loss
    return total / positions.sum()


def fast_logits_and_patterns(
    model: nn.Module, tokens: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(`fast_logits(model, tokens)`, the attention pattern [B, T, T] of each layer): what the
    attention probes read, without the hooked TransformerLens forward."""
    _checked(model, tokens)
    return _all_positions(model, tokens, keep_patterns=True)


def _all_positions(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    keep_patterns: bool = False,
    selected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every layer at every position, then the logits ([B, T, N]; with `selected`, the last layer
    at the selected queries only: [M, N]) and the patterns when `keep_patterns`."""
    nm = native(model)
    T = tokens.shape[1]
    E, P = nm.tok_embed.weight, nm.pos.weight[:T]  # [N, d], [T, d]
    U, logit_bias = _readout(model)  # [N, d], [N] or None
    scale = 1.0 / nm.layers[0].attn.scale
    x = _gathered(tokens, E, P)
    patterns: list[torch.Tensor] = []
    n_layers = len(nm.layers)
    for i, block in enumerate(nm.layers):
        attn = block.attn
        first, last = i == 0, i == n_layers - 1
        w_ov, b_ov = _value_map(attn, U if last else None)
        v = _gathered(tokens, *_tables(E, P, w_ov, b_ov)) if first else x @ w_ov + b_ov
        if last and selected is not None:
            # first layer: keys from the tables; later: W_K moves to the selected queries' side
            k = _gathered(tokens, *_linear_tables(attn.k, E, P)) if first else None
            logits = _padded_query_logits(attn, x, k, v, U, selected, scale)
            return (logits if logit_bias is None else logits + logit_bias), patterns
        k = _gathered(tokens, *_linear_tables(attn.k, E, P)) if first else attn.k(x)
        if first:
            q = x if _is_frozen_identity(attn.q) else _gathered(tokens, *_linear_tables(attn.q, E, P))
        else:
            q = _query(attn.q, x)
        if keep_patterns:
            pattern = torch.baddbmm(_causal_bias(T, q), q * scale, k.mT).softmax(dim=-1)
            patterns.append(pattern)
            out = pattern @ v
        else:
            out = F.scaled_dot_product_attention(
                q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), is_causal=True, scale=scale
            ).squeeze(1)
        if last:
            return F.linear(x, U, logit_bias) + out, patterns
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


# A group's [b, T, T] first-layer pattern at most this many floats, and at most 32 sequences a group:
# larger groups mean fewer ops, smaller ones less padding of the queries and passes that stay in
# cache; the balance was measured on 2 threads (docs/tuning.md, "Group size")
_GROUP_PATTERN_FLOATS = 2**21
_MAX_GROUP_SIZE = 32


def _group_size(T: int) -> int:
    """Sequences per group of `_by_groups` at sequence length T."""
    return max(1, min(_MAX_GROUP_SIZE, _GROUP_PATTERN_FLOATS // (T * T)))


def _by_groups(
    last_layer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tokens: torch.Tensor,
    positions: torch.Tensor,
    group_size: int | None = None,
    max_groups: int = 64,
) -> torch.Tensor:
    """`last_layer(tokens, positions)` ([M, N] rows in row-major (b, t) order) computed on groups of
    sequences, returned in the caller's row order.

    The last layer's queries are padded to the largest count of selected positions within a group:
    a few sequences can have far more than the rest (a trigger whose output is itself repeats to
    the end: every later target is a 2nd+ occurrence), so the batch is sorted by count and cut into
    groups of about `group_size` sequences (default `_group_size`; at most `max_groups`: each group
    costs a few dozen ops), each padded to its own largest count. A group's [b, T, T] attention is
    also small enough to stay in cache, and its backward scatters into nothing batch-sized.
    """
    by_count, groups = _sorted_groups(positions, group_size, max_groups)
    pieces = [last_layer(tokens[group], positions[group]) for group in groups]
    sorted_positions = positions[by_count]
    # the pieces hold the sorted rows' selected positions in row-major order: number them, then
    # read the numbers back in the caller's row order
    rank = torch.empty_like(sorted_positions, dtype=torch.long)
    rank[sorted_positions] = torch.arange(int(positions.sum()), device=tokens.device)
    index = torch.empty_like(rank)
    index[by_count] = rank
    return torch.cat(pieces)[index[positions]]


def _sorted_groups(
    positions: torch.Tensor, group_size: int | None = None, max_groups: int = 64
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(by_count, groups) of `_by_groups`: the sequences sorted by their count of selected
    `positions` [B, T], and that order cut into about `group_size` (default `_group_size`)
    consecutive ones, at most `max_groups` groups."""
    by_count = torch.argsort(positions.sum(dim=1), stable=True)
    group_size = group_size or _group_size(positions.shape[1])
    return by_count, by_count.chunk(max(1, min(max_groups, len(by_count) // group_size)))


def _query_order(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(order [B, Q], valid [B, Q]): each row's selected positions first, in increasing order,
    padded to the largest count Q with unselected ones (valid False)."""
    counts = positions.sum(dim=1)
    n_query = int(counts.max()) if len(positions) else 0
    # stable sort puts each row's selected positions first, in increasing order
    order = torch.argsort((~positions).to(torch.int8), dim=1, stable=True)[:, :n_query]
    valid = torch.arange(n_query, device=positions.device) < counts.unsqueeze(1)
    return order, valid


class _TwoLayerTables(NamedTuple):
    """What the two-layer selected-query forward reads, computed once per call (`_two_layer_tables`)."""

    E: torch.Tensor  # [N, d] token rows of x
    P: torch.Tensor  # [T, d] position rows of x
    score_tok_tok: torch.Tensor  # [N, N] first-layer scores qE kEᵀ (scaled)
    score_pos_tok: torch.Tensor  # [T, N] qP kEᵀ
    score_tok_pos: torch.Tensor  # [N, T] qE kPᵀ
    score_pos_pos: torch.Tensor  # [T, T] qP kPᵀ, -inf above the diagonal (causal)
    v_tok: torch.Tensor  # [N, d] first-layer values W_OV¹ x (+ bias)
    v_pos: torch.Tensor  # [T, d]
    query: tuple[torch.Tensor, torch.Tensor | None] | None  # second-layer W_Q, b_Q (None: identity)
    key: torch.Tensor  # [d, d] second-layer W_K
    out_x_tok: torch.Tensor  # [N, N] x W_OV² W_Uᵀ (+ bias): the second layer's values, logit space
    out_x_pos: torch.Tensor  # [T, N]
    out_v_tok: torch.Tensor  # [N, N] v W_OV² W_Uᵀ
    out_v_pos: torch.Tensor  # [T, N]
    out_map: torch.Tensor  # [d, N] W_OV² W_Uᵀ: out_x_tok = E out_map + out_bias
    out_bias: torch.Tensor  # [N]
    unembed: torch.Tensor  # [N, d] W_U (with a linear W_F folded in)
    logit_bias: torch.Tensor | None  # [N]
    scale: float


def _two_layer_tables(model: nn.Module, T: int) -> _TwoLayerTables:
    """The tables of `_two_layer_padded`. First-layer scores: q_t·k_s = qE[z_t]·kE[z_s] +
    qP[t]·kE[z_s] + qE[z_t]·kP[s] + qP[t]·kP[s], four lookups instead of a d-wide product."""
    nm = native(model)
    E, P = nm.tok_embed.weight, nm.pos.weight[:T]
    U, logit_bias = _readout(model)
    scale = 1.0 / nm.layers[0].attn.scale
    first, second = nm.layers[0].attn, nm.layers[1].attn
    q_tok, q_pos = (E, P) if _is_frozen_identity(first.q) else _linear_tables(first.q, E, P)
    k_tok, k_pos = _linear_tables(first.k, E, P)
    q_tok, q_pos = q_tok * scale, q_pos * scale
    v_tok, v_pos = _tables(E, P, *_value_map(first))
    w_out, b_out = _value_map(second, U)  # [d, N], [N]
    out_x_tok, out_x_pos = _tables(E, P, w_out, b_out)
    out_v_tok, out_v_pos = _tables(v_tok, v_pos, w_out)
    query = None if _is_frozen_identity(second.q) else (second.q.weight, second.q.bias)
    return _TwoLayerTables(
        E, P, q_tok @ k_tok.t(), q_pos @ k_tok.t(), q_tok @ k_pos.t(), q_pos @ k_pos.t() + _causal_bias(T, E),
        v_tok, v_pos, query, second.k.weight, out_x_tok, out_x_pos, out_v_tok, out_v_pos, w_out, b_out, U,
        logit_bias, scale,
    )  # fmt: skip


def _first_layer_scores(
    t: _TwoLayerTables,
    tokens: torch.Tensor,
    query_tokens: torch.Tensor,
    by_query_position: torch.Tensor,
    pos_pos: torch.Tensor,
) -> torch.Tensor:
    """The first layer's scores [B, R, S] (causal, scaled) of R queries with tokens `query_tokens`
    [B, R] over the first S keys: q_t·k_s = score_tok_tok[z_t, z_s] + score_pos_tok[t, z_s] +
    score_tok_pos[z_t, s] + score_pos_pos[t, s], four table lookups; `by_query_position` holds the
    queries' rows of score_pos_tok ([R, N] or [B, R, N]), `pos_pos` those of score_pos_pos, S columns.
    The sums are taken in place in the one [B, R, S] tensor the gather writes (the lookups'
    backwards do not read their outputs)."""
    R, S = query_tokens.shape[1], pos_pos.shape[-1]
    by_key_token = F.embedding(query_tokens, t.score_tok_tok).add_(by_query_position)  # [B, R, N]
    scores = by_key_token.gather(2, tokens[:, None, :S].expand(-1, R, S))
    return scores.add_(F.embedding(query_tokens, t.score_tok_pos[:, :S])).add_(pos_pos)


# The first layer's pattern in causal row blocks (`_causal_blocks`): at least `_BLOCK_ROWS` rows a
# block (smaller ones cost more ops than they save), at most `_MAX_BLOCKS` blocks (every block but
# the last reads a slice of the products' weights, whose gradient is a zeroed copy; measured in
# docs/tuning.md)
_BLOCK_ROWS = 64
_MAX_BLOCKS = 4


def _causal_blocks(T: int) -> list[tuple[int, int]]:
    """Row ranges [start, end) in which the first layer's pattern is computed: the rows of a block
    attend to the keys before `end` only, so the blocks skip the part of the [T, T] pattern above
    the diagonal blocks (a fraction (k - 1) / 2k of it with k blocks), in the scores, the softmax,
    the products with the pattern and their gradients."""
    k = max(1, min(_MAX_BLOCKS, T // _BLOCK_ROWS))
    bounds = [T * i // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _two_layer_padded(tokens: torch.Tensor, order: torch.Tensor, t: _TwoLayerTables) -> torch.Tensor:
    """Logits [B, Q, N] of a two-layer model at the queries `order` ([B, Q] positions, `_query_order`).

    A¹, the first layer's pattern, is formed in causal row blocks (`_causal_blocks`) from the score
    tables. With v_u = W_OV¹ x_u (+ bias) its values, the second layer's input is
    x2_s = x_s + Σ_u A¹[s, u] v_u, read in one of two ways, whichever `_reads_first_layer_at_queries`
    finds cheaper for this group's query count:
    - at every position (`_second_layer_everywhere`): x2 is formed once, [B, T, d], and the second
      layer attends from the Q queries over it;
    - at the queries only (`_second_layer_at_queries`): x2 is formed at the Q queries, and every
      other use of it goes through a map pushed into the tables (few queries, long sequences).
    """
    T, Q = tokens.shape[1], order.shape[1]
    patterns = [
        _first_layer_scores(
            t, tokens, tokens[:, start:end], t.score_pos_tok[start:end], t.score_pos_pos[start:end, :end]
        ).softmax(dim=-1)
        for start, end in _causal_blocks(T)
    ]  # A¹'s rows [start, end) over the keys before `end`: [B, end - start, end]
    if _reads_first_layer_at_queries(Q, T, *t.out_map.shape):
        return _second_layer_at_queries(tokens, order, t, patterns)
    x2 = _SecondLayerInput.apply(tokens, t.E, t.P, t.v_tok, t.v_pos, *patterns)[0]
    return _second_layer_everywhere(x2, order, t)


# The queries-only reading of the first layer is taken where forming x2 everywhere needs more than
# this many times its matmul FLOPs: per FLOP it costs more (more ops, more passes over [B, T, ·]
# tensors); measured in docs/tuning.md ("Reading the first layer")
_EVERYWHERE_FLOP_ALLOWANCE = 1.5


def _reads_first_layer_at_queries(Q: int, T: int, d: int, N: int) -> bool:
    """Whether `_two_layer_padded` reads the first layer at the Q queries only (`_second_layer_at_queries`)
    rather than forming x2 at every position (`_second_layer_everywhere`): by their forward matmul
    FLOPs per sequence (the products they share left out), the former weighted by
    `_EVERYWHERE_FLOP_ALLOWANCE`."""
    area = sum((end - start) * end for start, end in _causal_blocks(T))  # A¹'s computed entries
    everywhere = area * d + (Q + N) * T * d + Q * T * N  # A¹ v; [r, W]ᵀ x2ᵀ; pattern x2 W
    at_queries = 3 * Q * T * d + area * (Q + N) + Q * T * N  # A¹_q v, v rᵀ, r xᵀ; A¹ [v rᵀ, v W]; ...
    return everywhere > _EVERYWHERE_FLOP_ALLOWANCE * at_queries


def _second_layer_everywhere(x2: torch.Tensor, order: torch.Tensor, t: _TwoLayerTables) -> torch.Tensor:
    """Logits [B, Q, N] at the queries `order` from the second layer's input x2 [B, T, d] at every
    position (`_SecondLayerInput`): W_K² moves to the queries' side (r_q = W_K²ᵀ q_q; the key
    bias adds the same r·b_K to every key, which softmax ignores) and the value path to logit space
    (W = W_OV² W_Uᵀ), so the attention is `_QueryAttention`'s."""
    if t.query is None:
        query_map, query_bias = t.key * t.scale, None
    else:
        weight, bias_q = t.query  # q = x2 W_Qᵀ + b_Q, r = q W_K (scaled)
        query_map = (weight.t() * t.scale) @ t.key
        query_bias = None if bias_q is None else (bias_q * t.scale) @ t.key
    attended, x2_query = _QueryAttention.apply(x2, order, query_map, query_bias, t.out_map)[:2]
    # the rows of the pattern sum to one: the value bias passes through unchanged
    return F.linear(x2_query, t.unembed, t.logit_bias).add_(attended).add_(t.out_bias)


def _second_layer_at_queries(
    tokens: torch.Tensor, order: torch.Tensor, t: _TwoLayerTables, patterns: list[torch.Tensor]
) -> torch.Tensor:
    """Logits [B, Q, N] at the queries `order`, the second layer read through the first's tables,
    A¹ given in causal row blocks (`patterns`).

    x2 is formed at the Q queries only; every other use of x2_s goes through a map pushed into
    the tables:
    - scores: x2_q·(W_K² x2_s) = r_q·x_s + Σ_u A¹[s, u] (r_q·v_u) with r_q = W_K²ᵀ q2_q (the key
      bias adds q·b_K to every key alike, which softmax ignores): B·Q·T·(2d + T) FLOPs instead of
      B·T·T·d for the first layer's output;
    - values in logit space: x2_s W = x_s W + Σ_u A¹[s, u] (v_u W) with W = W_OV² W_Uᵀ, both
      [T, N] lookups in [N, N] and [T, N] tables.
    Each block of A¹ is read by one product with the weights of both sums side by side, so its
    gradient is one product per block with no second gradient to add. A¹'s query rows are gathered
    from it when it is one block (short sequences, where the op count matters most) and recomputed
    from the tables otherwise.
    """
    T, Q = tokens.shape[1], order.shape[1]
    if len(patterns) == 1:
        pattern_q = patterns[0].gather(1, order.unsqueeze(-1).expand(-1, -1, T))  # A¹'s query rows
    else:
        query_scores = _first_layer_scores(
            t,
            tokens,
            tokens.gather(1, order),
            F.embedding(order, t.score_pos_tok),
            F.embedding(order, t.score_pos_pos),
        )
        pattern_q = query_scores.softmax(dim=-1)
    x, v = _gathered(tokens, t.E, t.P), _gathered(tokens, t.v_tok, t.v_pos)  # [B, T, d]
    x2_query = torch.baddbmm(x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1])), pattern_q, v)
    query = x2_query if t.query is None else F.linear(x2_query, *t.query)
    r = (query * t.scale) @ t.key  # [B, Q, d]
    out_v = _gathered(tokens, t.out_v_tok, t.out_v_pos)  # v_u W: [B, T, N]
    weights = torch.cat([torch.bmm(v, r.mT), out_v], dim=-1)  # r_q·v_u and v_u W: [B, T, Q + N]
    # Σ_u A¹[s, u] (·) per block: [B, rows, Q + N]
    mixed = [torch.bmm(p, weights if p.shape[-1] == T else weights[:, : p.shape[-1]]) for p in patterns]
    mixed_scores, mixed_values = (mixed[0] if len(mixed) == 1 else torch.cat(mixed, dim=1)).split(
        [Q, out_v.shape[-1]], dim=-1
    )
    scores2 = torch.baddbmm(mixed_scores.mT, r, x.mT)  # [B, Q, T]
    future = torch.arange(T, device=tokens.device) > order.unsqueeze(-1)
    pattern2 = scores2.masked_fill_(future, float("-inf")).softmax(dim=-1)
    values = mixed_values + _gathered(tokens, t.out_x_tok, t.out_x_pos)  # x2_s W + b: [B, T, N]
    return torch.baddbmm(F.linear(x2_query, t.unembed, t.logit_bias), pattern2, values)


def _lookup_sum(tokens: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """tok[z_t] + pos[t] for every (b, t), [B, T, ·], in one pass over the output
    (`F.embedding_bag` over the stacked tables); for use without autograd. Under vmap, which has
    no rule for `embedding_bag`, a lookup and a sum (`_gathered`)."""
    if any(_batched(a) for a in (tokens, tok, pos)):
        return _gathered(tokens, tok, pos)
    N, T = tok.shape[0], tokens.shape[1]
    rows = torch.stack([tokens, torch.arange(N, N + T, device=tokens.device).expand_as(tokens)], dim=-1)
    summed = F.embedding_bag(rows.view(-1, 2), torch.cat([tok, pos]), mode="sum")
    return summed.view(*tokens.shape, -1)


def _lookup_sum_grads(
    tokens: torch.Tensor, d_out: torch.Tensor, n_tok: int, tok_needed: bool, pos_needed: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of the tables (tok [n_tok, ·], pos [T, ·]) of `_lookup_sum(tokens, tok, pos)`
    given its output's gradient `d_out`; None where not needed."""
    d_tok = d_pos = None
    if tok_needed:
        d_tok = d_out.new_zeros(n_tok, d_out.shape[-1]).index_add_(0, tokens.flatten(), d_out.flatten(0, 1))
    if pos_needed:
        d_pos = d_out.sum(dim=0)
    return d_tok, d_pos


class _SecondLayerInput(torch.autograd.Function):
    """`apply(tokens, E, P, v_tok, v_pos, *patterns)` = (x2, v): the second layer's input
    x2 = x + A¹ v at every position, with x = E[z] + P and v = v_tok[z] + v_pos the lookups and A¹
    given as its causal row blocks `patterns` (`_causal_blocks`); v is returned for the backward
    only (not differentiable).

    Its forward writes x2 once and adds each block's A¹ v to its rows in place, where the
    composed ops would copy x into every block's product and concatenate the blocks: three fewer
    passes over a [B, T, d] tensor. Its backward is the composed one's."""

    generate_vmap_rule = True

    @staticmethod
    def forward(tokens, E, P, v_tok, v_pos, *patterns):
        x2 = _lookup_sum(tokens, E, P)
        v = _lookup_sum(tokens, v_tok, v_pos)
        for (start, end), pattern in zip(_causal_blocks(tokens.shape[1]), patterns):
            # a fresh product added in place: an in-place product into the rows is slower
            x2[:, start:end].add_(torch.bmm(pattern, v[:, :end]))
        return x2, v

    @staticmethod
    def setup_context(ctx, inputs, output):
        tokens, E, _, _, _, *patterns = inputs
        ctx.save_for_backward(tokens, output[1], *patterns)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.n_tokens = E.shape[0]

    @staticmethod
    def backward(ctx, d_x2, _d_v):
        tokens, v, *patterns = ctx.saved_tensors
        if d_x2 is None:
            return (None,) * (5 + len(patterns))
        blocks = _causal_blocks(tokens.shape[1])
        d_patterns = [torch.bmm(d_x2[:, start:end], v[:, :end].mT) for start, end in blocks]
        needs = ctx.needs_input_grad
        d_E, d_P = _lookup_sum_grads(tokens, d_x2, ctx.n_tokens, needs[1], needs[2])
        d_v_tok = d_v_pos = None
        if needs[3] or needs[4]:
            d_v = torch.zeros_like(v)
            for (start, end), pattern in zip(blocks, patterns):
                d_v[:, :end] += torch.bmm(pattern.mT, d_x2[:, start:end])
            d_v_tok, d_v_pos = _lookup_sum_grads(tokens, d_v, ctx.n_tokens, needs[3], needs[4])
        return (None, d_E, d_P, d_v_tok, d_v_pos, *d_patterns)


class _QueryAttention(torch.autograd.Function):
    """`apply(x2, order, query_map, query_bias, value_map)` = (out, x2_q, ...): the second layer's
    attention from the queries `order` ([B, Q] positions) over the keys up to each, its values
    mapped by `value_map` W ([d, N]):

        x2_q = x2[order],  r = x2_q M + c,  A² = softmax(r x2ᵀ, causal),  out = A² x2 W

    with M = `query_map` [d, d] and c = `query_bias` [d] or None. r and Wᵀ take one product with
    x2 side by side ([r; Wᵀ] x2ᵀ: the scores and the values (x2 W)ᵀ at once), and the backward sums
    every gradient of x2 (the keys', the values', the query rows') into one tensor as it forms it,
    where autograd would add three. The further outputs are for the backward only."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x2, order, query_map, query_bias, value_map):
        x2_query = x2.gather(1, order.unsqueeze(-1).expand(-1, -1, x2.shape[-1]))
        r = x2_query @ query_map
        if query_bias is not None:
            r = r + query_bias
        Q = r.shape[1]
        left = torch.cat([r, value_map.mT.expand(r.shape[0], -1, -1)], dim=1)  # [B, Q + N, d]
        products = torch.bmm(left, x2.mT)  # scores [B, Q, T] over (x2 W)ᵀ [B, N, T]
        future = torch.arange(x2.shape[1], device=x2.device) > order.unsqueeze(-1)
        pattern = products[:, :Q].masked_fill_(future, float("-inf")).softmax(dim=-1)
        return torch.bmm(pattern, products[:, Q:].mT), x2_query, left, pattern, products

    @staticmethod
    def setup_context(ctx, inputs, output):
        x2, order, query_map, query_bias, _ = inputs
        _, x2_query, left, pattern, products = output
        ctx.save_for_backward(x2, order, query_map, x2_query, left, pattern, products)
        ctx.has_bias = query_bias is not None
        ctx.mark_non_differentiable(left, pattern, products)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, d_out, d_query_rows, *_):
        x2, order, query_map, x2_query, left, pattern, products = ctx.saved_tensors
        Q = pattern.shape[1]
        d_rows = d_query_rows
        d_x2 = d_map = d_bias = d_value_map = None
        if d_out is not None:
            d_pattern = torch.bmm(d_out, products[:, Q:])
            d_scores = d_pattern.sub_((d_pattern * pattern).sum(dim=-1, keepdim=True)).mul_(pattern)
            d_values_t = torch.bmm(d_out.mT, pattern)  # [B, N, T]
            d_x2 = torch.bmm(d_scores.mT, left[:, :Q])
            # in place (one pass fewer) except under vmap, which has no rule for baddbmm_
            d_x2 = (torch.baddbmm if _batched(d_x2) else torch.Tensor.baddbmm_)(
                d_x2, d_values_t.mT, left[:, Q:]
            )
            d_r = torch.bmm(d_scores, x2)
            d_value_map = torch.bmm(d_values_t, x2).sum(dim=0).t()
            d_map = x2_query.flatten(0, 1).t() @ d_r.flatten(0, 1)
            d_bias = d_r.sum(dim=(0, 1)) if ctx.has_bias else None
            from_r = d_r @ query_map.t()
            d_rows = from_r if d_rows is None else from_r.add_(d_rows)
        if d_rows is not None:
            if d_x2 is None:
                d_x2 = torch.zeros_like(x2)
            d_x2.scatter_add_(1, order.unsqueeze(-1).expand(-1, -1, x2.shape[-1]), d_rows)
        return d_x2, None, d_map, d_bias, d_value_map


def _two_layer_queries(
    model: nn.Module, T: int, compiled: bool = False
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`(tokens, order) ↦` the logits [B, Q, N] at the queries `order` (`_two_layer_padded`), its
    tables computed once for every group of sequences; `compiled`: through `torch.compile`."""
    tables = _two_layer_tables(model, T)
    padded = _compiled_two_layer_padded() if compiled else _two_layer_padded
    return lambda tokens, order: padded(tokens, order, tables)


def _two_layer_selected(
    model: nn.Module, T: int, compiled: bool = False
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`(tokens, positions) ↦ model(tokens)[positions]` for two layers (`_two_layer_queries`)."""
    at_queries = _two_layer_queries(model, T, compiled)
    unembed = native(model).head.weight  # [N, d]

    def group(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        order, valid = _query_order(positions)
        if not valid.any():
            return unembed.new_zeros(0, unembed.shape[0])
        return at_queries(tokens, order)[valid]

    return group


@functools.cache
def _compiled_two_layer_padded() -> Callable[..., torch.Tensor]:
    # dynamic: the number of queries Q changes from group to group and step to step
    compiled = torch.compile(_two_layer_padded, dynamic=True)

    def padded(tokens: torch.Tensor, order: torch.Tensor, tables: _TwoLayerTables) -> torch.Tensor:
        # the sequence length stays static (one compile per length): inductor's CPU code generation
        # fails on the causal blocks' bounds as functions of a symbolic length
        torch._dynamo.mark_static(tokens, 1)
        return compiled(tokens, order, tables)

    return padded


def _padded_query_logits(
    attn: nn.Module,
    x: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor,
    U: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Last layer from the selected queries only (`_query_order`), rows in row-major (b, t) order.

    `k` None: the keys are not projected; q·(x_s W_Kᵀ + b_K) = (q W_K)·x_s + q·b_K, and q·b_K is the
    same for every key s, which softmax ignores, so W_K is applied to the few selected queries
    instead of to all B·T positions.
    """
    B, T, d = x.shape
    order, valid = _query_order(positions)
    xq = x.gather(1, order.unsqueeze(-1).expand(B, -1, d))  # [B, Q, d]
    future = torch.arange(T, device=x.device) > order.unsqueeze(-1)  # [B, Q, T]
    # explicit attention: a boolean mask sends SDPA to its unfused path anyway, with extra copies
    query = _query(attn.q, xq) * scale  # scale the smaller side
    if k is None:
        scores = torch.bmm(query @ attn.k.weight, x.transpose(1, 2))
    else:
        scores = torch.bmm(query, k.transpose(1, 2))
    out = torch.bmm(scores.masked_fill_(future, float("-inf")).softmax(dim=-1), v)
    return (F.linear(xq, U) + out)[valid]  # row-major (b, t) order, as logits[positions]
