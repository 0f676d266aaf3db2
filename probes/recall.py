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


@torch.no_grad()
def recall_scores(W: Matrix, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """[n_in, n_out] scores u_i @ W @ v_jᵀ (inputs u_i as rows, candidate outputs v_j as rows)."""
    if isinstance(W, FactoredMatrix):
        left = (inputs @ W.A) @ W.B  # keep the factorization: never form a d x d product twice
    else:
        left = inputs @ W
    return left @ outputs.T


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
    written = [(first_in @ W.A) @ W.B for W in ov1]  # [K, d] per layer-0 head: W_OV¹ w_E(k)
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


def _per_head(name: str, values: dict[tuple[int, int], float], out: dict[str, float]) -> None:
    out[name] = _best(values)
    if len(values) > 1:
        for (layer, head), value in values.items():
            out[f"{name}/l{layer}h{head}"] = value


@torch.no_grad()
def all_probes(
    model: nn.Module, triggers: torch.Tensor | None = None, bigram: torch.Tensor | None = None
) -> dict[str, float]:
    """The three probes of a model with 2+ layers (a 1-layer model has only its W_OV, in W_OV2's
    role), each the best head's value, then every head's as "W_OV2/l1h0" when there are several;
    W_KQ1 only with additive positional embeddings; "W_F_kl" (`ff_bigram_kl`) when `bigram` is given
    and the last layer has a feed-forward layer."""
    config = model_config(model)
    out: dict[str, float] = {}
    if config.n_layers < 2:
        _per_head("W_OV", ov2_recalls(model), out)
    else:
        best: dict[str, float] = {}
        heads: dict[str, dict[tuple[int, int], float]] = {
            "W_OV2": ov2_recalls(model),
            "W_KQ2": kq2_recalls(model, triggers),
        }
        if config.positions != "rotary":
            heads["W_KQ1"] = kq1_recalls(model)
        for name, values in heads.items():
            best[name] = _best(values)
        out.update(best)  # the best heads first, under the names of the 1-head model
        for name, values in heads.items():
            _per_head(name, values, out)
    if bigram is not None and config.has_final_ffn:
        out[FF_PROBE] = ff_bigram_kl(model, bigram, triggers)
    return out
