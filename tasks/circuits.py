"""What a task says about the attention circuit that solves it: ideal patterns and their readings.

Attention patterns are tensors [B, T, T] (query, key; rows sum to one): the functions here are pure
functions of patterns and token ids, so tasks can name the pattern their induction head should have
without knowing any model. Two protocols:

- `InductionTask`: `induction_pattern(inputs)` is the ideal layer-2 pattern and the queries it
  constrains (what `--clamp induction` forces, `training.clamps`);
- `AttentionTask`: `attention_metrics(patterns, batch)` reads one pattern per layer of a held-out
  forward (the trainer's evaluation calls it for a model with one head per layer).

The ideal layer-1 pattern is the same for every task: query t attends to key t - 1
(`previous_token_pattern`; query 0 can only attend to itself).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from tasks.protocol import Task, TokenBatch


@runtime_checkable
class InductionTask(Task, Protocol):
    def induction_pattern(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pattern [B, T, T], rows [B, T] bool): the ideal layer-2 attention of the induction head
        on `inputs` [B, T] at the queries `rows` selects (each such row sums to one; the other rows
        are not constrained). ValueError when the task's configuration cannot say (one line naming
        the option)."""
        ...


@runtime_checkable
class AttentionTask(Task, Protocol):
    def attention_metrics(self, patterns: list[torch.Tensor], batch: TokenBatch) -> dict[str, float]:
        """Readings of the attention patterns [B, T, T] (one per layer) of a held-out forward."""
        ...


def previous_token_pattern(batch_size: int, seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[B, T, T]: query t puts all its weight on key t - 1 (query 0 on itself)."""
    keys = (torch.arange(seq_len, device=device) - 1).clamp_(min=0)
    pattern = torch.nn.functional.one_hot(keys, seq_len).float()
    return pattern.expand(batch_size, seq_len, seq_len)


def follows_current_token(inputs: torch.Tensor) -> torch.Tensor:
    """[B, T, T] bool: key s (1 <= s <= t) follows an occurrence of the query's token, inputs[s-1] ==
    inputs[t]. Its token inputs[s] is one observed transition out of the current token."""
    B, T = inputs.shape
    previous = torch.cat([torch.full_like(inputs[:, :1], -1), inputs[:, :-1]], dim=1)  # inputs[s-1]
    match = inputs[:, :, None] == previous[:, None, :]  # [B, t, s]
    causal = torch.ones(T, T, dtype=torch.bool, device=inputs.device).tril_()
    return match & causal


def statistical_induction_pattern(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistical induction head: query t spreads its weight uniformly over the keys that
    follow an earlier occurrence of its token (`follows_current_token`), so that copying their
    tokens gives the in-context transition counts out of inputs[t]. Rows: the queries with at least
    one such key."""
    match = follows_current_token(inputs).float()
    count = match.sum(dim=-1)  # [B, T]
    rows = count > 0
    return match / count.clamp(min=1.0)[..., None], rows


def previous_token_mass(pattern: torch.Tensor) -> float:
    """Mean weight query t puts on key t - 1, over the queries t >= 1 (layer 1 of the circuit)."""
    if pattern.shape[-1] < 2:
        return float("nan")
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean().item()


def induction_mass(pattern: torch.Tensor, inputs: torch.Tensor) -> float:
    """Mean total weight a query puts on the keys that follow an earlier occurrence of its token
    (`follows_current_token`), over the queries that have such a key (NaN without one)."""
    match = follows_current_token(inputs)
    rows = match.any(dim=-1)
    if not rows.any():
        return float("nan")
    return (pattern * match).sum(dim=-1)[rows].mean().item()
