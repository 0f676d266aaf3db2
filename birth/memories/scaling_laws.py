"""Linear associative memories W = Σ_x q(x) u_{f*(x)} e_xᵀ and their exact generalization error.

Setting of *Scaling Laws for Associative Memories* (Cabannes, Dohmatob, Bietti, ICLR 2024): input
embeddings e_x ∈ R^d (x ∈ [N]), output embeddings u_y ∈ R^d (y ∈ [M]), a storage scheme q(x) >= 0,
and the read-out f_W(x) = argmax_y u_yᵀ W e_x. The error is the exact expectation

    E(q) = Σ_x p(x) 1{f_W(x) ≠ f*(x)}          (a sum over the N tokens, nothing sampled)

split into a head part (x < head_size) and a tail part that add up to it. A tie at the top score
counts as wrong (the read-out is then not determined; this also makes q ≡ 0 an error of 1).

Storage schemes (functions of the counts n_x of the T samples; pass `counts = p` for T = ∞):
  - frequency:  q = p̂ = n_x / T
  - power:      q = p̂^ρ on seen tokens, 0 on unseen ones
  - seen:       q = 1{n_x >= s} (s = 1: every seen token)
  - threshold:  q = p̂^ρ on the P seen tokens with the largest counts (ρ = 0: weight 1), 0 elsewhere;
                ties in n_x are broken towards the smaller token index (the more frequent token
                under Zipf), so the selected set is deterministic. P may depend on d (paper: P = d/8).
  - sgd:        q_γ(x) = F(n_x), F(n) = f∘…∘f(0) (n times), f(q) = q + γ / (1 + M⁻¹ e^q).
                This is the decoupled approximation of SGD with batch size 1 and step γ from W = 0
                (Cabannes, Simsek, Bietti 2024; seed slides): when the e_x are quasi-orthogonal,
                each sample of x only moves the coefficient q(x) of u_{f*(x)} e_xᵀ, by γ times the
                cross-entropy gradient 1 - softmax = 1 / (1 + e^q / M) (exactly (M-1) instead of M
                with one-hot embeddings; we follow the slides). F grows like log(n) for large n.

Vectorization. Scores are computed for all trials and all d at once, grouped by output:
    u_yᵀ W e_x = Σ_z (u_yᵀ u_z) · A[z, x],   A[z, x] = (Σ_{x': f*(x')=z} q(x') e_x')ᵀ e_x,
so nothing of size d × d or N × N is ever formed (cost M·N·d instead of N·d² per d). With one
Gaussian draw at d_max truncated across d, A and the output Gram matrix at dimension d are sums
over the first d coordinates: they are accumulated block by block as d grows, in one pass that
reads each coordinate block of the inputs once for every scheme and every d (for a d-dependent q
such as P = d/8, the block is multiplied with the stored sums Σ q_d(x') e_x' of every larger d in
one product). The draws are float32 normals (whatever the compute dtype), drawn for several trials
side by side and converted one block at a time. Sphere embeddings, whose normalization changes
with d, and independent draws cost one pass of M·N·d per d.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from birth.base.seeds import generator

EmbeddingKind = Literal["gaussian", "sphere"]
DrawMode = Literal["truncate", "independent"]
Scheme = Literal["frequency", "power", "seen", "threshold", "sgd"]
EMBEDDING_KINDS: tuple[str, ...] = get_args(EmbeddingKind)
DRAW_MODES: tuple[str, ...] = get_args(DrawMode)
SCHEMES: tuple[str, ...] = get_args(Scheme)


# --------------------------------------------------------------------------------------------
# storage schemes q


def _frequencies(counts: torch.Tensor) -> torch.Tensor:
    totals = counts.sum(-1, keepdim=True)
    # T = 0: no data, p̂ := 0 rather than 0/0
    return torch.where(totals > 0, counts / totals.clamp_min(1e-300), torch.zeros_like(counts))


def q_frequency(counts: torch.Tensor) -> torch.Tensor:
    """q = p̂ (empirical frequency). counts: (..., N)."""
    return _frequencies(counts)


def q_power(counts: torch.Tensor, rho: float) -> torch.Tensor:
    """q = p̂^ρ on seen tokens, 0 on unseen ones (so ρ = 0 gives 1{seen}, ρ = 1 gives p̂)."""
    if rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    freq = _frequencies(counts)
    return torch.where(counts > 0, freq.pow(rho), torch.zeros_like(freq))


def q_seen(counts: torch.Tensor, min_count: int = 1) -> torch.Tensor:
    """q = 1{x seen at least min_count times} (min_count = 1: seen at all).

    min_count > 1 needs integer counts (finite T): at T = ∞ the "counts" are probabilities.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    threshold = 0 if min_count == 1 else min_count - 0.5  # counts >= s, robust to float counts
    return (counts > threshold).to(counts.dtype if counts.is_floating_point() else torch.float64)


def q_threshold(counts: torch.Tensor, top: int | Sequence[int], rho: float = 0.0) -> torch.Tensor:
    """q = p̂^ρ on the `top` most frequent seen tokens (ties: smaller index first), 0 elsewhere.

    counts (..., N). With an int `top` the result is (..., N); with a sequence of P values (one per
    d, e.g. P = d/8) it is (..., len(top), N).
    """
    counts = counts.to(torch.float64) if not counts.is_floating_point() else counts
    tops = torch.as_tensor(np.atleast_1d(np.asarray(top, dtype=np.int64)), device=counts.device)
    if (tops < 0).any():
        raise ValueError(f"threshold P must be >= 0, got {top}")
    # a stable descending sort keeps equal counts in index order: ties go to the smaller index
    order = torch.sort(counts, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(counts.shape[-1], device=counts.device).expand_as(order))
    selected = (rank.unsqueeze(-2) < tops[:, None]) & (counts.unsqueeze(-2) > 0)
    weights = q_power(counts, rho).unsqueeze(-2) * selected
    return weights.squeeze(-2) if isinstance(top, (int, np.integer)) else weights


def sgd_scheme_table(
    max_count: int, gamma: float, num_outputs: int, orthonormal: bool = False
) -> torch.Tensor:
    """F(n) for n = 0..max_count, F(n) = f^n(0), f(q) = q + γ / (1 + e^q / M), float64.

    A fresh iteration from q = 0 for every call (the reference's q_γ plot kept its state across γ).
    `orthonormal`: the exact coefficient of u_{f*(x)} e_xᵀ after n SGD steps on x with orthonormal
    embeddings instead. The M − 1 wrong outputs then share the coefficient −q / (M − 1) (the
    softmax residual sums to 0), the margin is q M / (M − 1), and
    f(q) = q + γ / (1 + e^{q M / (M − 1)} / (M − 1)); the slides' f drops the wrong outputs' share.
    """
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
    if num_outputs < (2 if orthonormal else 1):
        raise ValueError(f"num_outputs must be >= {2 if orthonormal else 1}, got {num_outputs}")
    table = np.zeros(int(max_count) + 1)
    q = 0.0
    scale, divisor = (num_outputs / (num_outputs - 1), num_outputs - 1) if orthonormal else (1.0, num_outputs)
    for n in range(1, int(max_count) + 1):
        # e^q / M overflows only when the step is already ~0: cap the exponent
        q = q + gamma / (1.0 + np.exp(min(q * scale, 700.0)) / divisor)
        table[n] = q
    return torch.from_numpy(table)


def q_sgd(counts: torch.Tensor, gamma: float, num_outputs: int) -> torch.Tensor:
    """q_γ(x) = F(n_x): the decoupled SGD approximation (batch 1, step γ, from W = 0)."""
    if counts.numel() and (counts != counts.round()).any():
        raise ValueError("the sgd scheme needs integer counts (finite T), not probabilities")
    as_int = counts.round().long()
    table = sgd_scheme_table(int(as_int.max()) if as_int.numel() else 0, gamma, num_outputs)
    return table.to(counts.device)[as_int].to(counts.dtype if counts.is_floating_point() else torch.float64)


def storage_weights(
    counts: torch.Tensor,
    scheme: Scheme,
    *,
    rho: float | None = None,
    top: int | Sequence[int] | None = None,
    gamma: float | None = None,
    num_outputs: int | None = None,
    min_count: int | None = None,
) -> torch.Tensor:
    """Dispatch to one of SCHEMES by name (see the module docstring).

    rho: needed by "power"; for "threshold" it defaults to 0 (weight 1 on the kept tokens).
    min_count: "seen" stores the tokens seen at least this many times (default 1).
    """
    if scheme == "frequency":
        return q_frequency(counts)
    if scheme == "power":
        if rho is None:
            raise ValueError("the power scheme needs `rho`")
        return q_power(counts, rho)
    if scheme == "seen":
        return q_seen(counts, 1 if min_count is None else min_count)
    if scheme == "threshold":
        if top is None:
            raise ValueError("the threshold scheme needs `top` (P)")
        return q_threshold(counts, top, rho=0.0 if rho is None else rho)
    if scheme == "sgd":
        if gamma is None or num_outputs is None:
            raise ValueError("the sgd scheme needs `gamma` and `num_outputs`")
        return q_sgd(counts, gamma, num_outputs)
    raise ValueError(f"unknown scheme {scheme!r}; choose one of {SCHEMES}")


# --------------------------------------------------------------------------------------------
# embeddings


@dataclass
class MemoryEmbeddings:
    """Embeddings of a set of trials, for a list of dimensions.

    truncate mode: `inputs` (R, N, d_max), `outputs` (R, M, d_max) standard normal draws, and the
    embeddings at dimension d are their first d coordinates, scaled by 1/√d (Gaussian N(0, I/d)) or
    normalized to the unit sphere. independent mode: `inputs[k]`, `outputs[k]` are separate draws of
    width dims[k].
    """

    dims: list[int]
    kind: EmbeddingKind
    mode: DrawMode
    inputs: torch.Tensor | list[torch.Tensor]
    outputs: torch.Tensor | list[torch.Tensor]

    def raw(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled standard-normal coordinates at dims[k]."""
        if self.mode == "truncate":
            d = self.dims[k]
            return self.inputs[..., :d], self.outputs[..., :d]
        return self.inputs[k], self.outputs[k]

    def at(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(e, u) at dimension dims[k]: shapes (R, N, d), (R, M, d)."""
        e, u = self.raw(k)
        if self.kind == "gaussian":
            scale = self.dims[k] ** -0.5
            return e * scale, u * scale
        return F.normalize(e, dim=-1), F.normalize(u, dim=-1)


def draw_embeddings(
    trials: Sequence[int],
    num_inputs: int,
    num_outputs: int,
    dims: Sequence[int],
    *,
    seed: int,
    kind: EmbeddingKind = "gaussian",
    mode: DrawMode = "truncate",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    out: torch.Tensor | None = None,
) -> MemoryEmbeddings:
    """Embeddings of the given trial indices; trial r's numbers depend only on (seed, r).

    `out`: truncate mode, a contiguous tensor whose storage is reused for the draws when it is large
    enough (repeated calls then do not allocate and page-fault a fresh buffer each time); ignored in
    independent mode, whose draws of several widths must not share storage.
    """
    if kind not in EMBEDDING_KINDS:
        raise ValueError(f"embedding kind must be one of {EMBEDDING_KINDS}, got {kind!r}")
    if mode not in DRAW_MODES:
        raise ValueError(f"draw mode must be one of {DRAW_MODES}, got {mode!r}")
    dims = [int(d) for d in dims]
    if not dims or min(dims) < 1:
        raise ValueError(f"dimensions must be >= 1, got {dims}")

    def draws(
        width: int, *stream: int, storage: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # drawn coordinate-major, (width, N + M) per trial, so that the first d coordinates of every
        # embedding are one contiguous block and products over them need no copy
        shape = (len(trials), width, num_inputs + num_outputs)
        size = math.prod(shape)
        reusable = storage is not None and storage.numel() >= size and storage.dtype == dtype
        if reusable and storage.device == torch.device(device):
            both = storage.view(-1)[:size].view(shape)
        else:
            both = torch.empty(shape, device=device, dtype=dtype)

        def draw(row: int) -> None:
            gen = generator(seed, trials[row], *stream, device=device)
            # float32 normals whatever the compute dtype: float32 and float64 runs then use the
            # same embeddings (and float32 draws are cheaper to generate)
            if dtype == torch.float32:
                torch.randn(width, num_inputs + num_outputs, generator=gen, device=device, out=both[row])
            else:
                both[row].copy_(torch.randn(width, num_inputs + num_outputs, generator=gen, device=device))

        workers = min(torch.get_num_threads(), len(trials)) if torch.device(device).type == "cpu" else 1
        if workers > 1:
            # one generator per trial and normal_ runs on one core: draw trials side by side (the
            # numbers do not depend on which thread draws them)
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(draw, range(len(trials))))
        else:
            for row in range(len(trials)):
                draw(row)
        both = both.transpose(-1, -2)  # (R, N + M, width) view
        return both[:, :num_inputs], both[:, num_inputs:]

    if mode == "truncate":
        return MemoryEmbeddings(dims, kind, mode, *draws(max(dims), storage=out))
    inputs, outputs = [], []
    for d in dims:
        e, u = draws(d, 1, d)  # keyed by d, so the order of dims does not matter
        inputs.append(e)
        outputs.append(u)
    return MemoryEmbeddings(dims, kind, mode, inputs, outputs)


# --------------------------------------------------------------------------------------------
# exact error


def errors_from_scores(
    scores: torch.Tensor, targets: torch.Tensor, probs: torch.Tensor, head_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (head, tail) errors from scores (..., M, N) of every output y for every input x.

    head = Σ_{x < head_size} p(x) 1{wrong}, tail = the rest; a tie at the top and a non-finite
    score count as wrong.
    """
    index = targets.expand(*scores.shape[:-2], 1, -1)
    correct = scores.gather(-2, index)
    others = scores.scatter(-2, index, float("-inf")).amax(-2, keepdim=True)
    # right = strictly above every other output and every score of x finite: a tie counts as
    # wrong, and so does a diverged memory (NaN compares false both ways, inf beats anything)
    right = (correct > others).squeeze(-2) & torch.isfinite(scores).all(-2)
    wrong = (~right).to(probs.dtype)
    weighted = wrong * probs
    return weighted[..., :head_size].sum(-1), weighted[..., head_size:].sum(-1)


def memory_scores_bruteforce(
    weights: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor
) -> torch.Tensor:
    """Scores u_yᵀ W e_x with W = Σ_x q(x) u_{f*(x)} e_xᵀ formed explicitly (the d × d matrix).

    weights (N,), inputs (N, d), outputs (M, d) -> (M, N). Reference for tests and the benchmark.
    """
    memory = outputs[targets].T @ (weights[:, None] * inputs)  # (d, d)
    return outputs @ memory @ inputs.T


def memory_errors(
    weights: torch.Tensor | Sequence[torch.Tensor],
    targets: torch.Tensor,
    probs: torch.Tensor,
    dims: Sequence[int],
    *,
    num_trials: int,
    seed: int,
    num_outputs: int | None = None,
    kind: EmbeddingKind = "gaussian",
    mode: DrawMode = "truncate",
    head_size: int | None = None,
    trial_chunk: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Exact errors of the memories W = Σ_x q(x) u_{f*(x)} e_xᵀ for all trials, schemes and d.

    weights: q of shape (R_q, B, D_q, N), where R_q is 1 (shared by all trials) or num_trials,
      B indexes schemes / sample sizes, and D_q is 1 (same q for every d) or len(dims); or a list
      of such tensors (same N), evaluated on the same embeddings and concatenated along B.
    targets: f*(x), (N,) long; probs: p(x), (N,); num_outputs: M (default max f* + 1).
    Returns {"error", "head", "tail"}: float64 tensors of shape (num_trials, B, len(dims)) on the
    CPU; error = head + tail, head = Σ_{x < head_size} p(x) 1{wrong} (default head_size = N // 10).
    """
    if isinstance(weights, torch.Tensor):
        weights = [weights]
    weights = list(weights)
    if not weights or any(w.ndim != 4 for w in weights):
        raise ValueError("weights must be tensors of shape (trials|1, B, dims|1, N)")
    num_inputs = weights[0].shape[-1]
    if num_outputs is None:  # a random f* may miss the last outputs: pass M to be safe
        num_outputs = int(targets.max()) + 1
    elif targets.numel() and int(targets.max()) >= num_outputs:
        raise ValueError(f"targets must lie in [0, {num_outputs}), got max {int(targets.max())}")
    dims = [int(d) for d in dims]
    if targets.shape != (num_inputs,) or probs.shape != (num_inputs,):
        raise ValueError(
            f"targets and probs must have shape ({num_inputs},), got {tuple(targets.shape)}, {tuple(probs.shape)}"
        )
    for w in weights:
        if w.shape[-1] != num_inputs:
            raise ValueError(f"all weights must have N = {num_inputs} columns, got {w.shape[-1]}")
        if w.shape[0] not in (1, num_trials):
            raise ValueError(f"weights has {w.shape[0]} trials, expected 1 or {num_trials}")
        if w.shape[2] not in (1, len(dims)):
            raise ValueError(f"weights has {w.shape[2]} dims, expected 1 or {len(dims)}")
        if (w < 0).any():
            raise ValueError("storage weights q must be >= 0")
    if num_trials < 1 or trial_chunk < 1:
        raise ValueError("num_trials and trial_chunk must be >= 1")
    head_size = num_inputs // 10 if head_size is None else int(head_size)
    # the prefix accumulation needs increasing d; results are put back in the caller's order
    order = sorted(range(len(dims)), key=lambda k: dims[k])
    sorted_dims = [dims[k] for k in order]

    weights = [w.to(device=device, dtype=dtype) for w in weights]
    # where each weight tensor's schemes go along the B axis of the result
    offsets = np.cumsum([0] + [w.shape[1] for w in weights]).tolist()
    targets = targets.to(device)
    probs_dev = probs.to(device=device, dtype=torch.float64)
    one_hot = F.one_hot(targets, num_outputs).T.to(dtype)  # (M, N)
    head = torch.zeros(num_trials, offsets[-1], len(dims), dtype=torch.float64)
    tail = torch.zeros_like(head)

    truncated_gaussian = mode == "truncate" and kind == "gaussian"
    # truncated Gaussian: the draws are float32 normals whatever the dtype (see draw_embeddings);
    # they stay float32 and are converted one coordinate block at a time (the same numbers, no
    # d_max-wide float64 copy)
    draw_dtype = torch.float32 if truncated_gaussian else dtype
    chunks = [list(range(s, min(s + trial_chunk, num_trials))) for s in range(0, num_trials, trial_chunk)]

    # one storage for the draws of every chunk (truncate mode: all chunks have the same shape)
    storage = None
    if mode == "truncate":
        size = min(trial_chunk, num_trials) * max(dims) * (num_inputs + num_outputs)
        storage = torch.empty(size, dtype=draw_dtype, device=device)

    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="trials", unit="chunk", leave=False)
    for trials in chunks:
        emb = draw_embeddings(
            trials,
            num_inputs,
            num_outputs,
            sorted_dims,
            seed=seed,
            kind=kind,
            mode=mode,
            device=device,
            dtype=draw_dtype,
            out=storage,
        )
        rows = slice(trials[0], trials[-1] + 1)
        qs = [w if w.shape[0] == 1 else w[rows] for w in weights]
        if truncated_gaussian:
            scores_per_d = _truncated_gaussian_scores(qs, emb, sorted_dims, order, one_hot, dtype)
            for position, scores in enumerate(scores_per_d):
                h, t = errors_from_scores(scores, targets, probs_dev, head_size)
                head[rows, :, order[position]] = h.cpu()
                tail[rows, :, order[position]] = t.cpu()
            continue
        for q, first, last in zip(qs, offsets[:-1], offsets[1:]):
            # q split by output: grouped[r, b, k, z, x] = q(x) 1{f*(x) = z}
            grouped = rearrange(q, "r b k n -> r b k 1 n") * one_hot
            d_dependent = q.shape[2] > 1
            scores_per_d = _per_d_scores(grouped, emb, sorted_dims, order if d_dependent else None)
            for position, scores in enumerate(scores_per_d):
                h, t = errors_from_scores(scores, targets, probs_dev, head_size)
                head[rows, first:last, order[position]] = h.cpu()
                tail[rows, first:last, order[position]] = t.cpu()
    return {"error": head + tail, "head": head, "tail": tail}


def _sparse_enough(weights: torch.Tensor, dims: list[int]) -> bool:
    """Whether the block accumulation with d-dependent q is cheaper than one pass per d.

    It multiplies each coordinate block with Σ q_d(x') e_x' of every larger d, built from the
    support only (tokens with q > 0 for some d; cost ∝ |support| · D · d_max), while the per-d pass
    reads the first d coordinates of all N inputs for every d (∝ N · Σ_d d).
    """
    support = int((weights > 0).flatten(0, -2).any(0).sum())
    return support * len(dims) * max(dims) <= weights.shape[-1] * sum(dims)


def _truncated_gaussian_scores(
    qs: list[torch.Tensor],
    emb: MemoryEmbeddings,
    dims: list[int],
    order: list[int],
    one_hot: torch.Tensor,
    dtype: torch.dtype,
):
    """Scores of every storage scheme at every d (increasing), in one pass over coordinate blocks.

    Truncated Gaussian embeddings: the match A_d[z, x] = Σ_{x'→z} q_d(x') e_x'[:d] · e_x[:d] and the
    output Gram u[:d] u[:d]ᵀ at dimension d are sums over coordinate blocks, so each block of the
    (float32, coordinate-major) draws is read once, converted to `dtype` and used for every scheme
    and every larger d while it is in cache:
      - q independent of d (q = 1, q = p, ...): Σ_{x'→z} q(x') e_x'[block] is formed from the block
        itself and multiplied back with it;
      - q depending on d with a small support (e.g. P = d/8): the block is multiplied with the
        stored sums of every larger d at once, using the support's coordinates only;
      - q depending on d with a large support: one product over the first d coordinates per d.
    qs: (r|1, B_i, D_i, N) each. Yields (r, Σ B_i, M, N): the scores u_yᵀ W e_x times d² (both
    embeddings unscaled; a positive factor changes neither the argmax nor ties).
    """
    e_major = emb.inputs.transpose(-1, -2)  # (r, d_max, N) views of the draws, unit stride along N
    u_major = emb.outputs.transpose(-1, -2)  # (r, d_max, M)
    r, num_outputs, num_inputs = e_major.shape[0], one_hot.shape[0], e_major.shape[-1]
    num_dims = len(dims)
    device = e_major.device
    flat, flat_cols, sparse, sparse_cols, dense = [], [], [], [], []
    column = 0
    for q in qs:
        # q split by output: grouped[r, b, k, z, x] = q(x) 1{f*(x) = z}
        grouped = rearrange(q.to(dtype), "r b k n -> r b k 1 n") * one_hot
        cols = list(range(column, column + q.shape[1]))
        column += q.shape[1]
        if q.shape[2] == 1:
            # (B, M) folded into one axis: one batched product per block, the inputs never broadcast
            flat.append(rearrange(grouped[:, :, 0], "r b m n -> r (b m) n").expand(r, -1, -1))
            flat_cols += cols
        elif _sparse_enough(q, dims):
            sparse.append(grouped[:, :, order])
            sparse_cols += cols
        else:
            dense.append((grouped[:, :, order], torch.tensor(cols, device=device)))
    total = column
    if flat:
        flat_q = torch.cat(flat, 1)  # (r, F, N)
        match_flat = torch.zeros(r, flat_q.shape[1], num_inputs, dtype=dtype, device=device)
        flat_cols = torch.tensor(flat_cols, device=device)
    if sparse:
        # tokens stored for some scheme and some d; q restricted to them before any broadcast
        support = torch.stack([(g > 0).flatten(0, -2).any(0) for g in sparse]).any(0)
        support = support.nonzero().squeeze(-1)
        grouped = torch.cat([g[..., support].expand(r, -1, -1, -1, -1) for g in sparse], 1)
        by_d = rearrange(grouped, "r b k m s -> r k (b m) s")  # (r, D, Bs·M, S)
        # (r, d_max, S): the stored tokens' coordinates (a slice when they are the first S tokens)
        first_tokens = bool((support == torch.arange(len(support), device=device)).all())
        support_major = (e_major[..., : len(support)] if first_tokens else e_major[..., support]).to(dtype)
        match_sparse = torch.zeros(r, num_dims, by_d.shape[2], num_inputs, dtype=dtype, device=device)
        sparse_cols = torch.tensor(sparse_cols, device=device)
    gram_out = torch.zeros(r, 1, num_outputs, num_outputs, dtype=dtype, device=device)
    # one buffer for the converted blocks (a fresh large tensor per block would page-fault anew)
    widest = max(b - a for a, b in zip([0] + dims[:-1], dims))
    if e_major.dtype != dtype:
        buffer = torch.empty(r, widest, num_inputs, dtype=dtype, device=device)
    previous = 0
    for j, d in enumerate(dims):
        if e_major.dtype == dtype:
            block = e_major[:, previous:d]  # (r, c, N) view, rows of unit stride
        else:
            block = buffer[:, : d - previous]  # (r, c, N), each matrix contiguous
            block.copy_(e_major[:, previous:d])
        outputs = u_major[:, previous:d].to(dtype)  # (r, c, M)
        gram_out += (outputs.transpose(-1, -2) @ outputs).unsqueeze(1)
        scores = torch.empty(r, total, num_outputs, num_inputs, dtype=dtype, device=device)
        if flat:
            match_flat += (flat_q @ block.transpose(-1, -2)) @ block
            by_scheme = rearrange(match_flat, "r (b m) n -> r b m n", m=num_outputs)
            scores.index_copy_(1, flat_cols, gram_out @ by_scheme)
        if sparse:
            later = rearrange(by_d[:, j:], "r k bm s -> r (k bm) s")
            # Σ q_{d_k}(x') e_x'[block] for every k >= j
            stored = later @ support_major[:, previous:d].transpose(-1, -2)
            match_sparse[:, j:] += rearrange(stored @ block, "r (k bm) n -> r k bm n", k=num_dims - j)
            by_scheme = rearrange(match_sparse[:, j], "r (b m) n -> r b m n", m=num_outputs)
            scores.index_copy_(1, sparse_cols, gram_out @ by_scheme)
        if dense:
            prefix = e_major[:, :d].to(dtype)  # (r, d, N)
            for grouped_d, cols in dense:
                flat_d = rearrange(grouped_d[:, :, j], "r b m n -> r (b m) n")
                match = (flat_d @ prefix.transpose(-1, -2)) @ prefix
                by_scheme = rearrange(match, "r (b m) n -> r b m n", m=num_outputs)
                scores.index_copy_(1, cols, gram_out @ by_scheme)
        previous = d
        yield scores


def _per_d_scores(grouped: torch.Tensor, emb: MemoryEmbeddings, dims: list[int], order: list[int] | None):
    """Scores at each d separately (sphere embeddings or independent draws; q may depend on d).

    grouped (r|1, B, D|1, M, N).
    """
    num_schemes = grouped.shape[1]
    for position, d in enumerate(dims):
        # Gaussian: use the raw coordinates and apply the 1/√d scales to the small results below
        # instead of copying the (r, N, d) inputs; sphere: the normalization needs the copy
        e, u = emb.raw(position) if emb.kind == "gaussian" else emb.at(position)
        g = grouped[:, :, 0] if order is None else grouped[:, :, order[position]]
        flat = rearrange(g, "r b m n -> r (b m) n")  # (B, M) folded: e is never broadcast over schemes
        match = (flat @ e) @ e.transpose(-1, -2)  # (r, B·M, N)
        gram_out = u @ u.transpose(-1, -2)  # (r, M, M)
        if emb.kind == "gaussian":
            gram_out = gram_out / (d * d)  # one 1/d from e (in match), one from u
        yield gram_out.unsqueeze(1) @ rearrange(match, "r (b m) n -> r b m n", b=num_schemes)


# --------------------------------------------------------------------------------------------
# scaling-law fits


@dataclass
class PowerLawFit:
    slope: float
    intercept: float  # log(error) = intercept + slope · log(x)
    ci_low: float
    ci_high: float
    num_points: int

    def as_dict(self) -> dict[str, float]:
        return {
            "slope": self.slope,
            "intercept": self.intercept,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "num_points": self.num_points,
        }


def fit_power_law(
    xs: Sequence[float],
    errors: torch.Tensor,
    *,
    seed: int = 0,
    num_boot: int = 1000,
    level: float = 0.95,
    mask: Sequence[bool] | None = None,
) -> PowerLawFit:
    """Least-squares slope of log(mean error) against log(x), with a bootstrap CI over trials.

    errors: (num_trials, len(xs)). Points whose mean error is 0 (log undefined) or masked out are
    dropped; a bootstrap resample that zeroes a kept point drops it for that resample. The CI is
    the percentile interval of the slope over `num_boot` resamples of the trials.
    """
    errors = torch.as_tensor(errors, dtype=torch.float64)
    log_x = torch.log(torch.as_tensor(list(xs), dtype=torch.float64))
    keep = errors.mean(0) > 0
    if mask is not None:
        keep &= torch.as_tensor(list(mask), dtype=torch.bool)
    if int(keep.sum()) < 2:
        raise ValueError("a power-law fit needs at least 2 points with a non-zero error")

    def slope_of(mean_err: torch.Tensor) -> tuple[float, float]:
        ok = keep & (mean_err > 0)
        x, y = log_x[ok], torch.log(mean_err[ok])
        if x.numel() < 2:
            return float("nan"), float("nan")
        xc = x - x.mean()
        slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
        return slope, float(y.mean() - slope * x.mean())

    slope, intercept = slope_of(errors.mean(0))
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, errors.shape[0], (num_boot, errors.shape[0]), generator=gen)
    boots = np.array([slope_of(errors[p].mean(0))[0] for p in picks])
    boots = boots[np.isfinite(boots)]
    tail = (1 - level) / 2
    low, high = np.quantile(boots, [tail, 1 - tail]) if boots.size else (float("nan"),) * 2
    return PowerLawFit(slope, intercept, float(low), float(high), int(keep.sum()))


# --------------------------------------------------------------------------------------------
# predicted error (theory) and its constant


def memory_term(weights: torch.Tensor, probs: torch.Tensor, dims: Sequence[int], c: float) -> torch.Tensor:
    """p{x : q(x)² d < c ‖q‖²}: the finite-memory part of the predicted error, one value per d.

    A token is lost when its signal q(x) is below the interference of the other memories, whose
    standard deviation is ‖q‖ / √d (Theorem 1 of the scaling-law paper, up to its constant c and
    its log factors). The square makes the condition invariant to the scale of q, as the error
    is; the seed slides write q(x) d < c ‖q‖², which is not, and whose exponent for q = p would be
    −(α−1)/α instead of the −(α−1)/(2α) of their own table. q ≡ 0 loses every token.
    weights: q of shape (N,) or (len(dims), N) (one q per d, e.g. P = d/8). Returns (len(dims),).
    """
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"the constant c must be a finite number > 0, got {c}")
    q = torch.as_tensor(weights, dtype=torch.float64)
    q = q.expand(len(dims), -1) if q.ndim == 1 else q
    if q.shape[0] != len(dims):
        raise ValueError(f"weights must have shape (N,) or ({len(dims)}, N), got {tuple(q.shape)}")
    d = torch.tensor([float(v) for v in dims], dtype=torch.float64)[:, None]
    norm2 = (q * q).sum(-1, keepdim=True)
    lost = (q * q * d < c * norm2) | (norm2 == 0)
    return (lost * probs.to(torch.float64)).sum(-1)


def unseen_mass(probs: torch.Tensor, sample_sizes: Sequence[float], exact: bool = False) -> torch.Tensor:
    """Σ_x p(x) e^{−T p(x)} for each T (the finite-data part; 0 at T = ∞).

    exact: Σ_x p(x) (1 − p(x))^T instead, the expected mass of the tokens not seen in T samples
    (e^{−Tp} is its bound and its large-T form).
    """
    p = probs.to(torch.float64)
    rows = []
    for t in sample_sizes:
        t = float(t)
        if math.isinf(t) and t > 0:
            rows.append(torch.zeros((), dtype=torch.float64))
        elif not t >= 0:
            raise ValueError(f"sample sizes T must be >= 0 (or inf), got {t}")
        else:
            rows.append((p * ((1 - p) ** t if exact else torch.exp(-t * p))).sum())
    return torch.stack(rows)


def predicted_error(
    weights: torch.Tensor,
    probs: torch.Tensor,
    dims: Sequence[int],
    c: float,
    sample_sizes: Sequence[float] = (math.inf,),
    exact: bool = False,
) -> torch.Tensor:
    """p{x : q(x)² d < c ‖q‖²} + Σ_x p(x) e^{−T p(x)}, capped at 1: shape (len(sample_sizes), len(dims)).

    weights is the scheme at T = ∞ (counts = p): the paper splits the error into the memory part
    of q_∞ and the finite-data part (Proposition 4). The two parts can count a token twice (lost
    and unseen), so the sum is an upper estimate; it is capped at 1, the largest error.
    """
    total = memory_term(weights, probs, dims, c)[None, :] + unseen_mass(probs, sample_sizes, exact)[:, None]
    return total.clamp(max=1.0)


@dataclass(frozen=True)
class TheoryConstant:
    c: float  # the fitted constant
    c_low: float  # every c in [c_low, c_high] of the grid fits equally well (the prediction is a step
    c_high: float  # function of c: a wide interval means the data do not pin c down)
    log10_rms: float  # root-mean-square of log10(predicted / measured) over the fitted points
    num_points: int


def fit_theory_constant(
    weights: torch.Tensor,
    probs: torch.Tensor,
    dims: Sequence[int],
    measured: torch.Tensor,
    grid: Sequence[float] | None = None,
) -> TheoryConstant:
    """The c of p{x : q(x)² d < c ‖q‖²} closest to the measured T = ∞ errors (one per d) in log scale.

    Grid search (the prediction is piecewise constant in c, no gradient): c on a log grid over
    [1e-3, 1e3] by default; points with a measured error of 0 are left out, and a predicted 0 is
    floored at half the smallest measured error so that its log is defined.
    """
    measured = torch.as_tensor(measured, dtype=torch.float64)
    keep = measured > 0
    if int(keep.sum()) < 1:
        raise ValueError("fitting c needs at least one point with a non-zero error")
    floor = float(measured[keep].min()) / 2
    grid = np.logspace(-3, 3, 241) if grid is None else np.asarray(grid, dtype=float)
    target = torch.log10(measured[keep])
    losses = np.array(
        [
            float(
                (
                    (torch.log10(memory_term(weights, probs, dims, float(c))[keep].clamp_min(floor)) - target)
                    ** 2
                ).mean()
            )
            for c in grid
        ]
    )
    best = losses.min()
    tied = grid[losses <= best + 1e-12]
    c = float(tied[len(tied) // 2])
    return TheoryConstant(c, float(tied.min()), float(tied.max()), math.sqrt(best), int(keep.sum()))


# --------------------------------------------------------------------------------------------
# the memory matrix in the (u, e) basis


def memory_coefficients(memory: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Q with W = Σ_{y,x} Q[y, x] u_y e_xᵀ = Uᵀ Q E: Q = pinv(Uᵀ) W pinv(E).

    memory (..., d, d), inputs E (..., N, d), outputs U (..., M, d) -> (..., M, N). Exact when the
    e_x and the u_y are linearly independent (N <= d and M <= d, almost surely for Gaussian
    draws); otherwise the least-squares solution of smallest norm, one of many.
    """
    return torch.linalg.pinv(outputs.transpose(-1, -2)) @ memory @ torch.linalg.pinv(inputs)


def coefficient_scores(
    coefficients: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor
) -> torch.Tensor:
    """u_yᵀ W e_x for W = Σ Q[y, x'] u_y e_x'ᵀ: (U Uᵀ) Q (E Eᵀ), shape (..., M, N)."""
    return (outputs @ outputs.transpose(-1, -2)) @ coefficients @ (inputs @ inputs.transpose(-1, -2))


def scheme_coefficients(weights: torch.Tensor, targets: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """Q of a scheme memory Σ_x q(x) u_{f*(x)} e_xᵀ: q(x) at (f*(x), x), 0 elsewhere. (..., N) -> (..., M, N)."""
    return weights.unsqueeze(-2) * F.one_hot(targets, num_outputs).T.to(weights.dtype)
