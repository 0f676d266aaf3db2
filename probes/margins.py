"""Readings of the memory-recall probes that do not saturate on a few candidates.

The recall probe R(Ŵ, W*) (`probes.recall`) counts the stored inputs whose best-scoring candidate is
the right one. Two things make it saturate early:

- few candidates: with K = 5 fixed triggers the W_KQ² probe ranks 5 keys, and a matrix that has
  barely moved from zero already orders a 5 x 5 block correctly;
- it is an argmax: once the right candidate is on top the probe says 1, however narrow the lead.

So each memory has two more readings here, on the same scores u_i @ Ŵ @ v_jᵀ:

- **recall against all tokens**: the W_KQ² probe with every one of the N = 65 tokens as a
  candidate key W_OV¹ w_E(k') (the queries are still the stored triggers). W_OV² and W_KQ¹ already
  rank every token / every position, so for them this reading is the recall probe itself;
- **normalized margin** of input i: (s_i,y − max_{j≠y} s_i,j) / (max_j s_i,j − min_j s_i,j), the
  lead of the right candidate over the best wrong one as a fraction of the spread of the scores,
  over all candidates. It is in [−1, 1]: > 0 exactly when the argmax is right (so the recall is the
  fraction of positive margins), 1 for a clean one-hot row (every wrong candidate tied at the
  bottom), and it does not depend on the scale of Ŵ. A zero matrix reads 0. The probe's reading
  is the mean over the stored inputs.

Everything is computed in weight space without autograd, like `probes.recall`.
"""

from __future__ import annotations

import torch
from torch import nn

from probes.recall import Matrix, recall_scores


@torch.no_grad()
def normalized_margins(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[n_in] margins (s_y − max wrong) / (max − min) of each row of `scores` [n_in, n_out].

    A row whose scores are all equal (e.g. a zero matrix) has margin 0. With one candidate there is
    no wrong one: the margin is 1.
    """
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores must be [n_in, n_out] and targets [n_in], got {tuple(scores.shape)}, "
                         f"{tuple(targets.shape)}")  # fmt: skip
    scores = scores.double()
    targets = targets.to(scores.device).long().unsqueeze(1)
    if scores.shape[1] == 1:
        return torch.ones(scores.shape[0], dtype=scores.dtype, device=scores.device)
    correct = scores.gather(1, targets).squeeze(1)
    wrong = scores.scatter(1, targets, float("-inf")).amax(dim=1)
    spread = scores.amax(dim=1) - scores.amin(dim=1)
    margin = (correct - wrong) / spread.clamp_min(torch.finfo(scores.dtype).tiny)
    return torch.where(spread > 0, margin, torch.zeros_like(margin))


@torch.no_grad()
def memory_margin(W: Matrix, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean normalized margin of the memory W: inputs u_i (rows), candidates v_j (rows), targets[i]."""
    return normalized_margins(recall_scores(W, inputs, outputs), targets).mean().item()


def _kq2_sets(
    model: nn.Module, triggers: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries w_E(q) of the stored triggers, keys W_OV¹ w_E(k) of all N tokens, and the target key
    index of each query (its own token)."""
    W_E = model.W_E
    queries_ids = (
        torch.arange(W_E.shape[0], device=W_E.device) if triggers is None else triggers.to(W_E.device)
    )
    keys = (W_E @ model.OV[0, 0].A) @ model.OV[0, 0].B  # every token's W_OV¹ w_E(k), row form
    return W_E[queries_ids], keys, queries_ids


@torch.no_grad()
def recall_all_kq2(model: nn.Module, triggers: torch.Tensor | None = None) -> float:
    """W_KQ² recall with all N tokens as candidate keys (queries: the fixed triggers, or all tokens)."""
    if model.cfg.n_layers < 2:
        raise ValueError("W_KQ² needs a 2-layer model")
    queries, keys, targets = _kq2_sets(model, triggers)
    scores = recall_scores(model.QK[1, 0], queries, keys)
    return (scores.argmax(dim=-1) == targets).float().mean().item()


@torch.no_grad()
def margin_probes(model: nn.Module, triggers: torch.Tensor | None = None) -> dict[str, float]:
    """Mean normalized margin of each memory over all its candidates: W_OV2 (all N outputs),
    W_KQ2 (all N keys, queries the stored triggers), W_KQ1 (all positions). A 1-layer model has
    only its W_OV (named as in `probes.recall.all_probes`)."""
    W_E, W_U, P = model.W_E, model.W_U.T, model.W_pos
    layer = model.cfg.n_layers - 1
    tokens = torch.arange(W_E.shape[0], device=W_E.device)
    ov = memory_margin(model.OV[layer, 0], W_E, W_U, tokens)
    if model.cfg.n_layers < 2:
        return {"W_OV": ov}
    queries, keys, targets = _kq2_sets(model, triggers)
    positions = torch.arange(P.shape[0] - 1, device=P.device)
    return {
        "W_OV2": ov,
        "W_KQ2": memory_margin(model.QK[1, 0], queries, keys, targets),
        "W_KQ1": memory_margin(model.QK[0, 0], P[1:], P, positions),
    }


@torch.no_grad()
def kq1_position_recall(model: nn.Module, n_bins: int = 8, first: int = 64) -> dict[str, float]:
    """The W_KQ¹ probe by position: `W_KQ1_64` and one recall per bin of stored pairs.

    `W_KQ1_64` is the reference code's `wk0_64`: queries p_1..p_63, keys p_0..p_62 only (the probe
    of a model with 64 positions). The bins split the pairs p_{t+1} → p_t by t into `n_bins` equal
    ranges, keys over all positions as in `probes.recall.recall_kq1`, named `pos_LLL-HHH`
    (t from LLL to HHH inclusive). Late positions get a gradient ∝ 1/t while attention is uniform, so
    the bins draw the 1/t profile of the learning.
    """
    P = model.W_pos
    QK = model.QK[0, 0]
    n_pairs = P.shape[0] - 1
    scores = recall_scores(QK, P[1:], P)  # [T-1, T]
    hits = scores.argmax(dim=-1) == torch.arange(n_pairs, device=scores.device)
    out: dict[str, float] = {}
    cut = min(first, P.shape[0])
    head = recall_scores(QK, P[1:cut], P[: cut - 1])
    out[f"W_KQ1_{first}"] = (
        (head.argmax(dim=-1) == torch.arange(cut - 1, device=head.device)).float().mean().item()
    )
    bins = max(1, min(n_bins, n_pairs))
    edges = [round(i * n_pairs / bins) for i in range(bins + 1)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            out[f"pos_{lo:03d}-{hi - 1:03d}"] = hits[lo:hi].float().mean().item()
    return out
