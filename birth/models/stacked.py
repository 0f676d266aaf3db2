"""`StackedForward`: K models of one architecture evaluated as one batched model.

The K models keep their own parameters (each is a normal built model: its checkpoints, probes and
evaluation are a single model's). A call stacks the parameters that differ between the models into
[K, ...] tensors (`torch.stack`, so gradients flow back to each model's own parameters) and runs one
model's forward under `torch.func.vmap` over the K stacked parameter sets and K token batches
(`torch.func.functional_call`). Parameters that are frozen and equal in every model (W_Q = I and the
zero biases of the simplified model) are passed once, unbatched: the fast path then recognizes the
frozen identity W_Q as it does for one model.

Two forwards:
- `at_queries`, for two-layer models of the fast path trained on their outputs (what the studies
  and the presets train): the logits at the selected queries only, as a single run's training step
  computes them (`_two_layer_tables` once per call, then `_two_layer_padded` on groups of sequences
  of similar query counts, each vmapped over the runs). The logits at every position would cost
  several times the FLOPs and lose most of what batching the runs gains;
- `__call__`: the logits at every position, through the fast path (`fast_logits`) for the
  architectures it supports and the plain-torch reference (`birth.models.reference`) for the
  others (the TransformerLens bridge's fused LayerNorm does not run under vmap). Attention runs
  through the math kernel of scaled_dot_product_attention, which vmap batches; the fused CPU
  kernel has no batching rule and would be called once per model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from birth.models.fast import (
    _query_order,
    _two_layer_padded,
    _two_layer_tables,
    fast_logits,
    supports_fast_path,
)
from birth.models.reference import ReferenceTransformer
from birth.models.weights import model_config, native

MAX_GROUPS = 4  # groups of sequences of a stacked selected-query forward (`group_sizes`)


class _FastPath(nn.Module):
    """`fast_logits` of a built model as a module's forward (what `functional_call` calls)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return fast_logits(self.model, tokens)


_TENSOR = object()  # where a tensor of the tables goes back (`_TablesOf.rebuild`)


class _TablesOf(nn.Module):
    """The fast path's two-layer tables (`_two_layer_tables`) as a module's forward, built from this
    module's own parameters (under `functional_call`, a run's) and returned as a tuple of tensors
    (what vmap can return); the tables' other fields (floats, absent biases) stay in `static`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.static: tuple[list[object], TreeSpec] | None = None

    def forward(self, *, seq_len: int) -> tuple[torch.Tensor, ...]:
        leaves, spec = tree_flatten(_two_layer_tables(self.model, seq_len))
        self.static = ([_TENSOR if isinstance(x, torch.Tensor) else x for x in leaves], spec)
        return tuple(x for x in leaves if isinstance(x, torch.Tensor))

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> Any:
        """The tables whose tensors the last `forward` returned."""
        if self.static is None:
            raise RuntimeError("rebuild needs a forward first")
        others, spec = self.static
        given = iter(tensors)
        return tree_unflatten([next(given) if x is _TENSOR else x for x in others], spec)


def _shapes(model: nn.Module) -> tuple:
    nm = native(model)
    return model_config(model), nm.cfg.n_ctx, nm.cfg.d_vocab


class QueryGroup(NamedTuple):
    """Some sequences of each run of a stack, at their selected queries (`StackedForward.at_queries`)."""

    logits: torch.Tensor  # [k, b, Q, N]
    sequences: torch.Tensor  # [k, b]: which of each run's B sequences
    order: torch.Tensor  # [k, b, Q]: the positions of the queries in them
    valid: torch.Tensor  # [k, b, Q]: False at the padding


def group_sizes(batch_size: int, max_groups: int) -> list[int]:
    """Sizes of the groups of a run's sequences sorted by their number of selected queries:
    halving (B/2, B/4, ...), the last group the rest, so that the few sequences with the most
    queries are padded in small groups of their own."""
    sizes: list[int] = []
    rest = batch_size
    while rest > 1 and len(sizes) < max_groups - 1:
        sizes.append(rest - rest // 2)
        rest //= 2
    return sizes + [rest] if rest else sizes


class StackedForward:
    """`forward(tokens, runs)`: the logits [k, B, T, N] of the models `runs` (indices, k of them) on
    their token batches `tokens` [k, B, T], equal to each model's own forward to float rounding;
    `at_queries(tokens, positions, runs)`: the logits at the selected positions only (two-layer
    fast-path models, `selects_queries`)."""

    def __init__(self, models: Sequence[nn.Module], max_groups: int = MAX_GROUPS) -> None:
        if not models:
            raise ValueError("StackedForward needs at least one model")
        first = _shapes(models[0])
        if any(_shapes(m) != first for m in models[1:]):
            raise ValueError("stacked models must share one architecture, sequence length and vocabulary")
        fast = supports_fast_path(first[0])
        wrap = _FastPath if fast else ReferenceTransformer.from_bridge
        modules = [wrap(m) for m in models]
        # the forward runs on a copy: functional_call does not put back every parameter of a
        # TransformerLens bridge (a LinearBridge keeps the swapped-in tensor), and every parameter
        # of the copy is replaced by a run's at each call
        self.template = wrap(copy.deepcopy(models[0]))
        self.selects_queries = fast and first[0].n_layers == 2
        self.max_groups = max_groups
        # the selected-query forward reads the same copy under the same parameter names
        self.tables = _TablesOf(self.template.model) if self.selects_queries else None
        self.params = [dict(m.named_parameters()) for m in modules]
        self.shared: dict[str, torch.Tensor] = {}
        self.stacked: list[str] = []
        for name, p0 in self.params[0].items():
            same = all(not p[name].requires_grad for p in self.params) and all(
                torch.equal(p0, p[name]) for p in self.params[1:]
            )
            if same:
                self.shared[name] = p0
            else:
                self.stacked.append(name)
        self._batched = vmap(self._one)
        self._batched_tables = vmap(self._tables_one)
        self._batched_padded = vmap(self._padded_one)

    def _one(self, params: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, {**self.shared, **params}, (tokens,))

    def _tables_one(self, params: dict[str, torch.Tensor], *, seq_len: int) -> tuple[torch.Tensor, ...]:
        return functional_call(self.tables, {**self.shared, **params}, (), {"seq_len": seq_len})

    def _padded_one(
        self, tables: tuple[torch.Tensor, ...], tokens: torch.Tensor, order: torch.Tensor
    ) -> torch.Tensor:
        return _two_layer_padded(tokens, order, self.tables.rebuild(tables))

    def _stacked_params(self, runs: Sequence[int]) -> dict[str, torch.Tensor]:
        return {name: torch.stack([self.params[i][name] for i in runs]) for name in self.stacked}

    def __call__(self, tokens: torch.Tensor, runs: Sequence[int]) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return self._batched(self._stacked_params(runs), tokens)

    def at_queries(
        self, tokens: torch.Tensor, positions: torch.Tensor, runs: Sequence[int]
    ) -> list[QueryGroup]:
        """The logits of the models `runs` on their batches `tokens` [k, B, T] at the positions
        `positions` [k, B, T] selects, in groups of sequences (`QueryGroup`); a valid row equals
        the row of the model's own selected-query forward (`fast_logits(model, tokens, positions)`)
        to float rounding, and every selected position is in exactly one group's valid rows.

        Each run's sequences are sorted by their number of selected queries and cut into the same
        groups (`group_sizes`); a group is one vmapped call of `_two_layer_padded` over the k runs,
        its queries padded to the largest count in that group across the stack (a single run's
        `_by_groups` has data-dependent group shapes, which vmap cannot batch); a group without any
        selected position is left out. The tables are built once per call (one vmapped
        `_two_layer_tables`) and shared by the groups."""
        if self.tables is None:
            raise ValueError("at_queries needs two-layer models that the fast path supports")
        k, B, T = tokens.shape
        tables = self._batched_tables(self._stacked_params(runs), seq_len=T)
        by_count = torch.argsort(positions.sum(dim=2), dim=1, stable=True)  # [k, B]
        groups = []
        for sequences in by_count.split(group_sizes(B, self.max_groups), dim=1):
            rows = sequences.unsqueeze(-1).expand(-1, -1, T)
            group_positions = positions.gather(1, rows)
            order, valid = _query_order(group_positions.flatten(0, 1))
            if order.shape[1] == 0:
                continue  # no selected position in these sequences of any run
            order, valid = order.view(k, sequences.shape[1], -1), valid.view(k, sequences.shape[1], -1)
            logits = self._batched_padded(tables, tokens.gather(1, rows), order)
            groups.append(QueryGroup(logits, sequences, order, valid))
        return groups
