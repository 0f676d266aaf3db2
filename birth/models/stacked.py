"""`StackedForward`: K models of one architecture evaluated as one batched model.

The K models keep their own parameters (each is a normal built model: its checkpoints, probes and
evaluation are a single model's). A call stacks the parameters that differ between the models into
[K, ...] tensors (`torch.stack`, so gradients flow back to each model's own parameters) and runs one
model's forward under `torch.func.vmap` over the K stacked parameter sets and K token batches
(`torch.func.functional_call`). Parameters that are frozen and equal in every model (W_Q = I and the
zero biases of the simplified model) are passed once, unbatched: the fast path then recognizes the
frozen identity W_Q as it does for one model.

The forward is the fast path (`fast_logits`, all positions) for the architectures it supports and
the plain-torch reference (`birth.models.reference`) for the others (the TransformerLens bridge's
fused LayerNorm does not run under vmap). Attention runs through the math kernel of
scaled_dot_product_attention, which vmap batches; the fused CPU kernel has no batching rule and
would be called once per model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from birth.models.fast import fast_logits, supports_fast_path
from birth.models.reference import ReferenceTransformer
from birth.models.weights import model_config, native


class _FastPath(nn.Module):
    """`fast_logits` of a built model as a module's forward (what `functional_call` calls)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return fast_logits(self.model, tokens)


def _shapes(model: nn.Module) -> tuple:
    nm = native(model)
    return model_config(model), nm.cfg.n_ctx, nm.cfg.d_vocab


class StackedForward:
    """`forward(tokens, runs)`: the logits [k, B, T, N] of the models `runs` (indices, k of them) on
    their token batches `tokens` [k, B, T], equal to each model's own forward to float rounding."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        if not models:
            raise ValueError("StackedForward needs at least one model")
        first = _shapes(models[0])
        if any(_shapes(m) != first for m in models[1:]):
            raise ValueError("stacked models must share one architecture, sequence length and vocabulary")
        wrap = _FastPath if supports_fast_path(first[0]) else ReferenceTransformer.from_bridge
        modules = [wrap(m) for m in models]
        # the forward runs on a copy: functional_call does not put back every parameter of a
        # TransformerLens bridge (a LinearBridge keeps the swapped-in tensor), and every parameter
        # of the copy is replaced by a run's at each call
        self.template = wrap(copy.deepcopy(models[0]))
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

    def _one(self, params: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, {**self.shared, **params}, (tokens,))

    def __call__(self, tokens: torch.Tensor, runs: Sequence[int]) -> torch.Tensor:
        params = {name: torch.stack([self.params[i][name] for i in runs]) for name in self.stacked}
        with sdpa_kernel(SDPBackend.MATH):
            return self._batched(params, tokens)
