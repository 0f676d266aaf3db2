"""The setting of the paper's Theorem 3, in which three gradient steps give a working induction head
(experiment `three-steps`; `steps.StepsConfig` with data "theorem", value_tokens, restrict and
symmetric).

Its data model focuses on the second output token (`theorem_batch`: one trigger, twice, its output
after the first occurrence, the loss on the last position only, first occurrences stratified over
the positions); its simplified model is one block of each trainable matrix (`THEOREM_BLOCKS`:
layer 1 compares positions, layer 2 the query token with the remapped previous token, layer 2's
value is the token part); and its population gradients are invariant under the token relabelings
that keep the law, so each sampled gradient is averaged over them (`symmetrize`), which removes
the variance of the token draws and leaves the expectation unchanged. The task's own sequences
violate the theorem's N ≫ K: an output that is another trigger (28% of the sequences at K = 5,
N = 65) makes chains and cycles of triggers whose many second occurrences dominate the gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from birth.models.targets import MEMORIES, orthogonal_blocks
from tasks.triggered_bigram import Batch, TriggeredBigram

# The theorem's simplified model (paper, section 6; Bietti's talk *Transformers and Associative
# Memories*: "some simplifications to architecture"): layer-1 attention compares positions only, layer 2 compares the query token with
# the remapped previous token W_OV¹ w_E(k) carried by layer 1, and layer 2's value is the token
# part only. With `orthogonal_embeddings` each is one block of a trainable matrix: nn.Linear weight
# rows × columns, k.weight[query dims, key dims], o.weight[output dims, value dims].
THEOREM_BLOCKS: dict[str, tuple[str, str]] = {
    "W_OV2": ("unembedding", "tokens"),
    "W_KQ2": ("tokens", "tokens_remapped"),
    "W_KQ1": ("positions", "positions"),
}
_TOKEN_BLOCKS = ("tokens", "tokens_remapped", "unembedding")  # the blocks indexed by a token id


def token_orbits(vocab_size: int, seq_len: int, d: int, triggers: torch.Tensor) -> torch.Tensor:
    """[d, d] orbit ids of the entries of a d × d matrix in the `orthogonal_blocks` basis under the
    relabelings of the tokens that keep the trigger set (permute the triggers among themselves and
    the other tokens among themselves, in every token-indexed block at once).

    Entry (i, j) with both dimensions token-indexed lies in the orbit of (its two blocks, the two
    tokens' classes, whether they are the same token); with one, of (that block and class, the
    other dimension); with none, alone.
    """
    blocks = orthogonal_blocks(vocab_size, seq_len)
    token_of = torch.full((d,), -1, dtype=torch.long)
    label = 2 * torch.arange(d)  # a dimension that is not token-indexed: a label of its own
    is_trigger = torch.zeros(vocab_size, dtype=torch.long)
    is_trigger[triggers] = 1
    for k, name in enumerate(_TOKEN_BLOCKS):
        sl = blocks[name]
        token_of[sl] = torch.arange(vocab_size)
        label[sl] = 2 * (d + k) + is_trigger  # (block, class)
    indexed = token_of >= 0
    same = (token_of[:, None] == token_of[None, :]) & indexed[:, None] & indexed[None, :]
    width = int(label.max()) + 1
    code = (label[:, None] * width + label[None, :]) * 2 + same.long()
    return torch.unique(code, return_inverse=True)[1]


def symmetrize(matrix: torch.Tensor, orbits: torch.Tensor) -> torch.Tensor:
    """The average of `matrix` over the relabelings of `token_orbits`: each entry replaced by the
    mean of its orbit. A population gradient of a relabeling-invariant model is invariant, so
    averaging a sampled one keeps its expectation and removes the variance of the token draws."""
    flat, ids = matrix.reshape(-1), orbits.reshape(-1).to(matrix.device)
    sums = torch.zeros(int(ids.max()) + 1, dtype=matrix.dtype, device=matrix.device).index_add_(0, ids, flat)
    counts = torch.bincount(ids, minlength=sums.numel()).to(matrix.dtype)
    return (sums / counts)[ids].view_as(matrix)


def restricted_memories(restrict: bool | Sequence[str]) -> tuple[str, ...]:
    names = MEMORIES if restrict is True else () if restrict is False else tuple(restrict)
    unknown = [name for name in names if name not in THEOREM_BLOCKS]
    if unknown:
        raise ValueError(f"restrict: unknown memories {unknown}; choose from {list(THEOREM_BLOCKS)}")
    return names


def theorem_projection(
    vocab_size: int,
    seq_len: int,
    d: int,
    triggers: torch.Tensor,
    *,
    restrict: bool | Sequence[str] = True,
    symmetric: bool = True,
) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """The `project` of `gradient_steps` for a model with `orthogonal_embeddings`.

    `restrict`: keep only the memory's `THEOREM_BLOCKS` block (the gradient of the theorem's
    simplified model): every memory (True), none (False) or those named. `symmetric`:
    `symmetrize` over the token relabelings that keep `triggers` (exact when the data law and the
    frozen weights are invariant: fixed triggers, uniform base, uniform outputs, orthogonal
    embeddings, W_V² = I or the token projector).
    """
    blocks = orthogonal_blocks(vocab_size, seq_len)
    orbits = token_orbits(vocab_size, seq_len, d, triggers) if symmetric else None
    restricted = restricted_memories(restrict)

    def project(name: str, grad: torch.Tensor) -> torch.Tensor:
        if name in restricted:
            rows, cols = (blocks[b] for b in THEOREM_BLOCKS[name])
            kept = torch.zeros_like(grad)
            kept[rows, cols] = grad[rows, cols]
            grad = kept
        return symmetrize(grad, orbits) if orbits is not None else grad

    return project


def theorem_batch(task: TriggeredBigram, per_position: int, gen: torch.Generator) -> Batch:
    """Sequences of the theorem's data model ("focus on the second output token"), stratified over
    the first occurrence: a tasks.triggered_bigram.Batch of per_position · (T − 2) sequences.

    For each first position t = 0 … T − 3 (`per_position` sequences each): a trigger q, uniform over
    the task's K fixed triggers, at t and at the last input T − 1; its output o (the task's output
    law, e.g. uniform over the tokens other than q) at t + 1 and as the last target; every other
    input i.i.d. uniform over the N − K non-trigger tokens, independent of (q, o) (the noise of the
    noisy-input lemma; the theorem's N ≫ T makes a repeat of o or a second trigger rare). Counter 1
    at t, 2 at T − 1 (the only target with counter >= 2), 0 elsewhere.
    """
    if task.config.trigger_mode != "fixed" or task.config.n_triggers < 1:
        raise ValueError(
            "the theorem's data model needs fixed triggers (--trigger-mode fixed, --n-triggers >= 1)"
        )
    if per_position < 1:
        raise ValueError(f"per_position must be >= 1, got {per_position}")
    T, n, dev = task.config.seq_len, task.vocab_size, task.device
    if T < 3:
        raise ValueError(f"the theorem's data model needs --seq-len >= 3, got {T}")
    triggers = task.fixed_triggers
    others = torch.ones(n, dtype=torch.bool, device=dev)
    others[triggers] = False
    noise_tokens = torch.nonzero(others).flatten()
    first = torch.arange(T - 2, device=dev).repeat_interleave(per_position)
    b = first.numel()
    q = triggers[torch.randint(0, triggers.numel(), (b,), generator=gen, device=dev)]
    o = task.sample_outputs(q[:, None], gen)[:, 0]
    tokens = noise_tokens[torch.randint(0, noise_tokens.numel(), (b, T + 1), generator=gen, device=dev)]
    rows = torch.arange(b, device=dev)
    tokens[rows, first] = q
    tokens[rows, first + 1] = o
    tokens[:, T - 1] = q
    tokens[:, T] = o
    counter = torch.zeros(b, T, dtype=torch.long, device=dev)
    counter[rows, first] = 1
    counter[:, T - 1] = 2
    return Batch(tokens, counter, q[:, None], o[:, None])


# The working construction (`steps.StepsConfig(data="theorem", value_tokens=True, restrict=True,
# symmetric=True)`); measurements in docs/results.md.
# - W_OV2: a line search on held-out sequences of the theorem's data (it picks 100 at d = 384,
#   T = 64; the W_KQ² step keeps its sign up to 1000 there).
# - W_KQ2 (× √(d/128)): fixed and moderate. A larger step saturates layer 2's attention on the key
#   that already carries W_OV¹ w_E(q) (the trigger's own position, or position 0 where z_1 = q),
#   so that step 3 gets no gradient for the first rows of W_KQ¹: norms 300, 1000 give in-context
#   accuracy 0.998, 3000 (the line search's choice: the held-out loss after step 2 is lowest
#   there) 0.942, every error then a first occurrence at position 0.
# - W_KQ1: a line search; its gradient ∝ 1/t (layer-1 attention starts uniform), so the norm is
#   large enough that the last rows focus, and the first ones saturate harmlessly.
THEOREM_STEP_NORMS: dict[str, float | tuple[float, ...]] = {
    "W_OV2": (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0),
    "W_KQ2": 1000.0,
    "W_KQ1": (100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0),
}
