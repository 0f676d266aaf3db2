"""The triggered-bigram task of *Birth of a Transformer* (Bietti et al., 2023, section 3).

Each sequence follows the global character-bigram model π_b of the corpus, except that K trigger
tokens q_k are always followed by a per-sequence output token o_k. Predicting o_k after the second
occurrence of q_k needs an induction head.

The sampler is sequential in time (it is a Markov chain) but vectorized across the batch: one
`searchsorted` on the cumulative bigram table per position, no Python loop over sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from tasks.shakespeare import CorpusStats, load_stats

TRIGGER_MODES = ("fixed", "random")
OUTPUT_MODES = ("uniform", "no_repeat", "bigram")


@dataclass
class TaskConfig:
    """Triggered-bigram task settings (paper defaults: K=5 fixed triggers, T=256, uniform outputs)."""

    seq_len: int = 256  # T: inputs are z_1..z_T, targets z_2..z_{T+1}
    n_triggers: int = 5  # K
    trigger_mode: str = "fixed"  # fixed = the K most frequent characters; random = per sequence
    trigger_offset: int = 0  # fixed mode: skip this many of the most frequent characters
    output_mode: str = "uniform"  # uniform | no_repeat (o_k != q_k) | bigram (o_k ~ π_b(.|q_k))

    def validate(self, vocab_size: int) -> None:
        if self.seq_len < 2:
            raise ValueError(f"seq_len (T) must be >= 2, got {self.seq_len}")
        if self.n_triggers < 0:
            raise ValueError(f"n_triggers (K) must be >= 0, got {self.n_triggers}")
        if self.n_triggers >= vocab_size:
            raise ValueError(
                f"n_triggers (K) must be < the vocabulary size N={vocab_size}, got {self.n_triggers}"
            )
        if self.trigger_mode not in TRIGGER_MODES:
            raise ValueError(f"trigger_mode must be one of {TRIGGER_MODES}, got {self.trigger_mode!r}")
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}")
        if self.trigger_offset < 0:
            raise ValueError(f"trigger_offset must be >= 0, got {self.trigger_offset}")
        if self.trigger_mode == "fixed" and self.trigger_offset + self.n_triggers > vocab_size:
            raise ValueError(
                f"trigger_offset + n_triggers must be <= N={vocab_size}, "
                f"got {self.trigger_offset} + {self.n_triggers}"
            )


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, T+1] long
    counter: torch.Tensor  # [B, T]: n if target t follows the n-th occurrence of its trigger, else 0
    triggers: torch.Tensor  # [B, K]
    outputs: torch.Tensor  # [B, K]

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[:, 1:]


def occurrence_counter(inputs: torch.Tensor, triggers: torch.Tensor) -> torch.Tensor:
    """[B, T] counter: n where inputs[b, t] is the n-th occurrence of one of b's triggers, else 0."""
    match = rearrange(inputs, "b t -> b t 1") == rearrange(triggers, "b k -> b 1 k")
    counts = match.long().cumsum(dim=1)
    return (counts * match).sum(dim=-1)


class TriggeredBigram:
    """Sampler for the triggered-bigram task on one device."""

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
        # float64 cumulative tables so that searchsorted never lands past the last token
        self.unigram = self.stats.unigram_probs.to(self.device)
        self.bigram = self.stats.bigram_probs.to(self.device)
        self.bigram_cdf = self.bigram.cumsum(dim=1)
        self.bigram_cdf[:, -1] = 1.0
        self.unigram_cdf = self.unigram.cumsum(dim=0)
        self.unigram_cdf[-1] = 1.0
        c = self.config
        ranking = self.stats.frequency_ranking().to(self.device)
        self.fixed_triggers = ranking[c.trigger_offset : c.trigger_offset + c.n_triggers]

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

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

    def sample(self, batch_size: int, gen: torch.Generator | int) -> Batch:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(gen, int):
            gen = self.generator(gen)
        T = self.config.seq_len
        triggers = self.sample_triggers(batch_size, gen)
        outputs = self.sample_outputs(triggers, gen)
        # all uniforms drawn at once: column 0 for z_1, column t for the step z_t -> z_{t+1}
        u = torch.rand(batch_size, T + 1, generator=gen, device=self.device, dtype=torch.float64)
        tokens = torch.empty(batch_size, T + 1, dtype=torch.long, device=self.device)
        cur = torch.searchsorted(self.unigram_cdf, u[:, 0].contiguous(), right=True)
        tokens[:, 0] = cur
        arange_b = torch.arange(batch_size, device=self.device)
        for t in range(1, T + 1):
            nxt = torch.searchsorted(self.bigram_cdf[cur], u[:, t : t + 1], right=True).squeeze(1)
            if triggers.shape[1]:
                hit = cur.unsqueeze(1) == triggers  # [B, K], at most one True per row
                is_trig = hit.any(dim=1)
                forced = outputs[arange_b, hit.long().argmax(dim=1)]
                nxt = torch.where(is_trig, forced, nxt)
            tokens[:, t] = nxt
            cur = nxt
        counter = occurrence_counter(tokens[:, :-1], triggers)
        return Batch(tokens, counter, triggers, outputs)
