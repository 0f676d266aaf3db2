"""Capacity N* of a memory: the largest number of associations it stores, found by a seeded search.

A memory "stores" N associations when, trained on them, its accuracy over the N is at least a
threshold (1.0: every association recalled; 0.99). `search_capacity` asks a predicate
`stores(n, attempt)` (attempt 0: the search's runs, attempt k >= 1: an independent confirmation
run, e.g. fresh embeddings) and assumes it is monotone in n only roughly:

  1. growth: from `start`, double n while it is stored (halve while it is not) to bracket N*
     between a stored lo and a failed hi (n = max_size stored: N* = max_size, censored);
  2. bisection of (lo, hi) until hi - lo <= max(1, rel_tol * lo);
  3. confirmation: lo is retrained with attempt 1; if that run fails, n is halved from lo until both
     runs (attempts 0 and 1) store it, and N* is the bisection of "both runs store n" above that.

Every call of `stores` is recorded (`CapacitySearch.tried`). `random_associations` draws the
problems the trained memories are measured on (training/memory_capacity.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from birth.memories.problem import MemoryProblem, gaussian_embeddings, sphere_embeddings

AssociationEmbeddings = Literal["sphere", "gaussian", "repeated-basis"]
ASSOCIATION_EMBEDDINGS: tuple[str, ...] = get_args(AssociationEmbeddings)


def random_associations(
    n: int, dim: int, gen: torch.Generator, kind: AssociationEmbeddings = "sphere", dtype=torch.float32
) -> MemoryProblem:
    """N associations x -> f*(x) = x (N inputs, N outputs, uniform law) in R^d, one trial (1, N, d).

    Inputs and outputs are drawn independently (f* = identity loses nothing: the draws are
    exchangeable). kind: "sphere" (uniform on the unit sphere, the paper's), "gaussian" (N(0, I/d)),
    or "repeated-basis": input x is the basis vector e_{x mod d} and outputs are on the sphere, so
    that N <= d associations are storable and N > d are not (two inputs share an embedding but not
    a target): the case with a known capacity, exactly d."""
    draw = sphere_embeddings if kind != "gaussian" else gaussian_embeddings
    if kind == "repeated-basis":
        inputs = torch.eye(dim, dtype=torch.float64)[torch.arange(n) % dim]
    else:
        inputs = draw(n, dim, gen)
    outputs = draw(n, dim, gen)
    probs = torch.full((n,), 1.0 / n, dtype=dtype)
    return MemoryProblem(inputs[None].to(dtype), outputs[None].to(dtype), probs, torch.arange(n))


@dataclass(frozen=True)
class CapacitySearch:
    """The result of a search: N*, whether a confirmation run stored it too, whether it is the
    largest size allowed (censored), and every (n, attempt, stored) asked, in order."""

    capacity: int
    confirmed: bool
    censored: bool
    tried: list[tuple[int, int, bool]] = field(default_factory=list)


def search_capacity(
    stores: Callable[[int, int], bool],
    *,
    start: int,
    max_size: int,
    rel_tol: float = 0.0,
) -> CapacitySearch:
    """The largest n <= max_size with stores(n, 0) (see the module doc); stores(n, attempt) must be
    deterministic in its arguments (the search may ask a size twice; it asks each once here)."""
    if not 1 <= start <= max_size:
        raise ValueError(f"start must lie in [1, max_size={max_size}], got {start}")
    tried: list[tuple[int, int, bool]] = []
    seen: dict[tuple[int, int], bool] = {}

    def ask(n: int, attempt: int = 0) -> bool:
        if (n, attempt) not in seen:
            seen[n, attempt] = bool(stores(n, attempt))
            tried.append((n, attempt, seen[n, attempt]))
        return seen[n, attempt]

    lo, hi = _bracket(ask, start, max_size)
    if hi is None:
        return CapacitySearch(max_size, ask(max_size, 1), True, tried)
    lo = _bisect(ask, lo, hi, rel_tol)
    if lo == 0 or ask(lo, 1):
        return CapacitySearch(lo, lo > 0, False, tried)

    def both(n: int) -> bool:  # stored by the search's run and by the confirmation run
        return ask(n) and ask(n, 1)

    hi, lo = lo, lo // 2  # the confirmation failed: halve until both runs store, then bisect on both
    while lo > 0 and not both(lo):
        hi, lo = lo, lo // 2
    lo = _bisect(both, lo, hi, rel_tol) if lo > 0 else 0
    return CapacitySearch(lo, lo > 0, False, tried)


def _bisect(stored: Callable[[int], bool], lo: int, hi: int, rel_tol: float) -> int:
    """The largest stored n in [lo, hi) to within max(1, rel_tol lo): lo stored, hi not."""
    while hi - lo > max(1, int(rel_tol * lo)):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if stored(mid) else (lo, mid)
    return lo


def _bracket(ask: Callable[[int], bool], start: int, max_size: int) -> tuple[int, int | None]:
    """(lo, hi): lo stored (0: nothing stored down to n = 1), hi the smallest failure seen (None:
    max_size stored)."""
    if ask(start):
        lo = start
        while lo < max_size:
            n = min(2 * lo, max_size)
            if not ask(n):
                return lo, n
            lo = n
        return lo, None
    hi = start
    while hi > 1:
        n = hi // 2
        if ask(n):
            return n, hi
        hi = n
    return 0, 1
