"""Linear and non-linear associative memories and their capacity (issue: `birth capacity`).

A d × d linear memory stores about d associations; non-linear read-outs use the exp(d) nearly
orthogonal directions of R^d to store exponentially many. Two families, all vectorized over trials:

Class read-out (keys e_i on the unit sphere of R^d, labels y_i ∈ [M] drawn at random, output
embeddings u_y on the sphere; the query is the stored key itself):
  - linear:  f(x) = argmax_y u_yᵀ W e_x, W = Σ_i u_{y_i} e_iᵀ            (theory n* ∝ d)
  - relu:    f(x) = argmax_y u_yᵀ Σ_i u_{y_i} ReLU(e_iᵀ e_x − η)          (n* >~ exp(c d), c = −½ ln(1−η²))

Binary patterns (keys x_i and values y_i uniform in {−1, 1}^d; the query is x_i with exactly
round(δ d) of its d bits flipped; recall means all d output bits right):
  - hopfield:      one-step hetero-associative M(x) = sign(W x), W = Σ_i y_i x_iᵀ  (n* ≈ d / (2 ln d))
  - hopfield-auto: classical auto-associative network, W = Σ_i x_i x_iᵀ with a zero diagonal,
                   synchronous updates s ← sign(W s) (a 0 keeps the old bit) from the corrupted
                   pattern until a fixed point or `steps` updates; recall = back to x_i exactly
                   (n* ≈ d / (4 ln d))
  - softmax:       one-step modern Hopfield / attention M(x) = sign(Σ_i softmax_i(β⟨x, x_i⟩) y_i)
                   (n* ≈ exp(c d))
  - nearest:       nearest neighbour M(x) = y_{argmax_i ⟨x, x_i⟩} (the β → ∞ limit of softmax;
                   n* ≈ exp(c d) with c = ln 2 − H(δ) for the first wrong pattern to come closer)
A tie at the top (argmax), or a 0 output bit (sign), counts as a failure.

Draws are nested: each trial draws n_max patterns of width d_max once; the memory with n items at
dimension d uses the first n patterns truncated to their first d coordinates, and the queries are
the first min(n, num_queries) stored items (a uniform sample, patterns being i.i.d.). Recall curves
are thus smooth in n and d within a trial, which keeps the capacity search stable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from einops import einsum

from birth.base.seeds import generator

ClassMemory = Literal["linear", "relu"]
BinaryMemory = Literal["hopfield", "hopfield-auto", "softmax", "nearest"]
Memory = Literal[ClassMemory, BinaryMemory]
CLASS_MEMORIES: tuple[str, ...] = get_args(ClassMemory)
BINARY_MEMORIES: tuple[str, ...] = get_args(BinaryMemory)
MEMORIES: tuple[str, ...] = CLASS_MEMORIES + BINARY_MEMORIES
POLYNOMIAL = ("linear", "hopfield", "hopfield-auto")  # theory n* ∝ d or d / log d; the others exp(c d)


# --------------------------------------------------------------------------------------------
# read-outs (single batch of trials; shapes carry a leading trial axis R)


def linear_scores(
    keys: torch.Tensor, labels: torch.Tensor, outputs: torch.Tensor, queries: torch.Tensor
) -> torch.Tensor:
    """u_yᵀ W q with W = Σ_i u_{y_i} e_iᵀ: keys (R,n,d), labels (R,n), outputs (R,M,d), queries (R,q,d) -> (R,q,M)."""
    memory = einsum(outputs[torch.arange(keys.shape[0])[:, None], labels], keys, "r n i, r n j -> r i j")
    return einsum(outputs, memory, queries, "r m i, r i j, r q j -> r q m")


def relu_scores(
    keys: torch.Tensor, labels: torch.Tensor, outputs: torch.Tensor, queries: torch.Tensor, eta: float
) -> torch.Tensor:
    """u_yᵀ Σ_i u_{y_i} ReLU(e_iᵀ q − η) -> (R, q, M)."""
    activations = F.relu(einsum(queries, keys, "r q d, r n d -> r q n") - eta)  # (R, q, n)
    by_label = einsum(
        activations, F.one_hot(labels, outputs.shape[1]).to(keys.dtype), "r q n, r n m -> r q m"
    )
    gram = einsum(outputs, outputs, "r m d, r k d -> r m k")
    return einsum(by_label, gram, "r q k, r m k -> r q m")


def hopfield_onestep(keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """sign(W q), W = Σ_i y_i x_iᵀ: keys/values (R,n,d), queries (R,q,d) -> (R,q,d) in {−1,0,1}."""
    memory = einsum(values, keys, "r n i, r n j -> r i j")
    return torch.sign(einsum(memory, queries, "r i j, r q j -> r q i"))


def hopfield_auto(keys: torch.Tensor, queries: torch.Tensor, steps: int = 20) -> tuple[torch.Tensor, int]:
    """Iterated synchronous sign updates with W = Σ x_i x_iᵀ − n I (zero diagonal).

    Returns the final states (R, q, d) and the number of updates run (stops at a fixed point).
    """
    memory = einsum(keys, keys, "r n i, r n j -> r i j")
    memory = memory - torch.diag_embed(torch.diagonal(memory, dim1=-2, dim2=-1))
    state = queries.clone()
    used = 0
    for step in range(1, steps + 1):
        used = step
        field = einsum(memory, state, "r i j, r q j -> r q i")
        new = torch.where(field == 0, state, torch.sign(field))  # a zero field keeps the bit
        if torch.equal(new, state):
            break
        state = new
    return state, used


def softmax_memory(
    keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor, beta: float
) -> torch.Tensor:
    """sign(Σ_i softmax_i(β⟨q, x_i⟩) y_i) -> (R, q, d)."""
    attention = torch.softmax(beta * einsum(queries, keys, "r q d, r n d -> r q n"), dim=-1)
    return torch.sign(einsum(attention, values, "r q n, r n d -> r q d"))


def nearest_neighbour(
    keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """y of the stored key closest to the query (largest ⟨q, x_i⟩); also whether the top is unique."""
    similarity = einsum(queries, keys, "r q d, r n d -> r q n")
    top2 = similarity.topk(min(2, similarity.shape[-1]), dim=-1)
    best = top2.indices[..., 0]
    unique = (
        (top2.values[..., 0] > top2.values[..., 1])
        if similarity.shape[-1] > 1
        else torch.ones_like(best, dtype=torch.bool)
    )
    picked = torch.gather(values, 1, best[..., None].expand(-1, -1, values.shape[-1]))
    return picked, unique


# --------------------------------------------------------------------------------------------
# recall curves


@dataclass
class RecallSetup:
    memory: str
    dims: list[int]
    sizes: list[int]  # numbers of stored associations n
    num_trials: int = 8
    num_queries: int = 256
    num_outputs: int = 2  # M, class memories
    delta: float = 0.1  # corruption of binary queries
    beta: float = 0.25  # softmax inverse temperature
    eta: float = 0.5  # relu threshold
    steps: int = 20  # auto-associative updates
    seed: int = 0

    def validate(self) -> None:
        if self.memory not in MEMORIES:
            raise ValueError(f"memory must be one of {MEMORIES}, got {self.memory!r}")
        if not self.dims or min(self.dims) < 1 or not self.sizes or min(self.sizes) < 1:
            raise ValueError("dims and sizes must be non-empty lists of integers >= 1")
        if self.num_trials < 1 or self.num_queries < 1:
            raise ValueError("num_trials and num_queries must be >= 1")
        if not 0 <= self.delta < 0.5:
            raise ValueError(f"delta must lie in [0, 0.5), got {self.delta}")
        if self.num_outputs < 2:
            raise ValueError(f"num_outputs must be >= 2, got {self.num_outputs}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        if not 0 <= self.eta < 1:  # also refuses nan; the theory rate is −½ ln(1 − η²)
            raise ValueError(f"eta must lie in [0, 1), got {self.eta}")


def _draw(setup: RecallSetup, trial: int, device) -> dict[str, torch.Tensor]:
    n_max, d_max, q_max = max(setup.sizes), max(setup.dims), min(setup.num_queries, max(setup.sizes))
    gen = generator(setup.seed, trial, 0xC0DE, device=device)
    if setup.memory in CLASS_MEMORIES:
        return {
            "keys": torch.randn(n_max, d_max, generator=gen, device=device, dtype=torch.float64),
            "labels": torch.randint(0, setup.num_outputs, (n_max,), generator=gen, device=device),
            "outputs": torch.randn(
                setup.num_outputs, d_max, generator=gen, device=device, dtype=torch.float64
            ),
        }

    def signs(*shape: int) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=gen, device=device).to(torch.float64) * 2 - 1

    return {
        "keys": signs(n_max, d_max),
        "values": signs(n_max, d_max),
        # which bits a query flips: the round(δ d) coordinates with the smallest keys among the first d
        "flip_keys": torch.rand(q_max, d_max, generator=gen, device=device, dtype=torch.float64),
    }


def _corrupt(patterns: torch.Tensor, flip_keys: torch.Tensor, delta: float) -> torch.Tensor:
    d = patterns.shape[-1]
    flips = int(round(delta * d))
    if flips == 0:
        return patterns.clone()
    rank = flip_keys.argsort(-1).argsort(-1)
    return torch.where(rank < flips, -patterns, patterns)


def stack_draws(draws: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([dr[k] for dr in draws]) for k in draws[0]}


def recall_for(
    setup: RecallSetup, stacked: dict[str, torch.Tensor], dim: int, size: int
) -> tuple[torch.Tensor, int]:
    """Per-trial recall (fraction of queried associations retrieved exactly) for n = size at d = dim.

    stacked: the trials' draws, stack_draws([_draw(setup, r, device) for r in trials]).
    """
    q = min(setup.num_queries, size)
    iterations = 1
    if setup.memory in CLASS_MEMORIES:
        keys = F.normalize(stacked["keys"][:, :size, :dim], dim=-1)
        outputs = F.normalize(stacked["outputs"][..., :dim], dim=-1)
        labels = stacked["labels"][:, :size]
        queries = keys[:, :q]
        if setup.memory == "linear":
            scores = linear_scores(keys, labels, outputs, queries)
        else:
            scores = relu_scores(keys, labels, outputs, queries, setup.eta)
        truth = labels[:, :q]
        correct = scores.gather(-1, truth[..., None])[..., 0]
        others = scores.scatter(-1, truth[..., None], float("-inf")).amax(-1)
        return (correct > others).double().mean(-1), iterations
    keys = stacked["keys"][:, :size, :dim]
    values = stacked["values"][:, :size, :dim]
    queries = _corrupt(keys[:, :q], stacked["flip_keys"][:, :q, :dim], setup.delta)
    if setup.memory == "hopfield":
        hit = (hopfield_onestep(keys, values, queries) == values[:, :q]).all(-1)
    elif setup.memory == "hopfield-auto":
        final, iterations = hopfield_auto(keys, queries, setup.steps)
        hit = (final == keys[:, :q]).all(-1)
    elif setup.memory == "softmax":
        hit = (softmax_memory(keys, values, queries, setup.beta) == values[:, :q]).all(-1)
    else:
        picked, unique = nearest_neighbour(keys, values, queries)
        hit = (picked == values[:, :q]).all(-1) & unique
    return hit.double().mean(-1), iterations


def recall_curves(
    setup: RecallSetup,
    device: str | torch.device = "cpu",
    progress: bool = False,
    threshold: float = 0.99,
    patience: int = 6,
) -> dict:
    """Recall of every trial for every (d, n): {"recall": (R, D, S), "iterations": (D, S)}.

    For each d the sizes are swept upwards and the sweep stops once the mean recall has stayed
    below `threshold` for `patience` consecutive sizes (1.5 octaves of the default grid): the rest
    is NaN (not measured). Only the first failure matters for the capacity, and the large-n
    memories are the expensive ones.
    """
    setup.validate()
    stacked = stack_draws([_draw(setup, trial, device) for trial in range(setup.num_trials)])
    recall = torch.full(
        (setup.num_trials, len(setup.dims), len(setup.sizes)), float("nan"), dtype=torch.float64
    )
    iterations = torch.ones(len(setup.dims), len(setup.sizes), dtype=torch.long)
    rows = range(len(setup.dims))
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, desc=setup.memory, leave=False)
    for a in rows:
        below = 0
        for b, size in enumerate(setup.sizes):
            recall[:, a, b], iterations[a, b] = recall_for(setup, stacked, setup.dims[a], size)
            below = below + 1 if recall[:, a, b].mean() < threshold else 0
            if below >= patience:
                break
    return {"recall": recall, "iterations": iterations}


def capacity_from_recall(
    mean_recall: torch.Tensor, sizes: Sequence[int], threshold: float = 0.99
) -> list[int]:
    """n*(d): the largest n on the grid reached before the first n with recall < threshold.

    mean_recall (D, S). 0 when the smallest n already fails; sizes[-1] (a lower bound) when none fails.
    """
    capacities = []
    for row in mean_recall:
        failing = ((row < threshold) | row.isnan()).nonzero()  # NaN: not measured, after failures
        first_fail = int(failing[0]) if failing.numel() else len(sizes)
        capacities.append(int(sizes[first_fail - 1]) if first_fail > 0 else 0)
    return capacities


def size_grid(max_size: int, per_octave: int = 4) -> list[int]:
    """1, 2, ..., 16 then about per_octave sizes per doubling up to max_size."""
    sizes = set(range(1, min(16, max_size) + 1))
    k = 0
    while True:
        n = int(round(16 * 2 ** (k / per_octave)))
        if n > max_size:
            break
        sizes.add(n)
        k += 1
    return sorted(sizes)


# --------------------------------------------------------------------------------------------
# theory and cost


def binary_entropy(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log(p) + (1 - p) * math.log(1 - p))


def theory_capacity(memory: str, d: int, delta: float, eta: float) -> tuple[str, float]:
    """(form, value up to a constant) of the theoretical capacity at dimension d."""
    if memory == "linear":
        return "d", float(d)
    if memory == "hopfield":
        return "d / (2 ln d)", d / (2 * math.log(d))
    if memory == "hopfield-auto":
        return "d / (4 ln d)", d / (4 * math.log(d))
    if memory in ("softmax", "nearest"):
        rate = math.log(2) - binary_entropy(delta)
        return f"exp({rate:.3f} d)", math.exp(rate * d)
    # relu: recall is exact when no cross-talk e_iᵀe_x exceeds η; on the sphere
    # P(e_iᵀe_x > η) ≈ (1 − η²)^(d/2), so n* >~ exp(c d) with c = −½ ln(1 − η²) (a lower bound)
    rate = -0.5 * math.log(1 - eta**2)
    return f"exp({rate:.3f} d)", math.exp(rate * d)


def cost_per_query(memory: str, d: int, n: int, num_outputs: int, iterations: int = 1) -> dict[str, float]:
    """Parameters stored and multiply-adds per query of a memory holding n associations at dimension d."""
    if memory == "linear":
        return {"parameters": d * d, "flops": 2 * (d * d + num_outputs * d)}
    if memory == "hopfield":
        return {"parameters": d * d, "flops": 2 * d * d}
    if memory == "hopfield-auto":
        return {"parameters": d * d, "flops": 2 * d * d * iterations}
    if memory == "relu":  # keys, their labels' embeddings, the output embeddings
        return {"parameters": n * d + num_outputs * d, "flops": 2 * n * d + 2 * num_outputs * d}
    if memory == "softmax":  # keys and values; scores, exp, weighted sum
        return {"parameters": 2 * n * d, "flops": 4 * n * d + n}
    return {"parameters": 2 * n * d, "flops": 2 * n * d}


# --------------------------------------------------------------------------------------------
# growth of the capacity with d


@dataclass(frozen=True)
class GrowthFit:
    slope: float  # log-log slope (polynomial memories) or rate c of exp(c d)
    intercept: float  # of log n* against log d (or d)
    points: int  # (d, n*) points fitted
    ci_low: float = math.nan  # bootstrap 95% interval over trials (nan: no resample could be fitted)
    ci_high: float = math.nan


def fit_growth(
    memory: str, dims: Sequence[int], capacities: Sequence[int], max_size: int
) -> GrowthFit | None:
    """Exponent of the growth: log-log slope (polynomial memories) or rate c in exp(c d).

    Censored points (n* = 0, or n* = the largest n tried) are left out; None under 2 points.
    """
    keep = [(d, n) for d, n in zip(dims, capacities) if 0 < n < max_size]
    if len(keep) < 2:
        return None
    d, n = np.array(keep, dtype=float).T
    x = np.log(d) if memory in POLYNOMIAL else d
    slope, intercept = np.polyfit(x, np.log(n), 1)
    return GrowthFit(float(slope), float(intercept), len(keep))


def fit_growth_with_ci(
    memory: str,
    dims: Sequence[int],
    sizes: Sequence[int],
    recall: torch.Tensor,
    threshold: float,
    generator: torch.Generator,
    num_boot: int = 200,
) -> tuple[list[int], GrowthFit | None]:
    """n*(d) of the trial-mean recall (R, D, S), its growth fit, and a bootstrap CI over trials.

    Each resample recomputes the capacities and the fit from trials drawn with replacement;
    `generator` is consumed by exactly num_boot draws (a caller sharing it across memories gets the
    same numbers whatever the fits give).
    """
    trials = recall.shape[0]
    capacities = capacity_from_recall(recall.nanmean(0), sizes, threshold)
    fit = fit_growth(memory, dims, capacities, sizes[-1])
    boots = []
    for _ in range(num_boot):
        pick = torch.randint(0, trials, (trials,), generator=generator)
        b = fit_growth(
            memory, dims, capacity_from_recall(recall[pick].nanmean(0), sizes, threshold), sizes[-1]
        )
        if b is not None:
            boots.append(b.slope)
    if fit is not None and boots:
        low, high = (float(v) for v in np.quantile(boots, [0.025, 0.975]))
        fit = GrowthFit(fit.slope, fit.intercept, fit.points, low, high)
    return capacities, fit


def theory_exponent(memory: str, dims: Sequence[int], delta: float, eta: float) -> tuple[float, str]:
    """(exponent, what it is) of the theoretical capacity growth, comparable with fit_growth's slope."""
    if memory == "linear":
        return 1.0, "log-log slope"
    if memory in POLYNOMIAL:  # local log-log slope of d / log d over the grid
        return float(np.polyfit(np.log(dims), np.log([d / math.log(d) for d in dims]), 1)[0]), "log-log slope"
    if memory == "relu":
        # no cross-talk term above η means exact recall: n P(e·e' > η) small, P ≈ (1 − η²)^(d/2)
        return -0.5 * math.log(1 - eta**2), "rate c in exp(c d) (theory: a lower bound)"
    return math.log(2) - binary_entropy(delta), "rate c in exp(c d)"
