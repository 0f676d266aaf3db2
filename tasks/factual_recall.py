"""The synthetic factual-recall task of Nichani, Lee, Bietti (ICLR 2025, section 4).

S subjects, R relations, and for each relation r a set A_r of D answers (the sets disjoint). The
facts are one answer a*(s, r) ∈ A_r per (subject, relation), uniform in A_r, drawn once from
`facts_seed`. A sequence is T tokens: T − 2 noise tokens (uniform over `n_noise` noise tokens), the
subject s and the relation r (each uniform) at random distinct positions (layout "random"), or the
subject at a random position and the relation last (layout "relation-last", the relation as the
final query); the token after them, the target at the last position, is a*(s, r).

Vocabulary (N = S + R + R D + n_noise): subjects [0, S), relations [S, S + R), the answers of
relation r [S + R + r D, S + R + (r + 1) D), noise tokens after them.

Metrics at the last position of a held-out batch: `eval/fact_acc` (the argmax is a*(s, r)),
`eval/relation_acc` (the argmax lies in A_r: right relation, any subject), `eval/answer_loss` (the
cross-entropy of a*(s, r)). `all_facts` enumerates the S R facts once each, for the exact accuracy
over every fact; `relation_only_loss` is the loss of the best predictor that sees the relation only
(the plateau of the "hallucination" stage).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from birth.base.validate import Int, Validated
from tasks.protocol import LossOn, TokenBatch

Layout = Literal["random", "relation-last"]
FACT_ACC = "eval/fact_acc"
RELATION_ACC = "eval/relation_acc"
ANSWER_LOSS = "eval/answer_loss"
HEADLINE: Mapping[str, str] = MappingProxyType(
    {
        FACT_ACC: "held-out accuracy of the answer a*(s, r) at the last position",
        RELATION_ACC: "held-out fraction of answers in the relation's answer set",
        ANSWER_LOSS: "held-out cross-entropy of the answer",
    }
)


@dataclass(frozen=True)
class FactualRecallConfig(Validated):
    """The facts and the sequences of the factual-recall task."""

    n_subjects: Annotated[int, Int(1)] = 32  # S subjects
    n_relations: Annotated[int, Int(1)] = 4  # R relations
    answers_per_relation: Annotated[int, Int(1)] = 8  # D answers per relation (disjoint sets)
    n_noise: Annotated[int, Int(0)] = 16  # noise tokens filling the sequence
    seq_len: Annotated[int, Int(2)] = 8  # T input tokens (subject, relation and T - 2 noise tokens)
    layout: Layout = "random"  # random: s and r at random positions; relation-last: r is the last input
    facts_seed: Annotated[int, Int(0)] = 0  # seed of the fact table a*(s, r)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seq_len > 2 and self.n_noise == 0:
            raise ValueError(f"--n-noise must be >= 1 when --seq-len > 2 (got --seq-len {self.seq_len})")

    @property
    def vocab_size(self) -> int:
        s, r, d = self.n_subjects, self.n_relations, self.answers_per_relation
        return s + r + r * d + self.n_noise

    @property
    def num_facts(self) -> int:
        return self.n_subjects * self.n_relations


@dataclass
class FactBatch(TokenBatch):
    """Sequences with their subject and relation (ids in [0, S) and [0, R)) and answer token."""

    subjects: torch.Tensor  # [B]
    relations: torch.Tensor  # [B]
    answers: torch.Tensor  # [B] token ids


class FactualRecall:
    """The task (implements `tasks.protocol.Task`)."""

    headline = HEADLINE

    def __init__(self, config: FactualRecallConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.vocab_size = config.vocab_size
        s, r, d = config.n_subjects, config.n_relations, config.answers_per_relation
        self.relation_offset = s
        self.answer_offset = s + r
        self.noise_offset = s + r + r * d
        gen = torch.Generator().manual_seed(config.facts_seed)
        choice = torch.randint(0, d, (s, r), generator=gen)  # a*(s, r) = answer `choice` of A_r
        self.facts = (self.answer_offset + torch.arange(r) * d + choice).to(self.device)  # [S, R] token ids

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def sample(self, batch_size: int, generator: torch.Generator) -> FactBatch:
        """`batch_size` sequences of uniform (subject, relation) pairs."""
        subjects = torch.randint(
            0, self.config.n_subjects, (batch_size,), generator=generator, device=self.device
        )
        relations = torch.randint(
            0, self.config.n_relations, (batch_size,), generator=generator, device=self.device
        )
        return self._sequences(subjects, relations, generator)

    def all_facts(self, generator: torch.Generator) -> FactBatch:
        """One sequence per fact (S R of them, subject-major), noise and positions from `generator`."""
        s, r = self.config.n_subjects, self.config.n_relations
        subjects = torch.arange(s, device=self.device).repeat_interleave(r)
        relations = torch.arange(r, device=self.device).repeat(s)
        return self._sequences(subjects, relations, generator)

    def _sequences(self, subjects: torch.Tensor, relations: torch.Tensor, gen: torch.Generator) -> FactBatch:
        b, t = subjects.shape[0], self.config.seq_len
        tokens = torch.empty(b, t + 1, dtype=torch.long, device=self.device)
        n_noise = max(self.config.n_noise, 1)
        tokens[:, :t] = self.noise_offset + torch.randint(
            0, n_noise, (b, t), generator=gen, device=self.device
        )
        rows = torch.arange(b, device=self.device)
        if self.config.layout == "random":
            # two distinct positions: the subject's uniform, the relation's uniform among the others
            subject_at = torch.randint(0, t, (b,), generator=gen, device=self.device)
            shift = torch.randint(1, t, (b,), generator=gen, device=self.device)
            relation_at = (subject_at + shift) % t
        else:
            subject_at = torch.randint(0, t - 1, (b,), generator=gen, device=self.device)
            relation_at = torch.full((b,), t - 1, device=self.device)
        tokens[rows, subject_at] = subjects
        tokens[rows, relation_at] = self.relation_offset + relations
        answers = self.facts[subjects, relations]
        tokens[:, t] = answers
        return FactBatch(tokens, subjects, relations, answers)

    def loss_mask(self, batch: TokenBatch, loss_on: LossOn) -> torch.Tensor:
        """outputs: the answer (the last target) only; all: every target."""
        mask = torch.zeros(batch.targets.shape, dtype=torch.bool, device=batch.tokens.device)
        if loss_on == "all":
            return ~mask
        mask[:, -1] = True
        return mask

    def answer_sets(self, relations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[lo, hi) token ids of the answer sets A_r of `relations`."""
        lo = self.answer_offset + relations * self.config.answers_per_relation
        return lo, lo + self.config.answers_per_relation

    def metrics(self, logits: torch.Tensor, batch: FactBatch) -> dict[str, float]:
        last = logits[:, -1].float()
        pred = last.argmax(-1)
        lo, hi = self.answer_sets(batch.relations)
        return {
            FACT_ACC: float((pred == batch.answers).float().mean()),
            RELATION_ACC: float(((pred >= lo) & (pred < hi)).float().mean()),
            ANSWER_LOSS: float(F.cross_entropy(last, batch.answers)),
        }

    def relation_only_loss(self) -> float:
        """min over q(· | r) of E_{s, r} [−log q(a*(s, r) | r)] = the mean over relations of the
        entropy of the answers of r across subjects (q = their empirical law)."""
        total = 0.0
        for r in range(self.config.n_relations):
            counts = torch.bincount(self.facts[:, r].cpu()).double()
            probs = counts[counts > 0] / self.config.n_subjects
            total += float(-(probs * probs.log()).sum())
        return total / self.config.n_relations

    def uniform_loss(self) -> float:
        """The loss of the uniform law over the D answers of the right relation (log D)."""
        return math.log(self.config.answers_per_relation)
