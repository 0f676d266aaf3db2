"""The theory of *Birth of a Transformer* made executable: hand-built memories, three gradient steps
and the "gradients as memories" lemma.

Hand-built memories (paper, section 5). With near-orthonormal random embeddings the three target
associative memories are, in the paper's column-vector notation,

    W_KQ¹ = Σ_t p_{t+1} p_tᵀ                       (previous-token head: query p_{t+1}, key p_t)
    W_KQ² = Σ_{k∈Q} w_E(k) (W_OV¹ w_E(k))ᵀ          (induction head: query trigger, key "after q")
    W_OV² = Σ_k w_U(k) w_E(k)ᵀ                      (copy the attended token to the output)

TransformerLens multiplies row vectors, so each is inserted transposed (see `birth.models.transformer`):
row-form QK of a simplified layer is `k.weight` (W_Q = I) and row-form OV is W_V W_O.

Three gradient steps (paper, Theorem 3; seed talk: "we can recover the desired associative memories
with 3 gradient steps on the population loss: first on W_OV², then W_KQ², then W_KQ¹"). From a zero
init of the trainable matrices, attention is uniform, so every attention output is an average of
embeddings. One large-batch gradient step on W_O² alone already points along Σ_k w_U(k) w_E(k)ᵀ
(the correct output is always in the context); with W_OV² in place, a step on W_K² alone makes
triggers attend to positions whose layer-1 output carries W_OV¹ w_E(q); with both in place, a step
on W_K¹ alone focuses layer 1 on the previous token. In the reverse order each step sees a zero
downstream matrix, so the gradient carries (almost) no signal.

The population gradient is approximated by averaging the gradient over many sampled sequences.
Step sizes: the theorem needs "large enough" η; here η of each step is set so that the update has
a prescribed Frobenius norm (η = norm / ‖∇‖_F), which keeps the procedure meaningful across d, T
and batch sizes; a grid of norms means a line search on held-out sequences. The η actually used is
reported. With random embeddings the recovery is partial: the W_K² step is limited by the
cross-talk of N(0, I/d) embeddings, not by sampling. With exactly orthogonal embeddings
(`orthogonal_embeddings`, the theorem's infinite width at finite d) the first two steps recover
their memories and the third is limited by sampling (its signal decays ∝ 1/t). The in-context
accuracy stays near chance even so: the first step also stores W_OV¹ w_E(k) → w_U(k) (layer 1's
uniform average carries the output), which the W_OV² probe does not see, and with a previous-token
layer 1 the value at the output's position then votes for the trigger too. docs/results.md has
the measurements behind each of these statements and behind the step norms.

The theorem's setting (`run_gradient_steps(..., data="theorem", value_tokens=True, restrict=True,
symmetric=True)`, experiment `three-steps`) gives a working induction head after the three steps.
Its data model focuses on the second output token (`theorem_batch`: one trigger, twice, its output
after the first occurrence, the loss on the last position only, first occurrences stratified over
the positions); its simplified model is one block of each trainable matrix (`THEOREM_BLOCKS`:
layer 1 compares positions, layer 2 the query token with the remapped previous token, layer 2's
value is the token part); and its population gradients are invariant under the token relabelings
that keep the law, so each sampled gradient is averaged over them (`symmetrize`), which removes
the variance of the token draws and leaves the expectation unchanged. The task's own sequences
violate the theorem's N ≫ K: an output that is another trigger (28% of the sequences at K = 5,
N = 65) makes chains and cycles of triggers whose many second occurrences dominate the gradients.

Lemma (gradients as memories). For a linear memory ξ_W(z)_k = v_kᵀ W u_z trained with the
cross-entropy loss on z ~ Unif([N]), y = f*(z), one population gradient step from W_0 = 0 gives

    W_1 = (η/N) Σ_{z,k} (1{k = f*(z)} − 1/N) v_k u_zᵀ,   so   v_kᵀ W_1 u_z ≈ (η/N) 1{f*(z) = k} + O(η/N²).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from birth.base.seeds import THEORY_SELECT_STREAM, THEORY_STEP_STREAM, theory_batch_seed
from birth.models.transformer import attn_linear

MEMORIES = ("W_OV2", "W_KQ2", "W_KQ1")
# which nn.Linear of the simplified model stores each memory: (layer, name)
MEMORY_LINEAR: dict[str, tuple[int, str]] = {"W_OV2": (1, "o"), "W_KQ2": (1, "k"), "W_KQ1": (0, "k")}
PAPER_ORDER = ("W_OV2", "W_KQ2", "W_KQ1")
REVERSE_ORDER = ("W_KQ1", "W_KQ2", "W_OV2")


# ---------------------------------------------------------------------------------------------
# hand-built memories
# ---------------------------------------------------------------------------------------------


def _require_two_layer_simplified(model: nn.Module) -> None:
    if model.cfg.n_layers != 2:
        raise ValueError(f"the induction memories need a 2-layer model, got {model.cfg.n_layers} layers")
    if not torch.equal(attn_linear(model, 1, "q").weight.detach().cpu(), torch.eye(model.cfg.d_model)):
        raise ValueError("hand-built memories need the simplified model (W_Q = identity)")


@torch.no_grad()
def target_memories(
    model: nn.Module, triggers: torch.Tensor | None, *, first_position_fix: bool = False
) -> dict[str, torch.Tensor]:
    """The three target memories in row form, each [d, d], unscaled (one term per stored pair).

    `triggers`: the fixed trigger set stored in W_KQ²; None stores every token (random triggers).
    `first_position_fix`: add one correction term to W_KQ² for the first position (see below).
    """
    _require_two_layer_simplified(model)
    W_E, W_U, P = model.W_E.detach(), model.W_U.T.detach(), model.W_pos.detach()  # rows
    tokens = torch.arange(W_E.shape[0], device=W_E.device) if triggers is None else triggers
    queries = W_E[tokens.to(W_E.device)]
    keys = queries @ model.OV[0, 0].AB  # W_OV¹ w_E(k), row form
    kq2 = queries.T @ keys  # score(query w_E(k), key W_OV¹ w_E(k)) large
    if first_position_fix:
        # Position 0 can only attend to itself, so when z_1 is a trigger q its layer-1 output is
        # W_OV¹ w_E(q) and the induction key matches there too, copying q instead of o. The key at
        # position 0 alone carries p_0 + W_OV¹ p_0: a term scoring −1 on it (net ≈ 0 after the +1
        # match) mutes that spurious match. The paper's memories have no such term. (−2 would
        # push it below zero but doubles the noise the term adds to every other key: worse.)
        sink = P[0] + P[0] @ model.OV[0, 0].AB
        kq2 = kq2 - 1.0 * queries.T @ (sink / sink.dot(sink)).expand_as(keys)
    return {
        "W_OV2": W_E.T @ W_U,  # Σ_k w_E(k)ᵀ w_U(k): row vector w_E(k) ↦ w_U(k)
        "W_KQ2": kq2,
        "W_KQ1": P[1:].T @ P[:-1],  # score(query p_{t+1}, key p_t) large
    }


@torch.no_grad()
def insert_memories(
    model: nn.Module,
    triggers: torch.Tensor | None,
    scale: float = 30.0,
    *,
    attention_scale: float | None = None,
    first_position_fix: bool = False,
) -> None:
    """Write the paper's hand-built memories into a simplified 2-layer model, in place.

    `scale` is the logit given to the stored output by W_OV²; `attention_scale` (default: `scale`)
    is the attention score of a stored (query, key) pair. Attention scores are divided by √d in the
    model, so the key-query memories are multiplied by √d to make the score ≈ attention_scale.
    W_V² is set to the identity so that W_OV² = W_O² is the memory itself (a random frozen W_V²
    would have to be inverted, which is ill-conditioned). `first_position_fix`: see
    `target_memories`; it only changes W_KQ², so the probes are unaffected.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    attention_scale = scale if attention_scale is None else attention_scale
    d = model.cfg.d_model
    memories = target_memories(model, triggers, first_position_fix=first_position_fix)
    attn_linear(model, 1, "v").weight.copy_(torch.eye(d))
    # nn.Linear stores weight [out, in] with y = x weightᵀ: row-form matrix M goes in as Mᵀ
    attn_linear(model, 1, "o").weight.copy_(scale * memories["W_OV2"].T)
    # row-form QK of a W_Q = I layer is k.weight itself (score = x_t @ k.weight @ x_sᵀ / √d)
    attn_linear(model, 1, "k").weight.copy_(attention_scale * math.sqrt(d) * memories["W_KQ2"])
    attn_linear(model, 0, "k").weight.copy_(attention_scale * math.sqrt(d) * memories["W_KQ1"])


@dataclass(frozen=True)
class MemoryPoint:
    """The hand-built memories of one model at one scale, measured on a held-out batch."""

    seed: int  # the model's seed (its random frozen embeddings and W_OV¹)
    scale: float  # stored logit of W_OV² and attention score of the key-query memories
    first_position_fix: bool  # the extra W_KQ² term for position 0 (see `target_memories`)
    icl_acc: float  # in-context accuracy (counter >= 2 targets)
    probes: dict[str, float]  # memory recall of W_OV2, W_KQ2, W_KQ1


def hand_built_sweep(
    config,  # a training.config.TrainConfig: its task, model and run sections
    seeds: Sequence[int],
    scales: Sequence[float],
    fixes: Sequence[bool] = (False, True),
) -> list[MemoryPoint]:
    """In-context accuracy and probes of the paper's hand-built memories in the model of `config`,
    for each seed, with and without the first-position term, at each scale.

    Every point is measured on the held-out batch of `config` (its eval seed and size). The memories
    store the K fixed triggers, or every token with random triggers.
    """
    from birth.metrics import evaluate
    from tasks.shakespeare import load_stats
    from tasks.triggered_bigram import TriggeredBigram

    stats = load_stats()
    config.validate(stats.vocab_size)
    task = TriggeredBigram(config.task, stats)
    batch = task.sample(config.run.eval_batch_size, task.generator(config.run.eval_seed))
    triggers = task.fixed_triggers if config.task.trigger_mode == "fixed" else None
    points = []
    for seed in seeds:
        model = config.replace(seed=seed).build_model(stats.vocab_size)
        for fix in fixes:
            for scale in scales:
                insert_memories(model, triggers, scale, first_position_fix=fix)
                row = evaluate(
                    model,
                    batch,
                    loss_on=config.optim.loss_on,
                    fast_path=config.run.fast_path,
                    probe_triggers=triggers,
                )
                probes = {k.removeprefix("probes/"): v for k, v in row.items() if k.startswith("probes/")}
                points.append(MemoryPoint(seed, scale, fix, row["eval/icl_acc"], probes))
    return points


def best_scale(points: Sequence[MemoryPoint], first_position_fix: bool) -> tuple[float, float]:
    """(scale, accuracy) of the scale with the highest seed-mean in-context accuracy."""
    from birth.metrics import mean_std

    scales = dict.fromkeys(p.scale for p in points if p.first_position_fix == first_position_fix)
    if not scales:
        raise ValueError(f"no point with first_position_fix={first_position_fix}")
    means = {
        s: mean_std(p.icl_acc for p in points if p.scale == s and p.first_position_fix == first_position_fix)[
            0
        ]
        for s in scales
    }
    scale = max(means, key=means.get)
    return scale, means[scale]


# ---------------------------------------------------------------------------------------------
# three gradient steps
# ---------------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """The state after one gradient step (step 0 is the zero initialization)."""

    step: int
    matrix: str | None  # which memory was stepped (None for the initial state)
    eta: float  # step size used (0 for the initial state)
    grad_norm: float  # ‖∇‖_F of the stepped matrix
    loss_before: float  # population-like loss at which the gradient was taken
    probes: dict[str, float] = field(default_factory=dict)
    icl_acc: float = float("nan")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def large_batch_gradient(
    model: nn.Module,
    parameter: nn.Parameter,
    batches: Sequence,
    loss_fn: Callable[[nn.Module, object], torch.Tensor | None],
    count_fn: Callable[[object], int],
) -> tuple[torch.Tensor, float]:
    """Gradient of the mean loss over all selected targets of all `batches`, w.r.t. `parameter`.

    Each chunk's mean loss is weighted by its number of targets, so the result equals the gradient
    of one batch holding every chunk (a population-like gradient, memory bounded by one chunk).
    """
    total = sum(count_fn(b) for b in batches)
    if total == 0:
        raise ValueError("the gradient batches hold no target to learn from")
    grad = torch.zeros_like(parameter)
    loss_sum = 0.0
    for batch in batches:
        n = count_fn(batch)
        if n == 0:
            continue
        loss = loss_fn(model, batch)
        (g,) = torch.autograd.grad(loss * (n / total), parameter)
        grad += g
        loss_sum += loss.item() * n
    return grad, loss_sum / total


@torch.no_grad()
def _mean_loss(model, batches, loss_fn, count_fn) -> float:
    total = sum(count_fn(b) for b in batches)
    return sum(loss_fn(model, b).item() * count_fn(b) for b in batches if count_fn(b)) / max(total, 1)


def gradient_steps(
    model: nn.Module,
    order: Sequence[str],
    step_norms: dict[str, float],
    batches_for_step: Callable[[int], Sequence],
    loss_fn: Callable[[nn.Module, object], torch.Tensor | None],
    count_fn: Callable[[object], int],
    measure: Callable[[nn.Module], tuple[dict[str, float], float]],
    progress: Callable[[str], None] | None = None,
    select_batches: Callable[[int], Sequence] | None = None,
    project: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> list[StepRecord]:
    """One large-batch gradient step on each memory of `order`, in turn, only that matrix moving.

    `step_norms[name]`: Frobenius norm of that memory's update (η = norm / ‖∇‖_F), or a sequence of
    norms: the one with the lowest loss on `select_batches(i)` (held-out data) is used.
    `batches_for_step(i)`: the sampled batches of step i (same i ⇒ same data, so that two orders
    see identical data). `measure(model)` returns (probes, in-context accuracy).
    `project(name, grad)`: a linear map applied to each gradient before the step (e.g.
    `theorem_projection`: the theorem's simplified architecture and symmetries); ‖∇‖ is then the
    projected gradient's norm.
    """
    unknown = [name for name in order if name not in MEMORY_LINEAR]
    if unknown:
        raise ValueError(f"unknown memories {unknown}; choose from {list(MEMORY_LINEAR)}")
    probes, acc = measure(model)
    records = [StepRecord(0, None, 0.0, 0.0, float("nan"), probes, acc)]
    for i, name in enumerate(order, start=1):
        layer, linear = MEMORY_LINEAR[name]
        weight = attn_linear(model, layer, linear).weight
        if not weight.requires_grad:
            raise ValueError(f"{name} ({linear}.weight of layer {layer + 1}) is frozen in this model")
        grad, loss = large_batch_gradient(model, weight, batches_for_step(i), loss_fn, count_fn)
        if project is not None:
            grad = project(name, grad)
        grad_norm = grad.norm().item()
        # a zero gradient (a downstream matrix is still zero) leaves the matrix at zero
        norms = step_norms[name]
        norms = [float(norms)] if isinstance(norms, (int, float)) else [float(n) for n in norms]
        eta = 0.0
        if grad_norm > 1e-12:
            start = weight.detach().clone()
            if len(norms) == 1:
                eta = norms[0] / grad_norm
            else:
                # line search: the η of the grid with the lowest loss on held-out sequences
                if select_batches is None:
                    raise ValueError(f"a grid of step norms for {name} needs select_batches")
                held_out = select_batches(i)
                best = None
                for norm in norms:
                    with torch.no_grad():
                        weight.copy_(start - (norm / grad_norm) * grad)
                        held = _mean_loss(model, held_out, loss_fn, count_fn)
                    if best is None or held < best[0]:
                        best = (held, norm / grad_norm)
                eta = best[1]
            with torch.no_grad():
                weight.copy_(start - eta * grad)
        probes, acc = measure(model)
        records.append(StepRecord(i, name, eta, grad_norm, loss, probes, acc))
        if progress is not None:
            text = "  ".join(f"{k} {v:.2f}" for k, v in probes.items())
            progress(f"step {i}: {name} (η={eta:.3g}, ‖∇‖={grad_norm:.3g})  {text}  icl {acc:.3f}")
    return records


# ---------------------------------------------------------------------------------------------
# lemma: gradients as memories
# ---------------------------------------------------------------------------------------------


@dataclass
class LemmaResult:
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


_LEMMA_DTYPE = torch.float64  # the O(η/N²) terms are small: keep them above rounding noise


def _embedding_rows(n: int, d: int, gen: torch.Generator, orthonormal: bool) -> torch.Tensor:
    """n embeddings [n, d]: i.i.d. N(0, I/d) (near-orthonormal), or the first n columns of a random
    orthogonal matrix (QR of a Gaussian; exactly orthonormal, needs d >= n)."""
    if orthonormal:
        return torch.linalg.qr(torch.randn(d, n, generator=gen, dtype=_LEMMA_DTYPE))[0].T
    return torch.randn(n, d, generator=gen, dtype=_LEMMA_DTYPE) / math.sqrt(d)


def _one_step_memory(
    inputs: torch.Tensor, targets: torch.Tensor, V: torch.Tensor, eta: float
) -> torch.Tensor:
    """W_1 = −η ∇L(0) for L(W) = mean_i ℓ(y_i, (v_kᵀ W x_i)_k): one gradient step from W_0 = 0 on the
    inputs x_i (rows of `inputs`, [n, d]) with targets y_i, output embeddings v_k (rows of V)."""
    d = inputs.shape[1]
    W = torch.zeros(d, d, dtype=inputs.dtype, requires_grad=True)
    loss = F.cross_entropy((inputs @ W.T) @ V.T, targets)  # [n, N] logits v_kᵀ W x_i
    (grad,) = torch.autograd.grad(loss, W)
    return -eta * grad


def _check_lemma_args(
    n_tokens: int, d: int, eta: float, n_samples: int, orthonormal: bool, width: int
) -> None:
    if n_tokens < 2 or d < 1 or not eta > 0 or n_samples < 0:
        raise ValueError(
            f"need n_tokens >= 2, d >= 1, eta > 0, n_samples >= 0; got {n_tokens}, {d}, {eta}, {n_samples}"
        )
    if orthonormal and d < width:
        raise ValueError(f"orthonormal embeddings need d >= {width}, got d={d}")


def lemma_one_step(
    n_tokens: int = 64,
    d: int = 1024,
    eta: float = 1.0,
    *,
    n_samples: int = 0,
    seed: int = 0,
    orthonormal: bool = False,
) -> LemmaResult:
    """One gradient step from W_0 = 0 on L(W) = E_z[ℓ(f*(z), (v_kᵀ W u_z)_k)], z ~ Unif([N]).

    Embeddings u_z, v_k ~ N(0, I/d) (near-orthonormal), or exactly orthonormal (needs d >= N), and
    f*: [N] → [N] uniformly random, all from a generator seeded by `seed`. `n_samples = 0` takes the
    exact population gradient (the 1/N-weighted sum over every z); otherwise the gradient of the
    mean loss over `n_samples` draws of z (a population-like large batch).
    """
    _check_lemma_args(n_tokens, d, eta, n_samples, orthonormal, n_tokens)
    gen = torch.Generator().manual_seed(seed)
    U = _embedding_rows(n_tokens, d, gen, orthonormal)
    V = _embedding_rows(n_tokens, d, gen, orthonormal)
    f_star = torch.randint(0, n_tokens, (n_tokens,), generator=gen)
    if n_samples:
        z = torch.randint(0, n_tokens, (n_samples,), generator=gen)
    else:
        z = torch.arange(n_tokens)  # every z once: the mean is the population expectation
    W1 = _one_step_memory(U[z], f_star[z], V, eta)
    measured = V @ W1 @ U.T  # [k, z]
    predicted = torch.zeros(n_tokens, n_tokens, dtype=_LEMMA_DTYPE)
    predicted[f_star, torch.arange(n_tokens)] = eta / n_tokens
    return LemmaResult(n_tokens, d, eta, measured, predicted, f_star, n_samples)


@dataclass
class NoisyLemmaResult(LemmaResult):
    """The lemma with noisy inputs x = u_y + n_t: `measured` and `predicted` are [N, N, T] (output k,
    label y, noise t) and f* is the identity (the label is the token whose embedding is in x)."""

    n_noise: int = 0  # T, the number of noise embeddings n_t
    # [N, N, T] the population formula (η/N)(1{k = y} − 1/N) + cross-talk, computed from the
    # embeddings: W_1 = (η/N) Σ_k v_k (u_k − ū)ᵀ, to which the measured step must be equal
    formula: torch.Tensor | None = None

    @property
    def argmax_accuracy(self) -> float:
        """argmax_k v_kᵀ W_1 x = y, over every (y, t)."""
        return (self.measured.argmax(dim=0) == self.f_star[:, None]).float().mean().item()

    @property
    def noise_spread(self) -> float:
        """max over (k, y) of how much the noise embedding moves the score, in units of η/N:
        max_t − min_t of v_kᵀ W_1 (u_y + n_t). Zero when the noise is orthogonal to the u's."""
        spread = self.measured.amax(dim=2) - self.measured.amin(dim=2)
        return spread.max().item() / (self.eta / self.n_tokens)

    @property
    def formula_error(self) -> float:
        """max |measured − formula| in units of η/N: 0 up to rounding for the population step."""
        return (self.measured - self.formula).abs().max().item() / (self.eta / self.n_tokens)


def noisy_lemma_one_step(
    n_tokens: int = 64,
    n_noise: int = 64,
    d: int = 1024,
    eta: float = 1.0,
    *,
    n_samples: int = 0,
    seed: int = 0,
    orthonormal: bool = False,
) -> NoisyLemmaResult:
    """The lemma with noisy inputs (seed talk, "Gradients with noisy inputs"): y ~ Unif([N]),
    t ~ Unif([T]), x = u_y + n_t, one gradient step from W_0 = 0 on E[ℓ(y, (v_kᵀ W x)_k)].

    At W = 0 the predictions are uniform, so the population gradient is
    Σ_k p(k) v_k (E[x] − E[x | y = k])ᵀ; the noise is independent of y and cancels:
    W_1 = (η/N) Σ_k v_k (u_k − ū)ᵀ, hence v_kᵀ W_1 x ≈ (η/N) 1{k = y} + O(η/N²) (exactly
    (η/N)(1{k = y} − 1/N) with orthonormal u, n, v) plus an O(η/(N√d)) cross-talk with N(0, I/d)
    embeddings. u_y, n_t, v_k as in `lemma_one_step` (orthonormal: u and n jointly, needs
    d >= N + T); `n_samples = 0` averages over every (y, t) pair (the exact expectation), otherwise
    over `n_samples` draws, with which the noise no longer cancels exactly.
    """
    if n_noise < 1:
        raise ValueError(f"need n_noise >= 1, got {n_noise}")
    _check_lemma_args(n_tokens, d, eta, n_samples, orthonormal, n_tokens + n_noise)
    gen = torch.Generator().manual_seed(seed)
    inputs = _embedding_rows(n_tokens + n_noise, d, gen, orthonormal)  # u's and n's, jointly drawn
    U, noise = inputs[:n_tokens], inputs[n_tokens:]
    V = _embedding_rows(n_tokens, d, gen, orthonormal)
    if n_samples:
        y = torch.randint(0, n_tokens, (n_samples,), generator=gen)
        t = torch.randint(0, n_noise, (n_samples,), generator=gen)
    else:  # every (y, t) once: the mean is the population expectation
        y = torch.arange(n_tokens).repeat_interleave(n_noise)
        t = torch.arange(n_noise).repeat(n_tokens)
    W1 = _one_step_memory(U[y] + noise[t], y, V, eta)
    every = (U[:, None, :] + noise[None, :, :]).reshape(-1, d)  # every x = u_y + n_t, (y, t) row-major
    measured = (V @ W1 @ every.T).view(n_tokens, n_tokens, n_noise)  # [k, y, t]
    W_formula = (eta / n_tokens) * V.T @ (U - U.mean(dim=0))
    formula = (V @ W_formula @ every.T).view(n_tokens, n_tokens, n_noise)
    predicted = torch.zeros(n_tokens, n_tokens, n_noise, dtype=_LEMMA_DTYPE)
    predicted[torch.arange(n_tokens), torch.arange(n_tokens)] = eta / n_tokens
    f_star = torch.arange(n_tokens)
    return NoisyLemmaResult(n_tokens, d, eta, measured, predicted, f_star, n_samples, n_noise, formula)


# ---------------------------------------------------------------------------------------------
# three gradient steps on the triggered-bigram task
# ---------------------------------------------------------------------------------------------

# Frobenius norm of each step's update (a sequence: line search, the norm with the lowest loss on
# held-out sequences); docs/results.md has the measurements behind each choice.
# - W_OV2: deliberately small. The step-1 gradient is dominated by terms other than the target
#   memory (a rank-one "mean context" term has the top singular value). A large step makes the
#   model's predictions far from uniform, and then the backward vectors p̂ − e_y of step 2 are
#   dominated by that bias: the W_KQ² update becomes a key-only term (every trigger query prefers
#   the same key). A small one keeps the predictions near uniform (the theorem's regime: each step
#   is taken where the next one still sees p̂ ≈ uniform).
# - W_KQ2 (× √(d/128), its scores are divided by √d): R(W_KQ²) is insensitive to it over a wide range.
# - W_KQ1: a line search (× √(d/128)): its gradient is tiny (the signal passes through two
#   attention layers) and the right size varies with d.
# Picking η by the held-out loss for steps 1-2 is worse: it chooses the smallest step (the loss
# barely improves from a first step) and W_KQ² is then not learned.
DEFAULT_STEP_NORMS: dict[str, float | tuple[float, ...]] = {
    "W_OV2": 10.0,
    "W_KQ2": 150.0,
    "W_KQ1": (10.0, 100.0, 1000.0, 10000.0),
}


# With exactly orthogonal embeddings (`orthogonal_embeddings`) an even smaller first step keeps the
# predictions near uniform, where step 2's gradient is the clean memory (larger ones make every
# trigger pick the same key). A larger W_KQ2 step sharpens layer-2 attention, so that step 3 sees
# the previous-token signal through the keys more than the self-attention pull of the value path
# (W_O² also maps W_OV¹ w_E(k) to w_U(k) after step 1). With random embeddings these norms do not
# help. Measurements: docs/results.md.
ORTHOGONAL_STEP_NORMS: dict[str, float | tuple[float, ...]] = {
    "W_OV2": 3.0,
    "W_KQ2": 20000.0,
    "W_KQ1": (10.0, 100.0, 1000.0, 10000.0),
}

BASES = ("uniform", "shakespeare")
EMBEDDINGS = ("random", "orthogonal")


def orthogonal_width(vocab_size: int, seq_len: int) -> int:
    """The smallest d for `orthogonal_embeddings`: 3N + 2T basis vectors (w_E, p_t, their W_OV¹
    images, w_U)."""
    return 3 * vocab_size + 2 * seq_len


def orthogonal_blocks(vocab_size: int, seq_len: int) -> dict[str, slice]:
    """The five disjoint blocks of basis vectors of `orthogonal_embeddings`: token embeddings w_E(k),
    positions p_t, their images W_OV¹ w_E(k) and W_OV¹ p_t, unembeddings w_U(k) (any dimension
    past 3N + 2T is unused)."""
    n, T = vocab_size, seq_len
    edges = [0, n, n + T, 2 * n + T, 2 * n + 2 * T, 3 * n + 2 * T]
    names = ("tokens", "positions", "tokens_remapped", "positions_remapped", "unembedding")
    return {name: slice(lo, hi) for name, lo, hi in zip(names, edges, edges[1:])}


@torch.no_grad()
def orthogonal_embeddings(model: nn.Module) -> None:
    """The theorem's infinite-width idealization at finite d: every embedding exactly orthogonal.

    Random N(0, 1/d) embeddings overlap by O(1/√d), and that cross-talk is as large as the signal
    of a single gradient step on W_K² or W_K¹ at d = 256. Here the token embeddings w_E(k), the
    positions p_t, their images under W_OV¹ and the unembeddings w_U(k) are standard basis vectors
    of five disjoint blocks (`orthogonal_blocks`; 3N + 2T <= d needed), W_OV¹ maps the first two
    blocks onto the next two (W_V¹ = I, W_O¹ a partial isometry) and W_V² = I. Frozen weights only;
    the trainable matrices are untouched.
    """
    from birth.models.transformer import native

    _require_two_layer_simplified(model)
    nm = native(model)
    n, T, d = nm.tok_embed.weight.shape[0], nm.pos.weight.shape[0], model.cfg.d_model
    if orthogonal_width(n, T) > d:
        raise ValueError(f"orthogonal embeddings need d >= 3N + 2T = {orthogonal_width(n, T)}, got d = {d}")
    blocks = orthogonal_blocks(n, T)
    eye = torch.eye(d, dtype=nm.tok_embed.weight.dtype, device=nm.tok_embed.weight.device)
    nm.tok_embed.weight.copy_(eye[blocks["tokens"]])
    nm.pos.weight.copy_(eye[blocks["positions"]])
    nm.head.weight.copy_(eye[blocks["unembedding"]])
    # row form OV¹ = W_Vᵀ W_Oᵀ: with W_V = I, o.weight = OV¹ᵀ; blocks 1, 2 -> blocks 3, 4
    ov1 = torch.zeros(d, d, dtype=eye.dtype, device=eye.device)
    ov1[: n + T, n + T : 2 * (n + T)] = torch.eye(n + T, dtype=eye.dtype, device=eye.device)
    attn_linear(model, 0, "v").weight.copy_(eye)
    attn_linear(model, 0, "o").weight.copy_(ov1.T)
    attn_linear(model, 1, "v").weight.copy_(eye)


def induction_logits(
    model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor, *, direct_path: bool = True
) -> torch.Tensor:
    """Logits [M, N] of the simplified 2-layer model at the selected `positions` [B, T].

    The same function as `model(tokens)[positions]` when `direct_path` is true. Without it the
    residual stream x_t skips the unembedding and only layer 2's attention output reaches the
    logits: at infinite width (the theorem) w_U(j)ᵀ x_t = 0, so from a zero W_O² the predicted
    law is exactly uniform; at finite d the direct path gives logits of size ~1/√d whose
    correlation with the context swamps the ~1/T-sized signal of the first gradient step.
    """
    import torch.nn.functional as F

    from birth.models.transformer import native

    nm = native(model)
    E, P, U = nm.tok_embed.weight, nm.pos.weight, nm.head.weight
    scale = 1.0 / nm.layers[0].attn.scale
    T = tokens.shape[1]
    x = E[tokens] + P[:T]
    for i, block in enumerate(nm.layers):
        a = block.attn
        k = x @ a.k.weight.T
        v = (x @ a.v.weight.T) @ a.o.weight.T
        q = a.q(x)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), is_causal=True, scale=scale
        ).squeeze(1)
        if i == len(nm.layers) - 1:
            h = out + x if direct_path else out
            return h[positions] @ U.T
        x = x + out
    raise AssertionError("unreachable")


def uniform_stats(stats):
    """Corpus statistics with uniform unigram and bigram laws over the same vocabulary."""
    from tasks.shakespeare import CorpusStats

    n = stats.vocab_size
    return CorpusStats(
        vocab=stats.vocab,
        unigram_counts=torch.ones(n, dtype=torch.long),
        bigram_counts=torch.ones(n, n, dtype=torch.long),
        n_chars=n,
        sha256="uniform",
    )


# ---------------------------------------------------------------------------------------------
# the theorem's setting: its data model, its simplified architecture, its symmetries
# ---------------------------------------------------------------------------------------------

DATA = ("task", "theorem")
# The theorem's simplified model (paper, section 6; seed talk: "some simplifications to
# architecture"): layer-1 attention compares positions only, layer 2 compares the query token with
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


def _restricted(restrict: bool | Sequence[str]) -> tuple[str, ...]:
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
    restricted = _restricted(restrict)

    def project(name: str, grad: torch.Tensor) -> torch.Tensor:
        if name in restricted:
            rows, cols = (blocks[b] for b in THEOREM_BLOCKS[name])
            kept = torch.zeros_like(grad)
            kept[rows, cols] = grad[rows, cols]
            grad = kept
        return symmetrize(grad, orbits) if orbits is not None else grad

    return project


@torch.no_grad()
def token_value(model: nn.Module) -> None:
    """The theorem's layer-2 value reads the token part only: W_V² = the projector on the token
    block of `orthogonal_embeddings` (frozen). With W_V² = I the value also carries layer 1's
    output, and the first step's W_O² then stores W_OV¹ w_E(k) → w_U(k) next to w_E(k) → w_U(k)."""
    from birth.models.transformer import native

    nm = native(model)
    n, T = nm.tok_embed.weight.shape[0], nm.pos.weight.shape[0]
    tokens = orthogonal_blocks(n, T)["tokens"]
    value = attn_linear(model, 1, "v").weight
    value.zero_()
    value[tokens, tokens] = torch.eye(n, dtype=value.dtype, device=value.device)


def theorem_batch(task, per_position: int, gen: torch.Generator):
    """Sequences of the theorem's data model ("focus on the second output token"), stratified over
    the first occurrence: a tasks.triggered_bigram.Batch of per_position · (T − 2) sequences.

    For each first position t = 0 … T − 3 (`per_position` sequences each): a trigger q, uniform over
    the task's K fixed triggers, at t and at the last input T − 1; its output o (the task's output
    law, e.g. uniform over the tokens other than q) at t + 1 and as the last target; every other
    input i.i.d. uniform over the N − K non-trigger tokens, independent of (q, o) (the noise of the
    noisy-input lemma; the theorem's N ≫ T makes a repeat of o or a second trigger rare). Counter 1
    at t, 2 at T − 1 (the only target with counter >= 2), 0 elsewhere.
    """
    from tasks.triggered_bigram import Batch

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


# The working construction (`run_gradient_steps(..., data="theorem", value_tokens=True,
# restrict=True, symmetric=True)`); measurements in docs/results.md.
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


def run_gradient_steps(
    config,  # a training.config.TrainConfig (its task, model, run sections)
    order: Sequence[str] = PAPER_ORDER,
    *,
    n_sequences: int = 2048,
    chunk: int = 256,
    step_norms: dict[str, float] | None = None,
    scale_norms_with_d: bool = True,
    base: str = "uniform",
    value_identity: bool = True,
    direct_path: bool = False,
    embeddings: str = "random",
    data: str = "task",
    value_tokens: bool = False,
    restrict: bool | Sequence[str] = False,
    symmetric: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[StepRecord]:
    """Three large-batch gradient steps from zero on the simplified 2-layer model of `config`.

    The model is built with `trainable_init="zero"` (W_K¹ = W_K² = W_O² = 0, so attention is
    uniform); step i uses `n_sequences` fresh sequences (in chunks of `chunk`), drawn from a
    generator seeded by (config.seed, i): two orders see the same data at the same step index.
    The loss is `config.loss_on` (outputs: counter >= 2 targets, as in the theorem).
    `scale_norms_with_d`: multiply the key-query step norms by √(d/128) (their scores are /√d).
    `base`: "uniform" (the theorem's setting: every non-trigger transition uniform over the
    vocabulary) or "shakespeare" (the training task's character bigrams). With Shakespeare
    statistics the frequent characters make the context average E[x̄] large and the first step's
    W_OV² is swamped by a rank-one term; the theorem assumes uniform distributions.
    `value_identity`: set the frozen W_V² to the identity (the theorem's simplified architecture
    trains W_OV² itself). A step on W_O² behind a random W_V² moves W_OV² by W_V² W_V²ᵀ ∇, and
    that Wishart matrix (eigenvalues spread over [0, 4]) mixes the stored pairs at finite d.
    `direct_path`: keep the residual path to the unembedding in the loss (see `induction_logits`;
    the theorem's infinite width makes it vanish). Metrics always use the full model.
    `embeddings`: "random" (the model's N(0, I/d) draws) or "orthogonal" (`orthogonal_embeddings`,
    the theorem's infinite-width idealization; needs d >= 3N + 2T).
    The theorem's other assumptions, each an option (the last three need orthogonal embeddings):
    `data`: "task" (the task's sequences, every counter >= 2 target) or "theorem" (`theorem_batch`:
    the second output token only, first occurrences stratified over positions; `n_sequences` is
    rounded to whole strata of T − 2 sequences). `value_tokens`: `token_value` (layer 2's value
    reads the token part only). `restrict`, `symmetric`: `theorem_projection` (each step on its
    `THEOREM_BLOCKS` block only: every memory, none or the named ones; restricting W_OV2 does what
    `value_tokens` does. Each gradient averaged over the token relabelings that keep the law,
    which leaves its expectation, the population gradient, unchanged). Metrics are always those
    of the task's held-out batch.
    """
    from birth.metrics import evaluate, loss_mask
    from tasks.shakespeare import load_stats
    from tasks.triggered_bigram import TriggeredBigram

    if config.model.n_layers != 2 or config.model.variant != "simplified":
        raise ValueError("the gradient-step procedure needs the simplified 2-layer model")
    if n_sequences < 1 or chunk < 1:
        raise ValueError(f"n_sequences and chunk must be >= 1, got {n_sequences}, {chunk}")
    config = config.replace(trainable_init="zero")
    stats = uniform_stats(load_stats()) if base == "uniform" else load_stats()
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    config.validate(stats.vocab_size)
    task = TriggeredBigram(config.task, stats)
    model = config.build_model(stats.vocab_size)
    if embeddings not in EMBEDDINGS:
        raise ValueError(f"embeddings must be one of {EMBEDDINGS}, got {embeddings!r}")
    if data not in DATA:
        raise ValueError(f"data must be one of {DATA}, got {data!r}")
    options = {"value_tokens": value_tokens, "restrict": bool(_restricted(restrict)), "symmetric": symmetric}
    needs_orthogonal = [name for name, on in options.items() if on]
    if needs_orthogonal and embeddings != "orthogonal":
        raise ValueError(f"{', '.join(needs_orthogonal)} need embeddings='orthogonal', got {embeddings!r}")
    if symmetric and (config.task.trigger_mode != "fixed" or (data == "task" and base != "uniform")):
        raise ValueError(
            "symmetric needs fixed triggers and a uniform law (base 'uniform' or data 'theorem')"
        )
    if data == "theorem" and config.optim.loss_on != "outputs":
        raise ValueError(
            f"data 'theorem' has its loss on the second output token: --loss-on outputs, "
            f"got {config.optim.loss_on!r}"
        )
    if embeddings == "orthogonal":
        orthogonal_embeddings(model)
    if value_identity:
        with torch.no_grad():
            attn_linear(model, 1, "v").weight.copy_(torch.eye(config.model.d_model))
    if value_tokens:
        token_value(model)
    probe_triggers = task.fixed_triggers if config.task.trigger_mode == "fixed" else None
    eval_batch = task.sample(config.run.eval_batch_size, task.generator(config.run.eval_seed))

    norms = dict(DEFAULT_STEP_NORMS if step_norms is None else step_norms)
    if scale_norms_with_d:
        for name in ("W_KQ2", "W_KQ1"):
            v = norms[name]
            f = math.sqrt(config.model.d_model / 128)
            norms[name] = v * f if isinstance(v, (int, float)) else [x * f for x in v]

    def mask_of(b) -> torch.Tensor:
        return loss_mask(b, config.optim.loss_on)

    if data == "theorem":
        # chunk sizes count sequences per first position (whole strata of T − 2 sequences)
        strata = config.task.seq_len - 2
        total, unit = max(1, round(n_sequences / strata)), max(1, chunk // strata)

        def sample(size: int, gen: torch.Generator):
            return theorem_batch(task, size, gen)
    else:
        total, unit, sample = n_sequences, chunk, task.sample
    sizes = [min(unit, total - start) for start in range(0, total, unit)]

    def batches_for_step(i: int) -> list:
        # a stream of their own: apart from the training loop's per-step batches
        return [
            sample(size, task.generator(theory_batch_seed(config.run.seed, THEORY_STEP_STREAM, i, j)))
            for j, size in enumerate(sizes)
        ]

    def select_batches(i: int) -> list:
        # held-out sequences for the step-size line search (never used for a gradient)
        return [
            sample(size, task.generator(theory_batch_seed(config.run.seed, THEORY_SELECT_STREAM, i, j)))
            for j, size in enumerate(sizes[: max(1, len(sizes) // 4)])
        ]

    project = None
    if _restricted(restrict) or symmetric:
        triggers = task.fixed_triggers.cpu()
        project = theorem_projection(
            stats.vocab_size,
            config.task.seq_len,
            config.model.d_model,
            triggers,
            restrict=restrict,
            symmetric=symmetric,
        )

    def measure(m: nn.Module) -> tuple[dict[str, float], float]:
        row = evaluate(
            m,
            eval_batch,
            loss_on=config.optim.loss_on,
            fast_path=config.run.fast_path,
            probe_triggers=probe_triggers,
        )
        probes = {k.removeprefix("probes/"): v for k, v in row.items() if k.startswith("probes/")}
        return probes, row["eval/icl_acc"]

    return gradient_steps(
        model,
        order,
        norms,
        batches_for_step,
        lambda m, b: F.cross_entropy(
            induction_logits(m, b.inputs, mask_of(b), direct_path=direct_path),
            b.targets[mask_of(b)],
        ),
        lambda b: int(mask_of(b).sum()),
        measure,
        progress,
        select_batches,
        project,
    )
