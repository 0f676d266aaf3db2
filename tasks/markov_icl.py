"""In-context learning of Markov chains (ICL-MC; Edelman, Edelman, Goel, Malach, Tsilivis, NeurIPS 2024).

Each sequence comes from its own Markov chain on k states (the tokens 0..k-1): a transition matrix
P drawn per sequence, the first state from P's stationary law (or uniform), then T steps of the
chain. No fixed fact is learnable: a model must estimate P from its context. The defaults are the
reference code's: k = 2, α = 1 (rows uniform on the simplex), T = 100, stationary first state.

Priors (`--prior`):
- `dirichlet`: each row P[i] ~ Dirichlet(α·1), independently (the paper's);
- `doubly_stochastic`: P = Σ_j w_j Π_j with w ~ Dirichlet(α·1) and Π_j the k permutation matrices of
  a random Latin square, so every row is a permutation of w (each row still Dirichlet(α·1)) and every
  column sums to one: the stationary law is uniform and in-context unigram counts carry no
  information about the next state (for k = 2 this is the reference's `interpolate` variant at
  p = 1, [[a, 1-a], [1-a, a]] with a uniform).

Strategies, per position t (predicting z_{t+1} from z_1..z_t), each with add-α smoothing as the
reference's `mean_alg` / `statistical` (α = 1):
- uniform: 1/k;
- unigram: (#{s <= t: z_s = j} + α) / (t + kα);
- bigram: (#{s < t: z_s = z_t, z_{s+1} = j} + α) / (#{s < t: z_s = z_t} + kα), the Dirichlet posterior
  mean of the row P[z_t]. Under the `dirichlet` prior with a uniform first state it is the exact
  Bayes-optimal predictor; with a stationary first state the likelihood gains the factor π_P(z_1),
  which the count estimator ignores (as the paper's does). Its cross-entropy is `eval/bayes_loss`.

Metrics (`metrics`): KL(strategy ‖ model) for each strategy, the model's loss minus the Bayes loss,
the oracle loss (entropy of the true rows P[z_t], below every predictor's), and the attention
readings of the statistical induction head (`attention_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Literal, get_args

import torch
import torch.nn.functional as F

from birth.base.validate import Float, Int, Validated
from tasks.circuits import induction_mass, previous_token_mass, statistical_induction_pattern
from tasks.protocol import LossOn, TokenBatch

Prior = Literal["dirichlet", "doubly_stochastic"]
FirstState = Literal["stationary", "uniform"]
Strategy = Literal["uniform", "unigram", "bigram"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

KL = "eval/kl_"  # + strategy: mean KL(strategy ‖ model) over the held-out positions (nats)
KL_UNIFORM, KL_UNIGRAM, KL_BIGRAM = (KL + s for s in STRATEGIES)
BAYES_LOSS = "eval/bayes_loss"  # cross-entropy of the bigram strategy (the Bayes-optimal predictor)
MODEL_LOSS = "eval/model_loss"  # the model's cross-entropy on every target
EXCESS_LOSS = "eval/excess_loss"  # MODEL_LOSS / BAYES_LOSS - 1
ORACLE_LOSS = "eval/oracle_loss"  # mean entropy of the true rows P[z_t]: the chain known
PREV_MASS = "attn/prev_token_mass"  # layer 1: weight of query t on key t - 1
INDUCTION_MASS = "attn/induction_mass"  # layer 2: weight on keys s with z_{s-1} == z_t
HEADLINE: Mapping[str, str] = MappingProxyType(
    {
        KL_BIGRAM: "KL(bigram strategy ‖ model)",
        KL_UNIGRAM: "KL(unigram strategy ‖ model)",
        EXCESS_LOSS: "loss above the Bayes-optimal loss (fraction)",
    }
)


@dataclass(frozen=True)
class MarkovICLConfig(Validated):
    """In-context Markov chains (the reference code's defaults: k = 2, α = 1, T = 100)."""

    n_states: Annotated[int, Int(2)] = 2  # k states (the vocabulary)
    alpha: Annotated[float, Float(0.0, open_low=True)] = 1.0  # Dirichlet concentration α of each row
    seq_len: Annotated[int, Int(2)] = 100  # T: inputs z_1..z_T, targets z_2..z_{T+1}
    prior: Prior = "dirichlet"  # dirichlet: rows ~ Dirichlet(α·1); doubly_stochastic: uniform stationary law
    first_state: FirstState = "stationary"  # z_1 from the chain's stationary law, or uniform


@dataclass
class MarkovBatch(TokenBatch):
    """Sequences [B, T+1] and the transition matrix of each, `transitions` [B, k, k] (float64)."""

    transitions: torch.Tensor


def gamma(concentration: float, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Gamma(concentration, 1) draws (float64), every draw from `generator` (Marsaglia and Tsang's
    rejection sampler; a concentration a < 1 draws Gamma(a + 1) · U^(1/a))."""
    device = generator.device
    boost = concentration < 1.0
    a = concentration + 1.0 if boost else concentration
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    out = torch.empty(shape, dtype=torch.float64, device=device)
    todo = torch.ones(shape, dtype=torch.bool, device=device)
    while bool(todo.any()):
        n = int(todo.sum())
        x = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (u.log() < 0.5 * x * x + d - d * v + d * v.clamp(min=1e-300).log())
        idx = todo.nonzero(as_tuple=True)
        accepted = tuple(i[ok] for i in idx)
        out[accepted] = d * v[ok]
        todo[accepted] = False
    if boost:
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
        out = out * u.pow(1.0 / concentration)
    return out


def dirichlet(concentration: float, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Symmetric Dirichlet(concentration·1) draws along the last dimension of `shape` (float64)."""
    g = gamma(concentration, shape, generator)
    total = g.sum(dim=-1, keepdim=True)
    # a tiny concentration can underflow every coordinate: fall back to one uniform vertex
    return torch.where(total > 0, g / total.clamp(min=1e-300), torch.full_like(g, 1.0 / shape[-1]))


def stationary_law(transitions: torch.Tensor) -> torch.Tensor:
    """[B, k]: π with π P = π, Σ π = 1 (the chains are irreducible almost surely)."""
    B, k, _ = transitions.shape
    eye = torch.eye(k, dtype=transitions.dtype, device=transitions.device)
    system = (transitions.transpose(1, 2) - eye).clone()
    system[:, -1, :] = 1.0
    rhs = torch.zeros(B, k, 1, dtype=transitions.dtype, device=transitions.device)
    rhs[:, -1] = 1.0
    law = torch.linalg.solve(system, rhs).squeeze(-1).clamp_(min=0.0)
    return law / law.sum(dim=-1, keepdim=True)


def strategy_laws(inputs: torch.Tensor, n_states: int, alpha: float) -> dict[str, torch.Tensor]:
    """Each strategy's next-state law at every position: name -> [B, T, k] (float64)."""
    B, T = inputs.shape
    k = n_states
    onehot = F.one_hot(inputs, k).double()  # [B, T, k]
    seen = onehot.cumsum(dim=1)  # z_1..z_t
    unigram = (seen + alpha) / (seen.sum(dim=-1, keepdim=True) + k * alpha)
    # transitions z_s -> z_{s+1} with s + 1 <= t, as counts [B, T, k, k] (row: from, column: to)
    pairs = F.one_hot(inputs[:, :-1] * k + inputs[:, 1:], k * k).double().cumsum(dim=1)
    pairs = torch.cat([torch.zeros(B, 1, k * k, dtype=pairs.dtype, device=pairs.device), pairs], dim=1)
    rows = pairs.view(B, T, k, k).gather(2, inputs[:, :, None, None].expand(B, T, 1, k)).squeeze(2)
    bigram = (rows + alpha) / (rows.sum(dim=-1, keepdim=True) + k * alpha)
    uniform = torch.full_like(unigram, 1.0 / k)
    return {"uniform": uniform, "unigram": unigram, "bigram": bigram}


def strategy_kl(laws: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over positions of KL(law ‖ softmax(logits)), laws and logits [B, T, k]."""
    log_model = F.log_softmax(logits.double(), dim=-1)
    return (torch.special.xlogy(laws, laws) - laws * log_model).sum(dim=-1).mean().item()


class MarkovICL:
    """Sampler, strategies and metrics of in-context Markov chains (a `tasks.protocol.Task`, with
    the attention readings and the ideal induction pattern of `tasks.circuits`)."""

    headline = HEADLINE

    def __init__(self, config: MarkovICLConfig | None = None, device: str | torch.device = "cpu") -> None:
        self.config = config or MarkovICLConfig()
        self.device = torch.device(device)
        self.vocab_size = self.config.n_states

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def loss_mask(self, batch: TokenBatch, loss_on: LossOn) -> torch.Tensor:
        """Every target: each one is a transition of the sequence's chain."""
        return torch.ones_like(batch.targets, dtype=torch.bool)

    def sample_transitions(self, batch_size: int, gen: torch.Generator) -> torch.Tensor:
        """[B, k, k] transition matrices from the prior (float64)."""
        k, alpha = self.config.n_states, self.config.alpha
        if self.config.prior == "dirichlet":
            return dirichlet(alpha, (batch_size, k, k), gen)
        weights = dirichlet(alpha, (batch_size, k), gen)  # w_j
        rows = torch.rand(batch_size, k, generator=gen, device=self.device).argsort(dim=1)  # τ
        columns = torch.rand(batch_size, k, generator=gen, device=self.device).argsort(dim=1)  # σ
        shift = torch.arange(k, device=self.device)
        # P[i, σ((τ(i) + j) mod k)] = w_j: row i holds every w_j once, column c every w_j once
        cols = columns.gather(1, ((rows[:, :, None] + shift) % k).view(batch_size, -1)).view(batch_size, k, k)
        out = torch.zeros(batch_size, k, k, dtype=torch.float64, device=self.device)
        return out.scatter_(2, cols, weights[:, None, :].expand(batch_size, k, k).contiguous())

    def sample(self, batch_size: int, gen: torch.Generator | int) -> MarkovBatch:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(gen, int):
            gen = self.generator(gen)
        T, k = self.config.seq_len, self.config.n_states
        transitions = self.sample_transitions(batch_size, gen)
        if self.config.first_state == "stationary":
            first = stationary_law(transitions)
        else:
            first = torch.full((batch_size, k), 1.0 / k, dtype=torch.float64, device=self.device)
        u = torch.rand(T + 1, batch_size, generator=gen, device=self.device, dtype=torch.float64)
        cdf = transitions.cumsum(dim=-1)  # [B, k, k]
        tokens = torch.empty(T + 1, batch_size, dtype=torch.long, device=self.device)
        tokens[0] = (u[0, :, None] >= first.cumsum(dim=-1)).sum(dim=-1).clamp_(max=k - 1)
        batch_ids = torch.arange(batch_size, device=self.device)
        for t in range(1, T + 1):
            row = cdf[batch_ids, tokens[t - 1]]  # [B, k]
            tokens[t] = (u[t, :, None] >= row).sum(dim=-1).clamp_(max=k - 1)
        return MarkovBatch(tokens.t().contiguous(), transitions)

    def strategies(self, batch: TokenBatch) -> dict[str, torch.Tensor]:
        """Each strategy's law at every position of `batch`: name -> [B, T, k]."""
        return strategy_laws(batch.inputs, self.config.n_states, self.config.alpha)

    def bayes_loss(self, batch: TokenBatch) -> float:
        """Cross-entropy of the bigram strategy (the Dirichlet posterior mean) on the batch."""
        law = self.strategies(batch)["bigram"]
        return -law.gather(-1, batch.targets[..., None]).log().mean().item()

    def metrics(self, logits: torch.Tensor, batch: MarkovBatch) -> dict[str, float]:
        laws = self.strategies(batch)
        logits = logits[..., : self.config.n_states]
        row = {KL + name: strategy_kl(law, logits) for name, law in laws.items()}
        bayes = -laws["bigram"].gather(-1, batch.targets[..., None]).log().mean().item()
        model = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten()).item()
        true_rows = batch.transitions.gather(
            1, batch.inputs[:, :, None].expand(-1, -1, self.config.n_states)
        )  # [B, T, k]: P[z_t]
        oracle = -torch.special.xlogy(true_rows, true_rows).sum(dim=-1).mean().item()
        row.update(
            {BAYES_LOSS: bayes, MODEL_LOSS: model, EXCESS_LOSS: model / bayes - 1.0, ORACLE_LOSS: oracle}
        )
        return row

    def attention_metrics(self, patterns: list[torch.Tensor], batch: TokenBatch) -> dict[str, float]:
        """Layer 1's previous-token mass; the last layer's mass on keys that follow an earlier
        occurrence of the query's token (the statistical induction head)."""
        row = {PREV_MASS: previous_token_mass(patterns[0])}
        if len(patterns) >= 2:
            row[INDUCTION_MASS] = induction_mass(patterns[-1], batch.inputs)
        return row

    def induction_pattern(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform weight on every key that follows an earlier occurrence of the query's token:
        copying those keys' tokens gives the in-context transition counts (the bigram strategy)."""
        return statistical_induction_pattern(inputs)
