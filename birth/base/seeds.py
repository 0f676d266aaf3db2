"""Derived seeds: every random stream of the toolkit is named here, from one user seed.

A run has one seed. The streams it needs (model init, the training batch at each step, the fixed
held-out batch, the trials of a scaling-law figure, ...) get seeds derived from it by a mixing
function, so that neighbouring seeds and streams give unrelated draws: seeding with `seed + step`
would make step 1 of seed 0 the batch of step 0 of seed 1.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK_63 = (1 << 63) - 1

# Named offsets of the step index for the extra batch streams of the theory experiments (the
# gradient-step construction draws its own sequences, apart from training batches).
THEORY_STEP_STREAM = 10_000_000  # sequences of the gradient of step i (+ 1000 i + j)
THEORY_SELECT_STREAM = 20_000_000  # held-out sequences that choose step i's size (+ 1000 i + j)


def step_seed(seed: int, step: int) -> int:
    """Seed of the training batch at `step`: distinct for every (seed, step), fits in 63 bits.

    A batch depends only on (seed, step), so a resumed run draws exactly the batches of an
    uninterrupted one.
    """
    return (seed * 0x9E3779B97F4A7C15 + step * 0x632BE59BD9B4E019 + 1) % (2**63)


def theory_batch_seed(seed: int, stream: int, step: int, chunk: int) -> int:
    """Seed of chunk `chunk` of the sequences of theory step `step` in `stream`."""
    return step_seed(seed, stream + 1000 * step + chunk)


def mixed_seed(seed: int, *stream: int) -> int:
    """A 63-bit seed that depends only on (seed, *stream), e.g. (seed, trial index).

    `numpy.random.SeedSequence` spreads the integers, so neighbouring seeds and streams are
    unrelated.
    """
    state = np.random.SeedSequence([int(seed), *map(int, stream)]).generate_state(2, np.uint64)
    return int(state[0]) & _MASK_63


def generator(seed: int, *stream: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded by `mixed_seed(seed, *stream)` (just `seed` without a stream)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(mixed_seed(seed, *stream) if stream else int(seed))
    return gen


def check_seed(seed: int, option: str = "--seed") -> int:
    """A seed must be an integer in [0, 2^63): torch refuses others deep inside a run."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MASK_63:
        raise ValueError(f"{option} must be an integer in [0, 2^63), got {seed!r}")
    return seed
