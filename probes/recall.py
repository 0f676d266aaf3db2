"""Memory-recall probes (Bietti et al., 2023, section 4.2), computed in weight space.

For a target memory W* = Σ_{(i,j)} v_j u_iᵀ, the probe R(Ŵ, W*) is the fraction of pairs (i, j)
whose output j is the argmax over candidates j' of v_j'ᵀ Ŵ u_i. Here the weights are read in
TransformerLens' row-vector form (x ↦ x @ W), so the score of pair (i, j') is u_i @ Ŵ @ v_j'ᵀ.

Probes never build an autograd graph (`torch.no_grad`), so they can run inside a training loop.
"""

from __future__ import annotations

import torch
from torch import nn
from transformer_lens import FactoredMatrix

Matrix = torch.Tensor | FactoredMatrix


@torch.no_grad()
def recall_scores(W: Matrix, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """[n_in, n_out] scores u_i @ W @ v_jᵀ (inputs u_i as rows, candidate outputs v_j as rows)."""
    if isinstance(W, FactoredMatrix):
        left = (inputs @ W.A) @ W.B  # keep the factorization: never form a d x d product twice
    else:
        left = inputs @ W
    return left @ outputs.T


@torch.no_grad()
def memory_recall(
    W: Matrix, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor
) -> float:
    """R(W, W*): fraction of inputs i whose best-scoring output is targets[i]."""
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
    scores = recall_scores(W, inputs, outputs)
    return (scores.argmax(dim=-1) == targets.to(scores.device)).float().mean().item()


def _embeddings(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w_E(k) rows [N, d], w_U(k) rows [N, d], p_t rows [n_ctx, d]."""
    return model.W_E, model.W_U.T, model.W_pos


@torch.no_grad()
def recall_ov2(model: nn.Module) -> float:
    """W_OV² stores w_E(k) → w_U(k): argmax_j w_U(j)ᵀ W_OV² w_E(k) == k over all N tokens."""
    W_E, W_U, _ = _embeddings(model)
    layer = model.cfg.n_layers - 1
    targets = torch.arange(W_E.shape[0], device=W_E.device)
    return memory_recall(model.OV[layer, 0], W_E, W_U, targets)


@torch.no_grad()
def recall_kq2(model: nn.Module, triggers: torch.Tensor | None = None) -> float:
    """W_KQ² stores w_E(k) → W_OV¹ w_E(k): the query w_E(k) picks the key W_OV¹ w_E(k') with k' = k.

    `triggers`: the fixed trigger set; None (random triggers) probes the whole vocabulary.
    """
    if model.cfg.n_layers < 2:
        raise ValueError("W_KQ² needs a 2-layer model")
    W_E, _, _ = _embeddings(model)
    tokens = torch.arange(W_E.shape[0], device=W_E.device) if triggers is None else triggers
    tokens = tokens.to(W_E.device)
    queries = W_E[tokens]
    keys = (queries @ model.OV[0, 0].A) @ model.OV[0, 0].B  # W_OV¹ w_E(k'), row form
    targets = torch.arange(len(tokens), device=W_E.device)
    return memory_recall(model.QK[1, 0], queries, keys, targets)


@torch.no_grad()
def recall_kq1(model: nn.Module) -> float:
    """W_KQ¹ stores p_{t+1} → p_t: the query p_{t+1} picks key p_s, s over all positions, s = t."""
    _, _, W_pos = _embeddings(model)
    queries = W_pos[1:]
    targets = torch.arange(W_pos.shape[0] - 1, device=W_pos.device)
    return memory_recall(model.QK[0, 0], queries, W_pos, targets)


PROBES = ("W_OV2", "W_KQ2", "W_KQ1")


@torch.no_grad()
def all_probes(model: nn.Module, triggers: torch.Tensor | None = None) -> dict[str, float]:
    """The three probes of a 2-layer model; a 1-layer model has only its W_OV (named W_OV2's role)."""
    if model.cfg.n_layers < 2:
        return {"W_OV": recall_ov2(model)}
    return {
        "W_OV2": recall_ov2(model),
        "W_KQ2": recall_kq2(model, triggers),
        "W_KQ1": recall_kq1(model),
    }
