"""The triggered-bigram task of *Birth of a Transformer* (Bietti et al., 2023, section 3).

Each sequence follows the global character-bigram model π_b of the corpus, except that K trigger
tokens q_k are always followed by a per-sequence output token o_k. Predicting o_k after the second
occurrence of q_k needs an induction head.

Two options of the reference code: `output_split` draws the outputs from the first 75% of the token
ids (train) or from the other 25% (test), to ask whether an induction head copies tokens it never
copied in training; `show_latents` opens each sequence with its K triggers z_1..z_K (counter -1
there: those targets are neither outputs nor bigram transitions), after which the chain starts
afresh from the unigram law.

The sampler is sequential in time (it is a Markov chain) but vectorized across the batch: a few
table look-ups per position (exact inverse-CDF sampling from the bigram counts, with each
sequence's triggers redirected to their outputs), no Python loop over sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Literal, get_args

import torch
import torch.nn.functional as F
from einops import rearrange

from birth.base.validate import Int, Validated
from tasks.circuits import statistical_induction_pattern
from tasks.protocol import LossOn, MemoryTargets, TokenBatch
from tasks.shakespeare import CorpusStats, load_stats

TriggerMode = Literal["fixed", "random"]
OutputMode = Literal["uniform", "no_repeat", "bigram"]
OutputSplit = Literal["all", "train", "test"]
TRIGGER_MODES: tuple[str, ...] = get_args(TriggerMode)
OUTPUT_MODES: tuple[str, ...] = get_args(OutputMode)
OUTPUT_SPLITS: tuple[str, ...] = get_args(OutputSplit)

# held-out metrics (paper Fig. 3), by the counter of their targets
ICL_ACC = "eval/icl_acc"  # accuracy after a repeated trigger (counter >= 2): the induction head
FIRST_ACC = "eval/first_acc"  # after a trigger's first occurrence (counter == 1): not predictable
TRIGGER_ACC = "eval/trigger_acc"  # after any trigger occurrence (counter >= 1)
BIGRAM_LOSS = "eval/bigram_loss"  # cross-entropy on the bigram transitions (counter == 0)
BIGRAM_ACC = "eval/bigram_acc"  # accuracy on the bigram transitions
BIGRAM_FLOOR = "eval/bigram_floor"  # the Bayes loss BIGRAM_LOSS approaches (`bigram_floor`)
HEADLINE: Mapping[str, str] = MappingProxyType(
    {
        ICL_ACC: "in-context accuracy (counter >= 2)",
        FIRST_ACC: "first-occurrence accuracy",
        BIGRAM_LOSS: "bigram loss",
    }
)
TRAIN_OUTPUT_FRACTION = 0.75  # --output-split train: the first int(0.75 N) token ids (the reference's)
LATENT = -1  # counter value of the positions that show the latents (--show-latents)


def output_split_range(split: OutputSplit, vocab_size: int) -> tuple[int, int]:
    """[lo, hi) token ids the outputs o_k are drawn from: all, the first int(0.75 N) or the rest."""
    n_train = int(TRAIN_OUTPUT_FRACTION * vocab_size)
    return {"all": (0, vocab_size), "train": (0, n_train), "test": (n_train, vocab_size)}[split]


@dataclass(frozen=True)
class TaskConfig(Validated):
    """Triggered-bigram task (paper defaults: K=5 fixed triggers, T=256, uniform outputs)."""

    seq_len: Annotated[int, Int(2)] = 256  # T: inputs are z_1..z_T, targets z_2..z_{T+1}
    n_triggers: Annotated[int, Int(0)] = 5  # K, the number of trigger tokens
    trigger_mode: TriggerMode = "fixed"  # fixed: the K most frequent characters; random: K per sequence
    trigger_offset: Annotated[int, Int(0)] = (
        0  # fixed triggers: skip this many of the most frequent characters
    )
    output_mode: OutputMode = "uniform"  # o_k uniform, uniform but != q_k (no_repeat), or ~ pi_b(.|q_k)
    output_split: OutputSplit = "all"  # o_k among all tokens, the first 75% of ids (train) or the rest (test)
    show_latents: bool = False  # the K triggers open the sequence (z_1..z_K), then the chain starts afresh

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.output_split != "all" and self.output_mode == "bigram":
            # pi_b(.|q) restricted to a quarter of the tokens can be empty (the reference refuses it too)
            raise ValueError("--output-split train/test needs --output-mode uniform or no_repeat, got bigram")
        if self.show_latents and self.n_triggers >= self.seq_len:
            raise ValueError(
                f"--show-latents needs --n-triggers < --seq-len (the K triggers take K of the T inputs), "
                f"got K={self.n_triggers}, T={self.seq_len}"
            )

    def validate(self, vocab_size: int) -> None:
        """The checks that need the vocabulary size N."""
        if self.n_triggers >= vocab_size:
            raise ValueError(
                f"--n-triggers (K) must be < the vocabulary size N={vocab_size}, got {self.n_triggers}"
            )
        if self.trigger_mode == "fixed" and self.trigger_offset + self.n_triggers > vocab_size:
            raise ValueError(
                f"--trigger-offset + --n-triggers must be <= N={vocab_size}, "
                f"got {self.trigger_offset} + {self.n_triggers}"
            )
        lo, hi = output_split_range(self.output_split, vocab_size)
        if self.output_mode == "no_repeat" and hi - lo < 2:
            raise ValueError(
                f"--output-split {self.output_split} leaves {hi - lo} token(s): no_repeat needs 2"
            )


@dataclass
class Batch(TokenBatch):
    """A triggered-bigram batch: `tokens` [B, T+1] and what each sequence's triggers did."""

    counter: torch.Tensor  # [B, T]: n if target t follows the n-th occurrence of its trigger, else 0
    # (-1 at the K positions that show the latents, --show-latents: neither bigram nor output targets)
    triggers: torch.Tensor  # [B, K]
    outputs: torch.Tensor  # [B, K]


def loss_mask(batch: Batch, loss_on: LossOn) -> torch.Tensor:
    """Targets the loss is taken on: counter >= 2 (outputs after a repeated trigger) or all."""
    if loss_on == "outputs":
        return batch.counter >= 2
    return torch.ones_like(batch.counter, dtype=torch.bool)


@torch.no_grad()
def heldout_metrics(logits: torch.Tensor, batch: Batch) -> dict[str, float]:
    """In-context accuracy (counter >= 2), first-occurrence accuracy (counter == 1), accuracy after
    any trigger (counter >= 1), bigram loss and accuracy (counter == 0) of `logits` [B, T, N]."""
    targets, counter = batch.targets, batch.counter
    correct = logits.argmax(dim=-1) == targets

    def acc(mask: torch.Tensor) -> float:
        return correct[mask].float().mean().item() if mask.any() else float("nan")

    def ce(mask: torch.Tensor) -> float:
        return F.cross_entropy(logits[mask], targets[mask]).item() if mask.any() else float("nan")

    return {
        ICL_ACC: acc(counter >= 2),
        FIRST_ACC: acc(counter == 1),
        TRIGGER_ACC: acc(counter >= 1),
        BIGRAM_LOSS: ce(counter == 0),
        BIGRAM_ACC: acc(counter == 0),
    }


@torch.no_grad()
def bigram_floor(batch: Batch, bigram: torch.Tensor) -> float:
    """The Bayes loss of the bigram targets (counter == 0): the mean entropy H(π_b(·|z_t)) in nats
    over the batch's counter-0 positions t, `bigram` [N, N] the rows π_b(·|k) (NaN without such a
    position). There the next token is drawn from π_b(·|z_t) whatever came before, so no model's
    expected cross-entropy on those targets (`BIGRAM_LOSS`) is below it."""
    mask = batch.counter == 0
    if not mask.any():
        return float("nan")
    rows = bigram.to(device=batch.inputs.device, dtype=torch.float64)
    entropy = -torch.special.xlogy(rows, rows).sum(dim=-1)  # [N]; 0 log 0 = 0
    return entropy[batch.inputs[mask]].mean().item()


def occurrence_counter(inputs: torch.Tensor, triggers: torch.Tensor) -> torch.Tensor:
    """[B, T] counter: n where inputs[b, t] is the n-th occurrence of one of b's triggers, else 0."""
    # [B, K, T] so that the running count is a cumsum along the contiguous last dimension
    match = rearrange(triggers, "b k -> b k 1") == rearrange(inputs, "b t -> b 1 t")
    dtype = torch.int16 if inputs.shape[1] < 2**15 else torch.int64
    counts = match.to(dtype).cumsum_(dim=2).mul_(match)
    return counts.sum(dim=1, dtype=dtype).long()  # at most one trigger matches per position


class TriggeredBigram:
    """Sampler for the triggered-bigram task on one device (a `tasks.protocol.MemoryTask`)."""

    headline = HEADLINE

    def __init__(
        self,
        config: TaskConfig | None = None,
        stats: CorpusStats | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config or TaskConfig()
        self.stats = stats or load_stats()
        self.device = torch.device(device)
        self.vocab_size = self.stats.vocab_size
        self.config.validate(self.vocab_size)
        # float64 cumulative unigram table so that searchsorted never lands past the last token
        self.unigram = self.stats.unigram_probs.to(self.device)
        self.bigram = self.stats.bigram_probs.to(self.device)
        self.unigram_cdf = self.unigram.cumsum(dim=0)
        self.unigram_cdf[-1] = 1.0
        # Exact bigram sampling by table look-up: row i of π_b is the segment
        # table[offset[i] : offset[i] + count[i]] holding next-token j bigram_counts[i, j] times, so
        # table[offset[i] + floor(u * count[i])] ~ π_b(. | i) for u ~ U[0, 1). N extra entries
        # (token v at len + v) serve the forced step q_k -> o_k as a segment of length one.
        counts = self.stats.bigram_counts.to(self.device)
        row_counts = counts.sum(dim=1)
        if bool((row_counts == 0).any()):
            empty = self.stats.decode(torch.nonzero(row_counts == 0).flatten().tolist())
            raise ValueError(f"stats: the bigram rows of {empty!r} are empty (no next character)")
        n = self.vocab_size
        ids = torch.arange(n, device=self.device)
        self.bigram_table = torch.cat([torch.repeat_interleave(ids.repeat(n), counts.flatten()), ids])
        # float64 offsets and counts for one fused `addcmul` per step; the counts are shrunk by
        # 2^-20 so that offset + u * count always stays below offset + count after rounding
        self.row_offset = (torch.cumsum(row_counts, dim=0) - row_counts).double()  # [N]
        self.row_count = row_counts.double() - 2.0**-20  # [N]
        c = self.config
        ranking = self.stats.frequency_ranking().to(self.device)
        self.fixed_triggers = ranking[c.trigger_offset : c.trigger_offset + c.n_triggers]

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def loss_mask(self, batch: Batch, loss_on: LossOn) -> torch.Tensor:
        return loss_mask(batch, loss_on)

    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """`heldout_metrics` and the floor of the bigram loss on this batch (`bigram_floor`)."""
        return {**heldout_metrics(logits, batch), BIGRAM_FLOOR: bigram_floor(batch, self.stats.bigram_probs)}

    def memory_targets(self) -> MemoryTargets:
        """The K fixed triggers (every token with random triggers) and the corpus bigram table."""
        triggers = self.fixed_triggers if self.config.trigger_mode == "fixed" else None
        return MemoryTargets(triggers=triggers, bigram=self.stats.bigram_probs)

    def induction_pattern(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ideal induction head (`tasks.circuits.InductionTask`): at a trigger seen before, uniform
        weight on the keys right after its earlier occurrences (each holds its output o_k); the other
        queries are not constrained. Fixed triggers only: random ones are not visible in the tokens."""
        c = self.config
        if c.trigger_mode != "fixed" or c.show_latents:
            raise ValueError(
                "--clamp induction on triggered-bigram needs --trigger-mode fixed without --show-latents "
                "(the ideal pattern is read from the tokens)"
            )
        pattern, rows = statistical_induction_pattern(inputs)
        is_trigger = torch.isin(inputs, self.fixed_triggers.to(inputs.device))
        return pattern, rows & is_trigger

    def sample_triggers(self, batch_size: int, gen: torch.Generator) -> torch.Tensor:
        k = self.config.n_triggers
        if self.config.trigger_mode == "fixed":
            return self.fixed_triggers.expand(batch_size, k).clone()
        if k == 0:
            return torch.empty(batch_size, 0, dtype=torch.long, device=self.device)
        # K distinct triggers per sequence, drawn from the unigram law without replacement
        weights = self.unigram.float().expand(batch_size, -1)
        return torch.multinomial(weights, k, replacement=False, generator=gen)

    def sample_outputs(self, triggers: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, k = triggers.shape
        n = self.vocab_size
        mode = self.config.output_mode
        if self.config.output_split != "all":
            return self._sample_split_outputs(triggers, gen)
        if mode == "uniform":
            return torch.randint(0, n, (b, k), generator=gen, device=self.device)
        if mode == "no_repeat":
            # uniform over the N-1 tokens other than q_k: draw in [0, N-1) and skip q_k
            r = torch.randint(0, n - 1, (b, k), generator=gen, device=self.device)
            return r + (r >= triggers).long()
        rows = self.bigram[triggers.reshape(-1)].float()  # o_k ~ π_b(. | q_k)
        if rows.shape[0] == 0:
            return torch.empty(b, 0, dtype=torch.long, device=self.device)
        return torch.multinomial(rows, 1, generator=gen).view(b, k)

    def _sample_split_outputs(self, triggers: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """o_k uniform over the ids [lo, hi) of --output-split (minus q_k itself with no_repeat)."""
        lo, hi = output_split_range(self.config.output_split, self.vocab_size)
        u = torch.rand(triggers.shape, generator=gen, device=self.device, dtype=torch.float64)
        if self.config.output_mode == "uniform":
            return lo + (u * (hi - lo)).long().clamp_(max=hi - lo - 1)
        # no_repeat: a trigger inside [lo, hi) leaves hi - lo - 1 choices; draw among them, skip q_k
        inside = (triggers >= lo) & (triggers < hi)
        size = (hi - lo) - inside.long()
        r = (u * size).long().minimum(size - 1)
        return lo + r + (inside & (r >= triggers - lo)).long()

    def sample(self, batch_size: int, gen: torch.Generator | int) -> Batch:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(gen, int):
            gen = self.generator(gen)
        return self._chains(*self._draws(batch_size, gen))

    def sample_many(self, batch_size: int, generators: Sequence[torch.Generator]) -> list[Batch]:
        """`[self.sample(batch_size, g) for g in generators]`, equal bit for bit: each generator
        makes the same draws in the same order as in `sample`, and the chains of all the batches
        run as one batch (the per-position loop costs the same for any number of sequences)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not generators:
            return []
        draws = [self._draws(batch_size, gen) for gen in generators]
        triggers, outputs, u = (torch.cat(parts, dim=dim) for parts, dim in zip(zip(*draws), (0, 0, 1)))
        whole = self._chains(triggers, outputs, u)
        fields = (whole.tokens, whole.counter, whole.triggers, whole.outputs)
        return [Batch(*parts) for parts in zip(*(x.split(batch_size) for x in fields))]

    def _draws(
        self, batch_size: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The random draws of a batch, in `sample`'s order: triggers [B, K], outputs [B, K] and the
        uniforms [T + 1, B] (row 0 for z_1, row t for the step z_t -> z_{t+1})."""
        triggers = self.sample_triggers(batch_size, gen)
        outputs = self.sample_outputs(triggers, gen)
        u = torch.rand(
            self.config.seq_len + 1, batch_size, generator=gen, device=self.device, dtype=torch.float64
        )
        return triggers, outputs, u

    def _chains(self, triggers: torch.Tensor, outputs: torch.Tensor, u: torch.Tensor) -> Batch:
        """The sequences of the draws `_draws` made: the chain run by table look-ups, no draw."""
        T = self.config.seq_len
        n = self.vocab_size
        batch_size = triggers.shape[0]
        # --show-latents: z_1..z_K are the triggers, and the chain starts afresh at z_{K+1} ~ unigram
        # (the latents are not followed by their outputs and do not count as occurrences)
        first = triggers.shape[1] if self.config.show_latents else 0
        # per-sequence look-up rows [B*N]: a trigger q_k of sequence b points at the length-one
        # segment of its output o_k, every other token at its bigram row
        offset = self.row_offset.repeat(batch_size, 1)
        count = self.row_count.repeat(batch_size, 1)
        if triggers.shape[1]:
            offset.scatter_(1, triggers, (self.bigram_table.shape[0] - n + outputs).double())
            count.scatter_(1, triggers, 1.0 - 2.0**-20)
        offset, count = offset.view(-1), count.view(-1)
        base = torch.arange(batch_size, device=self.device) * n
        tokens = torch.empty(T + 1, batch_size, dtype=torch.long, device=self.device)
        if first:
            tokens[:first] = triggers.t()
        torch.searchsorted(self.unigram_cdf, u[first], right=True, out=tokens[first])
        # a few small ops per step into preallocated buffers: the step cost is dispatch overhead
        key, pos = torch.empty_like(base), torch.empty_like(base)
        off_k, cnt_k = torch.empty_like(u[0]), torch.empty_like(u[0])
        for t in range(first + 1, T + 1):
            torch.add(tokens[t - 1], base, out=key)
            torch.index_select(offset, 0, key, out=off_k)
            torch.index_select(count, 0, key, out=cnt_k)
            pos.copy_(off_k.addcmul_(u[t], cnt_k))  # offset + floor(u * count), floor by the cast
            torch.index_select(self.bigram_table, 0, pos, out=tokens[t])
        tokens = tokens.t().contiguous()
        counter = occurrence_counter(tokens[:, first:-1], triggers)
        if first:
            latent = torch.full((batch_size, first), LATENT, dtype=counter.dtype, device=self.device)
            counter = torch.cat([latent, counter], dim=1)
        return Batch(tokens, counter, triggers, outputs)
