"""Pieces the theory experiments share: the training settings of the constructions, and the
one-step memory of the "gradients as memories" lemmas.

Lemma (gradients as memories). For a linear memory ξ_W(z)_k = v_kᵀ W u_z trained with the
cross-entropy loss on z ~ Unif([N]), y = f*(z), one population gradient step from W_0 = 0 gives

    W_1 = (η/N) Σ_{z,k} (1{k = f*(z)} − 1/N) v_k u_zᵀ,   so   v_kᵀ W_1 u_z ≈ (η/N) 1{f*(z) = k} + O(η/N²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from birth.models.targets import orthogonal_width
from tasks.shakespeare import load_stats
from training.config import TrainConfig

PAPER_SEEDS = 5  # seeds of the full-size memories experiment


def check_simplified_two_layers(train: TrainConfig) -> None:
    if train.model.n_layers != 2 or train.model.variant != "simplified":
        raise ValueError(
            "--n-layers must be 2 and --variant simplified: the construction is that of the simplified "
            f"2-layer model, got {train.model.n_layers} layer(s), variant {train.model.variant!r}"
        )


def gradient_train() -> TrainConfig:
    """The setting of the gradient-step experiments."""
    return TrainConfig().replace(
        d_model=256,
        seq_len=64,  # T=64: fewer positions share W_KQ¹'s 1/t-diluted signal
        output_mode="no_repeat",  # o_k = q_k makes "q q q ..." loops that dominate the gradient
        eval_batch_size=256,
    )


def orthogonal_train(train: TrainConfig) -> TrainConfig:
    """`train` with d raised to fit `orthogonal_embeddings` (3N + 2T), rounded up to a multiple of 128:
    the theorem's infinite-width idealization."""
    width = orthogonal_width(load_stats().vocab_size, train.task.seq_len)
    return train.replace(d_model=max(train.model.d_model, 128 * math.ceil(width / 128)))


# ---------------------------------------------------------------------------------------------
# one gradient step of a linear memory (lemma, noisy-lemma)
# ---------------------------------------------------------------------------------------------

LEMMA_DTYPE = torch.float64  # the O(η/N²) terms are small: keep them above rounding noise


@dataclass
class LemmaStep:
    """One gradient step of the lemma's linear memory, measured against its prediction."""

    n_tokens: int
    d: int
    eta: float
    measured: torch.Tensor  # [N, N] v_kᵀ W_1 u_z, rows k (outputs), columns z (inputs)
    predicted: torch.Tensor  # [N, N] (η/N) 1{f*(z) = k}
    f_star: torch.Tensor  # [N]
    n_samples: int  # 0: exact population gradient

    @property
    def max_abs_error(self) -> float:
        return (self.measured - self.predicted).abs().max().item()

    @property
    def relative_error(self) -> float:
        """max |measured − predicted| in units of η/N, the size of a stored association."""
        return self.max_abs_error / (self.eta / self.n_tokens)

    @property
    def argmax_accuracy(self) -> float:
        """Corollary: f̂(z) = argmax_k v_kᵀ W_1 u_z recovers f*(z)."""
        return (self.measured.argmax(dim=0) == self.f_star).float().mean().item()


def embedding_rows(n: int, d: int, gen: torch.Generator, orthonormal: bool) -> torch.Tensor:
    """n embeddings [n, d]: i.i.d. N(0, I/d) (near-orthonormal), or the first n columns of a random
    orthogonal matrix (QR of a Gaussian; exactly orthonormal, needs d >= n)."""
    if orthonormal:
        return torch.linalg.qr(torch.randn(d, n, generator=gen, dtype=LEMMA_DTYPE))[0].T
    return torch.randn(n, d, generator=gen, dtype=LEMMA_DTYPE) / math.sqrt(d)


def one_step_memory(inputs: torch.Tensor, targets: torch.Tensor, V: torch.Tensor, eta: float) -> torch.Tensor:
    """W_1 = −η ∇L(0) for L(W) = mean_i ℓ(y_i, (v_kᵀ W x_i)_k): one gradient step from W_0 = 0 on the
    inputs x_i (rows of `inputs`, [n, d]) with targets y_i, output embeddings v_k (rows of V)."""
    d = inputs.shape[1]
    W = torch.zeros(d, d, dtype=inputs.dtype, requires_grad=True)
    loss = F.cross_entropy((inputs @ W.T) @ V.T, targets)  # [n, N] logits v_kᵀ W x_i
    (grad,) = torch.autograd.grad(loss, W)
    return -eta * grad


def check_lemma_args(
    n_tokens: int, d: int, eta: float, n_samples: int, orthonormal: bool, width: int
) -> None:
    if n_tokens < 2 or d < 1 or not eta > 0 or n_samples < 0:
        raise ValueError(
            f"need n_tokens >= 2, d >= 1, eta > 0, n_samples >= 0; got {n_tokens}, {d}, {eta}, {n_samples}"
        )
    if orthonormal and d < width:
        raise ValueError(f"orthonormal embeddings need d >= {width}, got d={d}")
