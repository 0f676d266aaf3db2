"""Three large-batch gradient steps from zero (paper, Theorem 3), the procedure behind the
experiments `gradient-steps` and `three-steps`.

Seed talk: "we can recover the desired associative memories with 3 gradient steps on the
population loss: first on W_OV², then W_KQ², then W_KQ¹". From a zero init of the trainable
matrices, attention is uniform, so every attention output is an average of embeddings. One
large-batch gradient step on W_O² alone already points along Σ_k w_U(k) w_E(k)ᵀ (the correct output
is always in the context); with W_OV² in place, a step on W_K² alone makes triggers attend to
positions whose layer-1 output carries W_OV¹ w_E(q); with both in place, a step on W_K¹ alone
focuses layer 1 on the previous token. In the reverse order each step sees a zero downstream
matrix, so the gradient carries (almost) no signal.

The population gradient is approximated by averaging the gradient over many sampled sequences.
Step sizes: the theorem needs "large enough" η; here η of each step is set so that the update has
a prescribed Frobenius norm (η = norm / ‖∇‖_F), which keeps the procedure meaningful across d, T
and batch sizes; a grid of norms means a line search on held-out sequences. The η actually used is
reported. With random embeddings the recovery is partial: the W_K² step is limited by the
cross-talk of N(0, I/d) embeddings, not by sampling. With exactly orthogonal embeddings
(`birth.models.targets.orthogonal_embeddings`, the theorem's infinite width at finite d) the first
two steps recover their memories and the third is limited by sampling (its signal decays ∝ 1/t).
The in-context accuracy stays near chance even so: the first step also stores W_OV¹ w_E(k) → w_U(k)
(layer 1's uniform average carries the output), which the W_OV² probe does not see, and with a
previous-token layer 1 the value at the output's position then votes for the trigger too.
docs/results.md has the measurements behind each of these statements and behind the step norms.
The theorem's own setting, in which the three steps give a working induction head, is in `theorem`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from birth.base.seeds import THEORY_SELECT_STREAM, THEORY_STEP_STREAM, theory_batch_seed
from birth.base.validate import Choices, Int, Validated
from birth.experiments.theory.theorem import restricted_memories, theorem_batch, theorem_projection
from birth.models.targets import MEMORIES, MEMORY_LINEAR, Memory, orthogonal_embeddings, token_value
from birth.models.weights import attn_linear, native
from tasks.protocol import MemoryTargets
from tasks.shakespeare import CorpusStats, load_stats
from tasks.triggered_bigram import ICL_ACC, TriggeredBigram, loss_mask
from training.config import TrainConfig
from training.evaluation import evaluate, standard_groups

PAPER_ORDER: tuple[Memory, ...] = MEMORIES  # W_OV2 → W_KQ2 → W_KQ1, the theory's order
REVERSE_ORDER: tuple[Memory, ...] = tuple(reversed(MEMORIES))
StepNorms = dict[str, float | tuple[float, ...]]  # memory -> update norm, or a grid to search


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
    step_norms: StepNorms,
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
DEFAULT_STEP_NORMS: StepNorms = {
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
ORTHOGONAL_STEP_NORMS: StepNorms = {
    "W_OV2": 3.0,
    "W_KQ2": 20000.0,
    "W_KQ1": (10.0, 100.0, 1000.0, 10000.0),
}

# the law of the non-trigger transitions: uniform (the theorem's) or the task's character bigrams
Base = Literal["uniform", "shakespeare"]
# random: the model's N(0, I/d) draws; orthogonal: `orthogonal_embeddings`, the infinite-width idealization
Embeddings = Literal["random", "orthogonal"]
# task: the task's sequences, every counter >= 2 target; theorem: `theorem_batch`
Data = Literal["task", "theorem"]


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


def uniform_stats(stats: CorpusStats) -> CorpusStats:
    """Corpus statistics with uniform unigram and bigram laws over the same vocabulary."""
    n = stats.vocab_size
    return CorpusStats(
        vocab=stats.vocab,
        unigram_counts=torch.ones(n, dtype=torch.long),
        bigram_counts=torch.ones(n, n, dtype=torch.long),
        n_chars=n,
        sha256="uniform",
    )


@dataclass(frozen=True)
class StepsConfig(Validated):
    """How `run_gradient_steps` steps (the model, task and held-out batch are a TrainConfig's).

    The theorem's assumptions are options; the last three need orthogonal embeddings. Every
    gradient is that of the loss of the TrainConfig's `loss_on` (outputs: counter >= 2 targets,
    as in the theorem); the metrics are always those of the task's held-out batch.
    """

    order: Annotated[tuple[Memory, ...], Choices(MEMORIES)] = PAPER_ORDER  # the memories stepped, in turn
    # sequences per step, drawn in chunks of `chunk` from a generator seeded by (seed, step index):
    # two orders see the same data at the same step index
    n_sequences: Annotated[int, Int(1)] = 2048
    chunk: Annotated[int, Int(1)] = 256
    step_norms: StepNorms | None = None  # update norm of each memory (None: DEFAULT_STEP_NORMS)
    # multiply the key-query step norms by √(d/128) (their scores are divided by √d)
    scale_norms_with_d: bool = True
    # uniform (the theorem's); with Shakespeare statistics the frequent characters make the context
    # average E[x̄] large and the first step's W_OV² is swamped by a rank-one term
    base: Base = "uniform"
    # W_V² = I (the theorem's architecture trains W_OV² itself); a step on W_O² behind a random W_V²
    # moves W_OV² by W_V² W_V²ᵀ ∇, and that Wishart matrix mixes the stored pairs at finite d
    value_identity: bool = True
    # keep the residual path to the unembedding in the loss (`induction_logits`; the theorem's
    # infinite width makes it vanish); the metrics always use the full model
    direct_path: bool = False
    embeddings: Embeddings = "random"  # orthogonal needs d >= 3N + 2T
    # theorem: the second output token only, first occurrences stratified over positions;
    # n_sequences is rounded to whole strata of T − 2 sequences
    data: Data = "task"
    value_tokens: bool = False  # `token_value`: layer 2's value reads the token part only
    # each step on its THEOREM_BLOCKS block only (`theorem_projection`): every memory (True),
    # none (False) or those named; restricting W_OV2 does what value_tokens does
    restrict: bool | tuple[Memory, ...] = False
    # each gradient averaged over the token relabelings that keep the law (its expectation, the
    # population gradient, is unchanged)
    symmetric: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        options = {
            "value_tokens": self.value_tokens,
            "restrict": bool(self.restricted),
            "symmetric": self.symmetric,
        }
        needs_orthogonal = [name for name, on in options.items() if on]
        if needs_orthogonal and self.embeddings != "orthogonal":
            raise ValueError(
                f"{', '.join(needs_orthogonal)} need embeddings='orthogonal', got {self.embeddings!r}"
            )
        if self.symmetric and self.data == "task" and self.base != "uniform":
            raise ValueError(SYMMETRIC_NEEDS)

    @property
    def restricted(self) -> tuple[str, ...]:
        """The memories stepped on their theorem block only."""
        return restricted_memories(self.restrict)

    def norms(self, d_model: int) -> StepNorms:
        """The update norm of each memory at width `d_model`."""
        norms = dict(DEFAULT_STEP_NORMS if self.step_norms is None else self.step_norms)
        if self.scale_norms_with_d:
            f = math.sqrt(d_model / 128)
            for name in ("W_KQ2", "W_KQ1"):
                v = norms[name]
                norms[name] = v * f if isinstance(v, (int, float)) else [x * f for x in v]
        return norms


SYMMETRIC_NEEDS = "symmetric needs fixed triggers and a uniform law (base 'uniform' or data 'theorem')"


def _check_setting(config: TrainConfig, steps: StepsConfig) -> None:
    if config.model.n_layers != 2 or config.model.variant != "simplified":
        raise ValueError("the gradient-step procedure needs the simplified 2-layer model")
    if steps.symmetric and config.task.trigger_mode != "fixed":
        raise ValueError(SYMMETRIC_NEEDS)
    if steps.data == "theorem" and config.optim.loss_on != "outputs":
        raise ValueError(
            f"data 'theorem' has its loss on the second output token: --loss-on outputs, "
            f"got {config.optim.loss_on!r}"
        )


def _zero_model(config: TrainConfig, steps: StepsConfig, vocab_size: int) -> nn.Module:
    """The model of `config` from a zero init of its trainable matrices (attention uniform), with
    the frozen weights the options ask for."""
    model = config.build_model(vocab_size)
    if steps.embeddings == "orthogonal":
        orthogonal_embeddings(model)
    if steps.value_identity:
        with torch.no_grad():
            attn_linear(model, 1, "v").weight.copy_(torch.eye(config.model.d_model))
    if steps.value_tokens:
        token_value(model)
    return model


def _step_batches(
    config: TrainConfig, steps: StepsConfig, task: TriggeredBigram
) -> tuple[Callable[[int], list], Callable[[int], list]]:
    """(the batches of the gradient of step i, the held-out batches of its step-size line search),
    each a stream of its own, apart from the training loop's per-step batches."""
    if steps.data == "theorem":
        # chunk sizes count sequences per first position (whole strata of T − 2 sequences)
        strata = config.task.seq_len - 2
        total, unit = max(1, round(steps.n_sequences / strata)), max(1, steps.chunk // strata)

        def sample(size: int, gen: torch.Generator):
            return theorem_batch(task, size, gen)
    else:
        total, unit, sample = steps.n_sequences, steps.chunk, task.sample
    sizes = [min(unit, total - start) for start in range(0, total, unit)]

    def draw(stream: int, i: int, chunk_sizes: list[int]) -> list:
        return [
            sample(size, task.generator(theory_batch_seed(config.run.seed, stream, i, j)))
            for j, size in enumerate(chunk_sizes)
        ]

    def batches_for_step(i: int) -> list:
        return draw(THEORY_STEP_STREAM, i, sizes)

    def select_batches(i: int) -> list:  # never used for a gradient
        return draw(THEORY_SELECT_STREAM, i, sizes[: max(1, len(sizes) // 4)])

    return batches_for_step, select_batches


def run_gradient_steps(
    config: TrainConfig,
    steps: StepsConfig = StepsConfig(),
    progress: Callable[[str], None] | None = None,
) -> list[StepRecord]:
    """Three large-batch gradient steps from zero on the simplified 2-layer model of `config`
    (built with `trainable_init="zero"`: W_K¹ = W_K² = W_O² = 0, attention uniform), as `steps`
    says; the initial state and the state after each step."""
    _check_setting(config, steps)
    config = config.replace(trainable_init="zero")
    stats = uniform_stats(load_stats()) if steps.base == "uniform" else load_stats()
    config.validate(stats.vocab_size)
    task = TriggeredBigram(config.task, stats)
    model = _zero_model(config, steps, stats.vocab_size)
    probe_triggers = task.fixed_triggers if config.task.trigger_mode == "fixed" else None
    eval_batch = task.sample(config.run.eval_batch_size, task.generator(config.run.eval_seed))
    batches_for_step, select_batches = _step_batches(config, steps, task)
    project = None
    if steps.restricted or steps.symmetric:
        project = theorem_projection(
            stats.vocab_size,
            config.task.seq_len,
            config.model.d_model,
            task.fixed_triggers.cpu(),
            restrict=steps.restrict,
            symmetric=steps.symmetric,
        )

    def mask_of(b) -> torch.Tensor:
        return loss_mask(b, config.optim.loss_on)

    def loss(m: nn.Module, b) -> torch.Tensor:
        logits = induction_logits(m, b.inputs, mask_of(b), direct_path=steps.direct_path)
        return F.cross_entropy(logits, b.targets[mask_of(b)])

    def measure(m: nn.Module) -> tuple[dict[str, float], float]:
        groups = standard_groups(task, loss_on=config.optim.loss_on, targets=MemoryTargets(probe_triggers))
        row = evaluate(m, eval_batch, groups, fast_path=config.run.fast_path)
        probes = {k.removeprefix("probes/"): v for k, v in row.items() if k.startswith("probes/")}
        return probes, row[ICL_ACC]

    return gradient_steps(
        model,
        steps.order,
        steps.norms(config.model.d_model),
        batches_for_step,
        loss,
        lambda b: int(mask_of(b).sum()),
        measure,
        progress,
        select_batches,
        project,
    )
