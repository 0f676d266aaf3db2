"""The attention-only transformer of *Birth of a Transformer*, built on TransformerLens 4.x.

`build_model` boots a TL-native `TransformerBridge` (no HF download) and re-initializes every weight
from a seeded generator:

    token embeddings w_E(k), unembeddings w_U(k), positional embeddings p_t  ~ N(0, I/d)
        (`unit_embeddings`: w_E, p_t ~ N(0, I), the scale of the reference code)
    W_Q = identity in both layers (simplified) or N(0, 1/d) (full)
    W_K, W_V, W_O                                                            ~ N(0, 1/d) entries
    all biases                                                               = 0

With N(0, 1/d) entries a d x d matrix roughly preserves norms, so W_OV¹ w_E(k) has norm ≈ 1 like
the embeddings, and attention scores x_tᵀ W_KQ x_s / √d start near zero (uniform attention).

`simplified` (paper, section 4.2) trains only W_K¹, W_K², W_O²: embeddings, unembedding, W_Q, W_V¹,
W_O¹ (so W_OV¹ is a fixed random map), W_V² and every bias are frozen. `full` trains everything.

Orientation: TransformerLens multiplies row vectors, x ↦ x @ W. The paper's column-vector memory
W_paper = Σ v_j u_iᵀ is W_TL = W_paperᵀ = Σ u_iᵀ v_j here: `model.OV[l, 0]` is W_V W_O (row form)
and `model.QK[l, 0]` is W_Q W_Kᵀ with score(query x_t, key x_s) = x_t @ QK @ x_sᵀ / √d.

`fast_logits` computes the same function as `model(tokens)` with fewer FLOPs (see its docstring);
`tests/test_model.py` checks the two agree on random weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("simplified", "full")
TRAINABLE_INITS = ("random", "zero")


@dataclass
class ModelConfig:
    n_layers: int = 2
    d_model: int = 256  # d = d_head, one head per layer
    n_ctx: int = 256  # number of positional embeddings (the task's T)
    vocab_size: int = 65
    variant: str = "simplified"
    trainable_init: str = "random"  # random N(0, 1/d) or zero for W_K¹, W_K², W_O² (simplified)
    # token and positional embeddings N(0, 1) per coordinate (norm √d), as nn.Embedding / randn
    # give in the reference code, instead of N(0, 1/d) (norm 1). Scores and gradients then scale
    # with d, which is what its SGD learning rate of 0.03 is tuned for.
    unit_embeddings: bool = False
    seed: int = 0

    def validate(self) -> None:
        if self.n_layers not in (1, 2):
            raise ValueError(f"n_layers must be 1 or 2, got {self.n_layers}")
        if self.d_model < 1 or self.n_ctx < 2 or self.vocab_size < 2:
            raise ValueError(
                f"d_model >= 1, n_ctx >= 2 and vocab_size >= 2 are required, got "
                f"d_model={self.d_model}, n_ctx={self.n_ctx}, vocab_size={self.vocab_size}"
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.trainable_init not in TRAINABLE_INITS:
            raise ValueError(
                f"trainable_init must be one of {TRAINABLE_INITS}, got {self.trainable_init!r}"
            )


def native(model: nn.Module) -> nn.Module:
    """The TL-native `NativeModel` that holds the bridge's parameters."""
    return model.original_model


def attn_linear(model: nn.Module, layer: int, name: str) -> nn.Linear:
    """blocks[layer].attn.{q,k,v,o} as the underlying nn.Linear (weight [out, in], y = x Wᵀ + b)."""
    return getattr(model.blocks[layer].attn, name).original_component


def build_model(config: ModelConfig, device: str | torch.device = "cpu") -> nn.Module:
    """A seeded TransformerBridge of the paper's attention-only transformer, frozen per variant."""
    config.validate()
    # Imported here: transformer_lens takes seconds to import, and CLI help should not pay for it.
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    d = config.d_model
    tl_cfg = TransformerBridgeConfig(
        d_model=d,
        d_head=d,
        n_heads=1,
        n_layers=config.n_layers,
        n_ctx=config.n_ctx,
        d_vocab=config.vocab_size,
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="standard",
        act_fn="relu",  # unused (attention-only) but required by the config
        seed=config.seed,  # boot_native forks the RNG: the caller's global RNG is untouched
    )
    model = TransformerBridge.boot_native(tl_cfg)
    initialize(model, config)
    device = torch.device(device)
    if device.type != "cpu":  # the bridge prints a line on every .to(); skip the no-op move
        model = model.to(device)
    return model


@torch.no_grad()
def initialize(model: nn.Module, config: ModelConfig) -> None:
    """Re-draw every weight from a generator seeded by `config.seed` and freeze per variant."""
    gen = torch.Generator().manual_seed(config.seed)
    d = config.d_model
    std = 1.0 / math.sqrt(d)
    nm = native(model)

    def normal_(p: torch.Tensor) -> None:
        p.copy_(torch.randn(p.shape, generator=gen) * std)

    normal_(nm.tok_embed.weight)
    normal_(nm.pos.weight)
    normal_(nm.head.weight)
    if config.unit_embeddings:
        nm.tok_embed.weight.mul_(math.sqrt(d))
        nm.pos.weight.mul_(math.sqrt(d))
    simplified = config.variant == "simplified"
    for layer in range(config.n_layers):
        for name in ("q", "k", "v", "o"):
            lin = attn_linear(model, layer, name)
            normal_(lin.weight)
            lin.bias.zero_()
        if simplified:
            attn_linear(model, layer, "q").weight.copy_(torch.eye(d))
    if simplified and config.trainable_init == "zero":
        for layer, name in trainable_matrices(config):
            attn_linear(model, layer, name).weight.zero_()

    for p in model.parameters():
        p.requires_grad_(not simplified)
    if simplified:
        for layer, name in trainable_matrices(config):
            attn_linear(model, layer, name).weight.requires_grad_(True)


def trainable_matrices(config: ModelConfig) -> list[tuple[int, str]]:
    """(layer, linear) pairs trained in the simplified variant: W_K¹, W_K², W_O² (1 layer: W_K, W_O)."""
    if config.n_layers == 1:
        return [(0, "k"), (0, "o")]
    return [(0, "k"), (1, "k"), (1, "o")]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


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
        and not lin.bias.requires_grad
        and not bool(lin.bias.any())
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
    - attention itself is fused scaled_dot_product_attention.
    """
    nm = native(model)
    cfg = nm.cfg
    B, T = tokens.shape
    if T > cfg.n_ctx:
        raise ValueError(f"sequence length {T} exceeds n_ctx={cfg.n_ctx}")
    E, P, U = nm.tok_embed.weight, nm.pos.weight, nm.head.weight  # [N, d], [n_ctx, d], [N, d]
    scale = 1.0 / nm.layers[0].attn.scale
    x = F.embedding(tokens, E) + P[:T]
    n_layers = len(nm.layers)
    for i, block in enumerate(nm.layers):
        attn = block.attn
        first, last = i == 0, i == n_layers - 1
        # value path folded with W_O (and W_U for the last layer): [d, d'] matrix and bias
        w_ov = attn.v.weight.t() @ attn.o.weight.t()  # [d, d]
        b_ov = attn.v.bias @ attn.o.weight.t() + attn.o.bias  # [d]
        if last:
            w_ov, b_ov = w_ov @ U.t(), b_ov @ U.t()  # [d, N], [N]
        if first:
            v = F.embedding(tokens, F.linear(E, w_ov.t(), b_ov)) + F.linear(P[:T], w_ov.t())
        else:
            v = x @ w_ov + b_ov
        if last and positions is not None:
            # first layer: keys from the tables; later: W_K moves to the selected queries' side
            k = _first_layer_table(attn.k, E, P, tokens) if first else None
            return _selected_query_logits(attn, x, k, v, U, positions, scale)
        k = _first_layer_table(attn.k, E, P, tokens) if first else attn.k(x)
        if first:
            q = x if _is_frozen_identity(attn.q) else _first_layer_table(attn.q, E, P, tokens)
        else:
            q = _query(attn.q, x)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), is_causal=True, scale=scale
        ).squeeze(1)
        if last:
            return F.linear(x, U) + out
        x = x + out
    raise AssertionError("unreachable: the model has at least one layer")


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
