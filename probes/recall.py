"""Memory-recall probes (Bietti et al., 2023, section 4.2), computed in weight space, per head.

For a target memory W* = Σ_{(i,j)} v_j u_iᵀ, the probe R(Ŵ, W*) is the fraction of pairs (i, j)
whose output j is the argmax over candidates j' of v_j'ᵀ Ŵ u_i. Here the weights are read in
TransformerLens' row-vector form (x ↦ x @ W), so the score of pair (i, j') is u_i @ Ŵ @ v_j'ᵀ,
with Ŵ one head's `model.OV[l, h]` or `model.QK[l, h]` (a FactoredMatrix).

The vectors u_i, v_j are what the head reads and writes (docs/model.md has the table):
- a vector a layer reads (a token embedding w_E(k), a position p_t) goes through that layer's
  pre-attention LayerNorm, as the model applies it to a residual stream holding that vector alone;
- a vector a head writes into the residual stream and a later layer reads (the previous-token
  head's output in the induction head's keys, a head's output in the logits) goes through the
  linear part of the reading LayerNorm (centering and gain γ; the division by the residual's norm
  is common to all candidates and its bias β is the same for every input, so they are left out).
Without normalization both are the identity and the probes read the raw embeddings.

Every model but the simplified one is read per layer (`layer_probes`): heads weighted by the
attention they give to a memory, the token read after the first layer's MLP
(`effective_embeddings`), the last MLP's response added to the copy, and with random triggers
W_KQ² counted over the tokens as often as they are repeated triggers (`in_context_trigger_shares`,
the only input from data: which tokens the task makes triggers, never an activation).

The W_F probe is a divergence, not a recall (lower is better): KL(π_b(·|k) ‖ softmax(logits of
W_F(w_E(k)))) averaged over the non-trigger tokens k (the reference's `test_ff1`).

Probes never build an autograd graph (`torch.no_grad`), so they can run inside a training loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import FactoredMatrix

from birth.models.transformer import apply_mlp, layer_norm, model_config

Matrix = torch.Tensor | FactoredMatrix

PROBES = ("W_OV2", "W_KQ2", "W_KQ1")
FF_PROBE = "W_F_kl"


def apply_rows(W: Matrix, inputs: torch.Tensor) -> torch.Tensor:
    """[n, d] the rows inputs @ W (a FactoredMatrix kept factored: never a d x d product formed)."""
    return (inputs @ W.A) @ W.B if isinstance(W, FactoredMatrix) else inputs @ W


@torch.no_grad()
def recall_scores(W: Matrix, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """[n_in, n_out] scores u_i @ W @ v_jᵀ (inputs u_i as rows, candidate outputs v_j as rows)."""
    return apply_rows(W, inputs) @ outputs.T


@torch.no_grad()
def memory_recall(W: Matrix, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """R(W, W*): fraction of inputs i whose best-scoring output is targets[i]."""
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
    scores = recall_scores(W, inputs, outputs)
    return (scores.argmax(dim=-1) == targets.to(scores.device)).float().mean().item()


def _read(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x as a layer reads it when the residual holds x alone: its LayerNorm applied (or nothing)."""
    return norm(x)


def _read_written(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The linear part of a LayerNorm reading a vector some head wrote: (x - mean(x)) ⊙ γ."""
    if isinstance(norm, nn.Identity):
        return x
    if not isinstance(norm, nn.LayerNorm):
        raise TypeError(f"the probes read nn.LayerNorm or nn.Identity, got {type(norm).__name__}")
    x = x - x.mean(dim=-1, keepdim=True)
    return x * norm.weight if norm.weight is not None else x


def _n_heads(model: nn.Module) -> int:
    return model_config(model).n_heads


def _readout(model: nn.Module) -> torch.Tensor:
    """[N, d] rows r_j with logit_j(o) = o · r_j for a vector o written into the last residual:
    ((o - mean(o)) ⊙ γ) · w_U(j) = o · r_j with r_j = γ ⊙ w_U(j) centered (centering is symmetric)."""
    norm, W_U = layer_norm(model, None), model.W_U.T
    if isinstance(norm, nn.Identity):
        return W_U
    scaled = W_U * norm.weight
    return scaled - scaled.mean(dim=-1, keepdim=True)


def _positions(model: nn.Module) -> torch.Tensor:
    if model_config(model).positions == "rotary":
        raise ValueError("a rotary model has no positional embeddings: the W_KQ1 probe needs them")
    return model.W_pos


@torch.no_grad()
def ov2_recalls(model: nn.Module) -> dict[tuple[int, int], float]:
    """W_OV² of each head (l, h) of the layers after the first (a 1-layer model: its only layer)
    stores w_E(k) → w_U(k): argmax_j of w_U(j) · OV[l, h] w_E(k) == k over all N tokens."""
    n_layers = model_config(model).n_layers
    layers = range(1, n_layers) if n_layers > 1 else range(1)
    readout = _readout(model)
    targets = torch.arange(model.W_E.shape[0], device=model.W_E.device)
    out = {}
    for layer in layers:
        inputs = _read(layer_norm(model, layer), model.W_E)
        for head in range(_n_heads(model)):
            out[layer, head] = memory_recall(model.OV[layer, head], inputs, readout, targets)
    return out


@torch.no_grad()
def kq2_recalls(model: nn.Module, triggers: torch.Tensor | None = None) -> dict[tuple[int, int], float]:
    """W_KQ² of each head (l, h), l >= 1, stores w_E(k) → W_OV¹ w_E(k): the query w_E(k) picks the
    key W_OV¹ w_E(k') with k' = k, W_OV¹ the layer-0 head that gives the highest recall (the
    previous-token head). `triggers`: the fixed trigger set; None (random triggers) probes the
    whole vocabulary."""
    config = model_config(model)
    if config.n_layers < 2:
        raise ValueError("W_KQ² needs a 2-layer model")
    W_E = model.W_E
    tokens = torch.arange(W_E.shape[0], device=W_E.device) if triggers is None else triggers.to(W_E.device)
    first_in = _read(layer_norm(model, 0), W_E[tokens])
    ov1 = [model.OV[0, h1] for h1 in range(config.n_heads)]
    written = [apply_rows(W, first_in) for W in ov1]  # [K, d] per layer-0 head: W_OV¹ w_E(k)
    targets = torch.arange(len(tokens), device=W_E.device)
    out = {}
    for layer in range(1, config.n_layers):
        norm = layer_norm(model, layer)
        queries = _read(norm, W_E[tokens])
        for head in range(config.n_heads):
            out[layer, head] = max(
                memory_recall(model.QK[layer, head], queries, _read_written(norm, keys), targets)
                for keys in written
            )
    return out


@torch.no_grad()
def kq1_recalls(model: nn.Module) -> dict[tuple[int, int], float]:
    """W_KQ¹ of each layer-0 head stores p_{t+1} → p_t: the query p_{t+1} picks key p_s, s over all
    positions, s = t."""
    positions = _read(layer_norm(model, 0), _positions(model))
    queries = positions[1:]
    targets = torch.arange(positions.shape[0] - 1, device=positions.device)
    return {
        (0, h): memory_recall(model.QK[0, h], queries, positions, targets) for h in range(_n_heads(model))
    }


def _best(values: dict[tuple[int, int], float]) -> float:
    return max(values.values())


@torch.no_grad()
def recall_ov2(model: nn.Module) -> float:
    """The best head's W_OV² recall (`ov2_recalls`)."""
    return _best(ov2_recalls(model))


@torch.no_grad()
def recall_kq2(model: nn.Module, triggers: torch.Tensor | None = None) -> float:
    """The best head's W_KQ² recall (`kq2_recalls`)."""
    return _best(kq2_recalls(model, triggers))


@torch.no_grad()
def recall_kq1(model: nn.Module) -> float:
    """The best layer-0 head's W_KQ¹ recall (`kq1_recalls`)."""
    return _best(kq1_recalls(model))


@torch.no_grad()
def ff_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """[K, N] logits of the last layer's feed-forward output alone, W_U LN_f(W_F(LN(w_E(k)))) (the
    model's MLP input and final LayerNorm, identities without normalization; no residual path)."""
    config = model_config(model)
    if not config.has_final_ffn:
        raise ValueError("the model has no feed-forward layer after its last attention layer")
    last = config.n_layers - 1
    x = _read(layer_norm(model, last, "ln2"), model.W_E[tokens])
    return layer_norm(model, None)(apply_mlp(model, last, x)) @ model.W_U


@torch.no_grad()
def ff_bigram_kl(model: nn.Module, bigram: torch.Tensor, triggers: torch.Tensor | None = None) -> float:
    """The W_F probe: mean over non-trigger tokens k of KL(π_b(·|k) ‖ softmax(`ff_logits`(k))).

    `bigram`: [N, N] rows π_b(·|k); `triggers`: the fixed trigger set (excluded: their next token
    is the in-context output, not the bigram), None keeps every token. Zero for a W_F storing
    log π_b; log N - H(π_b(·|k)) on average for a zero one (uniform prediction).
    """
    N = model.W_E.shape[0]
    if bigram.shape != (N, N):
        raise ValueError(f"bigram table must be [{N}, {N}], got {tuple(bigram.shape)}")
    keep = torch.ones(N, dtype=torch.bool)
    if triggers is not None:
        keep[triggers.cpu()] = False
    tokens = torch.arange(N)[keep].to(model.W_E.device)
    log_q = F.log_softmax(ff_logits(model, tokens).double(), dim=-1)
    p = bigram.to(device=log_q.device, dtype=torch.float64)[tokens]
    return F.kl_div(log_q, p, reduction="batchmean").item()


# ---------------------------------------------------------------------------------------------
# layer readings of the full model (multi-head, LayerNorm): docs/model.md, "Probes of the full model"
# ---------------------------------------------------------------------------------------------


def _score_scale(model: nn.Module) -> float:
    """The factor of the attention scores before the softmax (1/√d_head, or 1 unscaled)."""
    config = model_config(model)
    return config.d_head**-0.5 if config.attn_scale == "sqrt_d_head" else 1.0


def _token_part(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What of LN(x) depends on x: (x - mean(x)) ⊙ γ, up to the residual's scale (common to every
    input of one argmax); the bias β, the same for every input, carries no memory."""
    return _read_written(norm, x)


@torch.no_grad()
def mean_position_inputs(model: nn.Module) -> torch.Tensor:
    """[T, d] x̄_t = the mean over the N tokens k of LN1_0(w_E(k) + p_t): what layer 0 reads at
    position t, averaged over the token there. A score is bilinear in its query and key, so for
    independent uniform tokens at the two positions its expectation is x̄_t' @ QK @ x̄_tᵀ exactly."""
    norm = layer_norm(model, 0)
    residuals = model.W_E.unsqueeze(0) + _positions(model).unsqueeze(1)  # [T, N, d]
    return _read(norm, residuals).mean(dim=1)


@torch.no_grad()
def previous_token_scores(model: nn.Module) -> torch.Tensor:
    """[H, T-1, T] scores of query t+1 on key s of each layer-0 head from the position-averaged
    inputs (`mean_position_inputs`), -inf where s > t+1 (the causal mask: a key the query never
    sees cannot win)."""
    inputs = mean_position_inputs(model)
    T = inputs.shape[0]
    visible = torch.ones(T - 1, T, dtype=torch.bool, device=inputs.device).tril(diagonal=1)
    scores = torch.stack([recall_scores(model.QK[0, h], inputs[1:], inputs) for h in range(_n_heads(model))])
    return scores.masked_fill(~visible, float("-inf"))


@torch.no_grad()
def previous_token_weights(model: nn.Module) -> torch.Tensor:
    """[H] the attention each layer-0 head puts from t+1 on t, averaged over t: the softmax of
    `previous_token_scores` (scaled as the model scales them) at the key s = t."""
    scores = previous_token_scores(model) * _score_scale(model)
    t = torch.arange(scores.shape[1], device=scores.device)
    return scores.softmax(dim=-1)[:, t, t].mean(dim=-1)


@torch.no_grad()
def kq1_by_position(model: nn.Module) -> torch.Tensor:
    """[T-1] bool: whether some layer-0 head's causal argmax from query t+1 is the key t
    (`previous_token_scores`), for t = 0..T-2: where the previous-token memory is stored."""
    scores = previous_token_scores(model)
    t = torch.arange(scores.shape[1], device=scores.device)
    return (scores.argmax(dim=-1) == t).any(dim=0).cpu()


@torch.no_grad()
def kq1_layer_recall(model: nn.Module) -> float:
    """W_KQ¹ of layer 0: the fraction of positions t at which some head's causal argmax from query
    t+1 is the key t (`kq1_by_position`). Heads may share the positions out."""
    return kq1_by_position(model).float().mean().item()


@torch.no_grad()
def previous_token_keys(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """[K, d] what layer 0 writes at the position after token k, as the last layer reads it: the
    layer-0 heads' W_OV¹ LN1_0(w_E(k)), each weighted by its attention on the previous token
    (`previous_token_weights`; a rotary model, without positions to weigh by: the head that gives
    the best W_KQ² recall is taken by `kq2_layer_recalls`), through the last layer's LN1 (its
    token part, `_token_part`)."""
    inputs = _read(layer_norm(model, 0), model.W_E[tokens])
    weights = previous_token_weights(model)
    written = sum(w * apply_rows(model.OV[0, h], inputs) for h, w in enumerate(weights.tolist()))
    return _token_part(layer_norm(model, model_config(model).n_layers - 1), written)


@torch.no_grad()
def effective_embeddings(model: nn.Module, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """[K, d] token k as the last layer reads it at its own position: w_E(k) plus what each earlier
    layer's feed-forward layer adds, x + MLP_l(LN2_l(x)), each LayerNorm applied to the vector
    alone as `_read` does (no data scale); the earlier attention layers, which bring other positions
    in, are left out. Without a feed-forward layer before the last layer: w_E(k). `tokens` None:
    all N."""
    config = model_config(model)
    x = model.W_E if tokens is None else model.W_E[tokens]
    for layer in range(config.n_layers - 1):
        if config.has_mlp(layer):
            x = x + apply_mlp(model, layer, _read(layer_norm(model, layer, "ln2"), x))
    return x


def _through_last_mlp(model: nn.Module, written: torch.Tensor) -> torch.Tensor:
    """A vector the last attention layer writes, plus what its feed-forward layer (if any) adds
    reading it alone: o + MLP(LN2(o))."""
    config = model_config(model)
    last = config.n_layers - 1
    if not config.has_mlp(last):
        return written
    return written + apply_mlp(model, last, _read(layer_norm(model, last, "ln2"), written))


def _stored_tokens(model: nn.Module, triggers: torch.Tensor | None) -> torch.Tensor:
    W_E = model.W_E
    return torch.arange(W_E.shape[0], device=W_E.device) if triggers is None else triggers.to(W_E.device)


@torch.no_grad()
def in_context_trigger_shares(inputs: torch.Tensor, counter: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """[n_tokens] the share of a batch's in-context targets (counter >= 2) whose trigger is token k:
    how much each pair of the W_KQ² memory is used (frequent tokens are triggers more often and
    repeat more within a sequence). Uniform if the batch has no in-context target."""
    counts = torch.bincount(inputs[counter >= 2].flatten().cpu(), minlength=n_tokens).double()
    if counts.sum() == 0:
        return torch.full((n_tokens,), 1.0 / n_tokens, dtype=torch.float64)
    return counts / counts.sum()


def _mean(hits: torch.Tensor, weights: torch.Tensor | None) -> float:
    """The fraction of `hits` (bool [n]) that hold, each counted with its weight when given."""
    if weights is None:
        return hits.float().mean().item()
    return (hits.double().cpu() * weights.double().cpu()).sum().item()


@torch.no_grad()
def kq2_layer_hits(model: nn.Module, triggers: torch.Tensor | None = None) -> torch.Tensor:
    """[H, K] whether head h of the last layer, from the query LN1(x_k) (x_k the
    `effective_embeddings`: w_E(k) and what the first layer's MLP adds), puts its argmax among the
    stored tokens' keys (`previous_token_keys`) on the key of k' = k (`triggers` None: every token)."""
    config = model_config(model)
    last = config.n_layers - 1
    tokens = _stored_tokens(model, triggers)
    queries = _read(layer_norm(model, last), effective_embeddings(model, tokens))
    keys = previous_token_keys(model, tokens)
    targets = torch.arange(len(tokens), device=tokens.device)
    return torch.stack(
        [
            recall_scores(model.QK[last, h], queries, keys).argmax(dim=-1) == targets
            for h in range(config.n_heads)
        ]
    )


def _check_weights(triggers: torch.Tensor | None, trigger_weights: torch.Tensor | None) -> None:
    if trigger_weights is not None and triggers is not None:
        raise ValueError("trigger_weights weigh the whole vocabulary: only with random triggers (None)")


@torch.no_grad()
def kq2_layer_recalls(
    model: nn.Module, triggers: torch.Tensor | None = None, trigger_weights: torch.Tensor | None = None
) -> dict[int, float]:
    """W_KQ² of each head of the last layer (`kq2_layer_hits`), the stored tokens counted alike or,
    with `trigger_weights` ([N], random triggers only, e.g. `in_context_trigger_shares`), each query
    token k with its weight (the candidates stay every token). A rotary model: `kq2_recalls`."""
    _check_weights(triggers, trigger_weights)
    config = model_config(model)
    last = config.n_layers - 1
    if config.positions == "rotary":
        return {h: v for (layer, h), v in kq2_recalls(model, triggers).items() if layer == last}
    return {h: _mean(hits, trigger_weights) for h, hits in enumerate(kq2_layer_hits(model, triggers))}


@torch.no_grad()
def kq2_layer_recall(
    model: nn.Module, triggers: torch.Tensor | None = None, trigger_weights: torch.Tensor | None = None
) -> float:
    """W_KQ² of the last layer: its best head's (`kq2_layer_recalls`). Not "some head per token" as
    W_KQ¹'s positions: with 5 fixed triggers, 4 random heads already hit 1 - (4/5)⁴ ≈ 0.59 of them."""
    return max(kq2_layer_recalls(model, triggers, trigger_weights).values())


@torch.no_grad()
def induction_weights(model: nn.Module, triggers: torch.Tensor | None = None) -> torch.Tensor:
    """[H] the attention each head of the last layer puts, from a stored token's query (as
    `kq2_layer_hits` reads it), on that token's key among the keys of all N tokens
    (`previous_token_keys`), averaged over the stored tokens: how much of the head is an induction
    head. A 1-layer model: ones (its heads' sum)."""
    config = model_config(model)
    if config.n_layers < 2:
        return torch.ones(config.n_heads)
    last = config.n_layers - 1
    tokens = _stored_tokens(model, triggers)
    every = torch.arange(model.W_E.shape[0], device=tokens.device)
    queries = _read(layer_norm(model, last), effective_embeddings(model, tokens))
    if config.positions == "rotary":  # no positions to weigh the layer-0 heads by: all of them
        inputs = _read(layer_norm(model, 0), model.W_E)
        written = sum(apply_rows(model.OV[0, h], inputs) for h in range(config.n_heads))
        keys = _token_part(layer_norm(model, last), written)
    else:
        keys = previous_token_keys(model, every)
    weights = []
    for h in range(config.n_heads):
        attention = (recall_scores(model.QK[last, h], queries, keys) * _score_scale(model)).softmax(dim=-1)
        weights.append(attention[torch.arange(len(tokens)), tokens].mean())
    return torch.stack(weights).cpu()


@torch.no_grad()
def ov2_layer_recall(model: nn.Module, triggers: torch.Tensor | None = None) -> float:
    """W_OV² of the last layer: Σ_h a_h W_OV[h] (a_h the `induction_weights`; a 1-layer model: the
    plain sum) stores w_E(k) → w_U(k): argmax_j r_j · o_k == k over all N tokens, with o_k = Σ_h a_h
    OV[h] u_k plus what the last layer's MLP adds reading it alone (`_through_last_mlp`), u_k the
    token part of LN1(x_k) (x_k the `effective_embeddings`) and r_j the final LayerNorm's reading
    of w_U(j)."""
    config = model_config(model)
    last = config.n_layers - 1
    inputs = _token_part(layer_norm(model, last), effective_embeddings(model))
    weights = induction_weights(model, triggers).tolist()
    written = sum(w * apply_rows(model.OV[last, h], inputs) for h, w in enumerate(weights))
    targets = torch.arange(model.W_E.shape[0], device=model.W_E.device)
    scores = _through_last_mlp(model, written) @ _readout(model).T
    return (scores.argmax(dim=-1) == targets).float().mean().item()


@torch.no_grad()
def layer_probes(
    model: nn.Module, triggers: torch.Tensor | None = None, trigger_weights: torch.Tensor | None = None
) -> dict[str, float]:
    """The memories of a multi-head or LayerNorm model read per layer: `W_OV2` (`ov2_layer_recall`;
    a 1-layer model's `W_OV`), `W_KQ2` (`kq2_layer_recall`, its query tokens weighted by
    `trigger_weights` when given) and `W_KQ1` (`kq1_layer_recall`, additive positions only)."""
    config = model_config(model)
    if config.n_layers < 2:
        return {"W_OV": ov2_layer_recall(model)}
    out = {
        "W_OV2": ov2_layer_recall(model, triggers),
        "W_KQ2": kq2_layer_recall(model, triggers, trigger_weights),
    }
    if config.positions != "rotary":
        out["W_KQ1"] = kq1_layer_recall(model)
    return out


def _per_head(name: str, values: dict[tuple[int, int], float], out: dict[str, float]) -> None:
    out[name] = _best(values)
    if len(values) > 1:
        for (layer, head), value in values.items():
            out[f"{name}/l{layer}h{head}"] = value


def reads_per_head(model: nn.Module) -> bool:
    """Whether the model is read head by head as the paper reads it (one head per layer, no
    LayerNorm: the simplified model); every other model gets the layer readings (`layer_probes`)."""
    config = model_config(model)
    return config.n_heads == 1 and config.normalization == "none"


@torch.no_grad()
def head_probes(model: nn.Module, triggers: torch.Tensor | None = None) -> dict[str, float]:
    """The per-head readings: each memory's best head (`W_OV2`, `W_KQ2`, `W_KQ1`; a 1-layer model's
    `W_OV`), then, with several heads, every head's as "W_OV2/l1h0". W_KQ1 only with additive
    positional embeddings. For the simplified model these are the probes (`all_probes`)."""
    config = model_config(model)
    out: dict[str, float] = {}
    if config.n_layers < 2:
        _per_head("W_OV", ov2_recalls(model), out)
        return out
    heads: dict[str, dict[tuple[int, int], float]] = {
        "W_OV2": ov2_recalls(model),
        "W_KQ2": kq2_recalls(model, triggers),
    }
    if config.positions != "rotary":
        heads["W_KQ1"] = kq1_recalls(model)
    out.update({name: _best(values) for name, values in heads.items()})  # the best heads first
    for name, values in heads.items():
        _per_head(name, values, out)
    return out


@torch.no_grad()
def all_probes(
    model: nn.Module,
    triggers: torch.Tensor | None = None,
    bigram: torch.Tensor | None = None,
    trigger_weights: torch.Tensor | None = None,
) -> dict[str, float]:
    """The memory-recall probes W_OV2, W_KQ2, W_KQ1 of a model with 2+ layers (a 1-layer model has
    only its W_OV, in W_OV2's role): the paper's per-head reading for the simplified model
    (`head_probes`, with one head per layer exactly the old dict; `trigger_weights` unused), the
    layer readings of `layer_probes` for every other model (random triggers: W_KQ2's query tokens
    weighted by `trigger_weights` when given); W_KQ1 only with additive positional embeddings;
    "W_F_kl" (`ff_bigram_kl`) when `bigram` is given and the last layer has a feed-forward layer."""
    if reads_per_head(model):
        out = head_probes(model, triggers)
    else:
        out = layer_probes(model, triggers, trigger_weights)
    if bigram is not None and model_config(model).has_final_ffn:
        out[FF_PROBE] = ff_bigram_kl(model, bigram, triggers)
    return out


@torch.no_grad()
def probe_report(
    model: nn.Module,
    triggers: torch.Tensor | None = None,
    bigram: torch.Tensor | None = None,
    trigger_weights: torch.Tensor | None = None,
) -> dict:
    """What `birth inspect` reports of the memories: `reading` ("per_head": the simplified model,
    "layer": any other, `reads_per_head`) and `probes` (`all_probes`, the values a run logs as
    probes/NAME); for the layer reading also `head_probes` (`head_probes`), the layer-0 heads'
    `previous_token_weights` and `kq1_by_position` (additive positions), and the last layer's
    `induction_weights` (2+ layers). `trigger_weights`: as `all_probes`."""
    per_head = reads_per_head(model)
    out: dict = {
        "reading": "per_head" if per_head else "layer",
        "probes": all_probes(model, triggers, bigram, trigger_weights),
    }
    if per_head:
        return out
    config = model_config(model)
    out["head_probes"] = head_probes(model, triggers)
    if config.positions != "rotary":
        out["previous_token_weights"] = previous_token_weights(model).tolist()
        out["kq1_by_position"] = kq1_by_position(model).tolist()
    if config.n_layers >= 2:
        out["induction_weights"] = induction_weights(model, triggers).tolist()
    return out
