"""Capacity of trained memories: the largest number N* of random associations a linear memory
(d x d) or an MLP memory (d -> m -> d) stores once trained, by the search of
birth.memories.capacity_search over N.

One run trains one memory with the memory trainer (training/memories.py) on all N associations at
once (full batch: every step's batch is the N inputs, so the gradient is the exact one of the mean
cross-entropy) and reads its exact accuracy Σ_x 1{argmax_y u_yᵀ h(e_x) = f*(x)} / N at the last step.
The associations of (seed, N, attempt) and the memory's initialization are drawn from their own
seeded streams, so every run is reproducible alone and a confirmation run (attempt 1) sees fresh
embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch

from birth.base.seeds import generator, mixed_seed
from birth.memories.capacity_search import (
    AssociationEmbeddings,
    CapacitySearch,
    random_associations,
    search_capacity,
)
from training.memories import MemoryTrainConfig, train_memory

MemoryKind = Literal["linear", "mlp"]
MEMORY_KINDS: tuple[str, ...] = get_args(MemoryKind)
ASSOCIATION_STREAM = 0xFAC7  # the associations of (N, attempt): generator(seed, N, attempt, stream)

# Adam on the full batch from W = 0 (A ~ N(0, 1) for the MLP): what the capacity runs use unless told.
CAPACITY_TRAINING = MemoryTrainConfig(optimizer="adam", lr=0.03, num_steps=1500, batch_size=1, init="zero")


@dataclass(frozen=True)
class MemorySize:
    """A memory: its kind, its width d and (MLP) its hidden width m."""

    kind: MemoryKind
    dim: int
    width: int = 0  # m of the MLP memory (unused for the linear one)

    @property
    def parameters(self) -> int:
        """Trained parameters: d^2 (linear), 2 m d (MLP)."""
        return self.dim * self.dim if self.kind == "linear" else 2 * self.width * self.dim

    def label(self) -> str:
        return f"d={self.dim}" if self.kind == "linear" else f"d={self.dim},m={self.width}"


def trained_accuracy(
    size: MemorySize,
    n: int,
    *,
    seed: int,
    attempt: int = 0,
    training: MemoryTrainConfig = CAPACITY_TRAINING,
    embeddings: AssociationEmbeddings = "sphere",
) -> float:
    """Exact accuracy over n associations of the memory `size` trained on them (full batch)."""
    problem = random_associations(n, size.dim, generator(seed, n, attempt, ASSOCIATION_STREAM), embeddings)
    features = "matrix" if size.kind == "linear" else "mlp"
    config = replace(
        training, features=features, mlp_width=max(size.width, 1), batch_size=n, eval_steps=(), eval_every=0
    )
    full_batch = torch.arange(n).expand(1, config.num_steps, n)  # a view: no copy per step
    run = train_memory(problem, config, seed=mixed_seed(seed, n, attempt), batches=full_batch)
    return 1.0 - float(run.error[-1, 0])


def memory_capacity(
    size: MemorySize,
    threshold: float,
    *,
    seed: int,
    max_size: int,
    rel_tol: float = 0.0,
    training: MemoryTrainConfig = CAPACITY_TRAINING,
    embeddings: AssociationEmbeddings = "sphere",
    start: int | None = None,
    cache: dict[tuple[int, int], float] | None = None,
) -> CapacitySearch:
    """N* of `size` at accuracy >= threshold for one seed. `start` defaults to the parameter count
    over 4 log of it (near the linear memory's d^2 / (2 log N*)); `cache` (n, attempt) -> accuracy
    lets a second threshold reuse the runs of a first one."""
    cache = {} if cache is None else cache

    def stores(n: int, attempt: int) -> bool:
        if (n, attempt) not in cache:
            cache[n, attempt] = trained_accuracy(
                size, n, seed=seed, attempt=attempt, training=training, embeddings=embeddings
            )
        return cache[n, attempt] >= threshold - 1e-12

    if start is None:
        start = max(2, int(size.parameters / (4 * math.log(max(size.parameters, 3)))))
    return search_capacity(stores, start=min(start, max_size), max_size=max_size, rel_tol=rel_tol)
