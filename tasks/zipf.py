"""Zipf association data of *Scaling Laws for Associative Memories* (Cabannes, Dohmatob, Bietti, 2024).

Inputs x ∈ {0, ..., N-1} follow a Zipf law p(x) ∝ (x + 1 + c)^-α (token 0 is the most frequent; the
papers write x ∈ [N] starting at 1, hence the +1). The output is deterministic, y = f*(x) with
f*(x) = x mod M, or a random map drawn once from a seeded generator.

T-sweeps use *nested* sample sets: for each trial one stream of T_max samples is drawn and the counts
for every T in the sweep are the counts of its first T samples, as in the papers (the error curves in
T are then monotone per trial up to the storage scheme, instead of noisy across independent draws).

Every random draw comes from a `torch.Generator` seeded from (seed, trial) (`birth.base.seeds.generator`),
so a trial's numbers do not depend on how many trials are drawn at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from birth.base.seeds import generator

Mapping = Literal["mod", "random"]
MAPPINGS: tuple[str, ...] = get_args(Mapping)
MAPPING_STREAM = 0x5EED  # the random f* of mapping seed s is drawn from generator(s, MAPPING_STREAM)


def zipf_probs(
    num_inputs: int, alpha: float, offset: float = 0.0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """p(x) ∝ (x + 1 + offset)^-alpha for x = 0..N-1 (alpha 0 is uniform), shape (N,), sums to 1."""
    if num_inputs < 1:
        raise ValueError(f"num_inputs (N) must be >= 1, got {num_inputs}")
    ranks = torch.arange(1, num_inputs + 1, dtype=torch.float64) + offset
    weights = ranks.pow(-float(alpha))
    return (weights / weights.sum()).to(dtype)


def sample_inputs(probs: torch.Tensor, num_samples: int, gen: torch.Generator) -> torch.Tensor:
    """num_samples i.i.d. draws x ~ p (probs (N,)), by inverse-CDF sampling: (num_samples,) long."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    cdf = torch.cumsum(probs.to(torch.float64), 0)
    uniforms = torch.rand(num_samples, generator=gen, dtype=torch.float64)
    # clamp: rounding can leave cdf[-1] a hair below 1
    return torch.searchsorted(cdf, uniforms, right=True).clamp_(max=len(probs) - 1)


@dataclass(frozen=True)
class ZipfAssociations:
    """The association task: x ~ Zipf(α) on N tokens, y = f*(x) ∈ [M]."""

    num_inputs: int  # N
    num_outputs: int  # M
    alpha: float  # α >= 0 (α = 0 is uniform)
    offset: float = 0.0  # c in p(x) ∝ (x + 1 + c)^-α
    mapping: Mapping = "mod"  # "mod": f*(x) = x mod M; "random": f*(x) uniform in [M], drawn once
    mapping_seed: int = 0

    def __post_init__(self) -> None:
        if self.num_inputs < 1:
            raise ValueError(f"num_inputs (N) must be >= 1, got {self.num_inputs}")
        if self.num_outputs < 2:
            raise ValueError(f"num_outputs (M) must be >= 2, got {self.num_outputs}")
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if self.offset <= -1:
            raise ValueError(f"offset c must be > -1 so that x + 1 + c > 0, got {self.offset}")
        if self.mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {self.mapping!r}")

    def probs(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """p(x) for x = 0..N-1, shape (N,), sums to 1."""
        return zipf_probs(self.num_inputs, self.alpha, self.offset, dtype)

    def targets(self) -> torch.Tensor:
        """f*(x) for x = 0..N-1, shape (N,), long."""
        if self.mapping == "mod":
            return torch.arange(self.num_inputs) % self.num_outputs
        gen = generator(self.mapping_seed, MAPPING_STREAM)
        return torch.randint(0, self.num_outputs, (self.num_inputs,), generator=gen)

    def sample(self, num_samples: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """num_samples i.i.d. pairs (x_t, f*(x_t)), by inverse-CDF sampling."""
        inputs = sample_inputs(self.probs(), num_samples, gen)
        return inputs, self.targets()[inputs]

    def nested_counts(self, sample_sizes: Sequence[int], num_trials: int, seed: int) -> torch.Tensor:
        """Counts n_x for the first T samples of one stream per trial, for every T in sample_sizes.

        Returns float64 counts of shape (num_trials, len(sample_sizes), N); row [r, k] sums to
        sample_sizes[k]. Sample sizes may come in any order (each is a prefix of the same stream).
        """
        sizes = [int(t) for t in sample_sizes]
        if not sizes:
            raise ValueError("sample_sizes must not be empty")
        if min(sizes) < 0:
            raise ValueError(f"sample sizes T must be >= 0, got {min(sizes)}")
        if num_trials < 1:
            raise ValueError(f"num_trials must be >= 1, got {num_trials}")
        order = np.argsort(sizes, kind="stable")
        counts = torch.zeros(num_trials, len(sizes), self.num_inputs, dtype=torch.float64)
        for trial in range(num_trials):
            stream, _ = self.sample(max(sizes), generator(seed, trial))
            running = torch.zeros(self.num_inputs, dtype=torch.float64)
            previous = 0
            # counts of a longer prefix = counts of the shorter one + counts of the new samples
            for k in order:
                new = stream[previous : sizes[k]]
                running += torch.bincount(new, minlength=self.num_inputs).to(torch.float64)
                counts[trial, k] = running
                previous = sizes[k]
        return counts
