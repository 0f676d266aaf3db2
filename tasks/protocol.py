"""What a task gives the trainer, the evaluation, the probes, `birth inspect` and `birth plot`.

A task is a law over token sequences of a fixed length T on a vocabulary of N tokens. The trainer
draws a fresh batch every step from a generator seeded by (seed, step) and a fixed held-out batch
from `eval_seed`; it knows nothing else of the task. To add one:

    @dataclass(frozen=True)
    class CopyConfig(Validated):
        seq_len: Annotated[int, Int(2)] = 16
        vocab_size: Annotated[int, Int(2)] = 8

    class Copy:                                  # implements `Task`
        def __init__(self, config: CopyConfig, device): ...

    register_task("copy", CopyConfig, Copy)      # tasks.registry
    birth.train(TrainConfig(task=CopyConfig()), "runs/copy")

A task whose sequences hold the memories of *Birth of a Transformer* (triggers followed by their
outputs, bigram transitions) also implements `MemoryTask`: the recall probes then read its
trigger set and bigram table, `--init-at-target` writes its hand-built memories, and the
attention probes read its batches' occurrence counter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

LossOn = Literal["outputs", "all"]
"""Targets the loss is taken on: the task's outputs (`Task.loss_mask`) or every target."""


@dataclass
class TokenBatch:
    """A batch of sequences: `tokens` [B, T+1]; the model reads `inputs` = z_1..z_T and predicts
    `targets` = z_2..z_{T+1}. A task's batch type adds its own fields (e.g. an occurrence counter)."""

    tokens: torch.Tensor  # [B, T+1] long

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[:, 1:]


@runtime_checkable
class Task(Protocol):
    """A sequence task on one device. `config`: its frozen config dataclass (registered with it)."""

    vocab_size: int  # N: tokens are 0..N-1
    device: torch.device

    @property
    def seq_len(self) -> int:
        """T: the model reads T inputs and predicts T targets."""
        ...

    @property
    def headline(self) -> Mapping[str, str]:
        """The held-out metrics a run reports first (`birth train`'s summary, the progress bar),
        key -> what it measures; the first is the task's main metric."""
        ...

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the task's device seeded by `seed` (`sample` draws only from it)."""
        ...

    def sample(self, batch_size: int, generator: torch.Generator) -> TokenBatch:
        """`batch_size` sequences, every random draw from `generator`."""
        ...

    def loss_mask(self, batch: TokenBatch, loss_on: LossOn) -> torch.Tensor:
        """[B, T] bool: the targets the loss is taken on. `all`: every target; `outputs`: those the
        task is about (a task without such a distinction returns every target for both)."""
        ...

    def metrics(self, logits: torch.Tensor, batch: TokenBatch) -> dict[str, float]:
        """Held-out metrics of the model's logits [B, T, N] on `batch`, named `eval/...`
        (NaN for a metric whose targets the batch lacks)."""
        ...


@runtime_checkable
class ManySampler(Protocol):
    """A task that draws the batches of several generators together (`sample_many`)."""

    def sample_many(self, batch_size: int, generators: Sequence[torch.Generator]) -> list[TokenBatch]:
        """`[task.sample(batch_size, g) for g in generators]`, each batch exactly that one."""
        ...


def sample_many(task: Task, batch_size: int, generators: Sequence[torch.Generator]) -> list[TokenBatch]:
    """The batches `task.sample(batch_size, g)` of the generators, in order, each exactly what its
    own generator gives (stacked training draws the batches of its runs this way). A task that
    implements `ManySampler` draws them together; any other samples them one by one."""
    if isinstance(task, ManySampler):
        return task.sample_many(batch_size, generators)
    return [task.sample(batch_size, generator) for generator in generators]


@dataclass(frozen=True)
class MemoryTargets:
    """What the recall probes and `--init-at-target` read of a task (`probes.recall.all_probes`).

    `triggers`: the trigger set stored in W_KQ² (None: every token, as with random triggers);
    `bigram`: the [N, N] transition table π_b(·|k) the W_F probe compares with (None: no W_F probe).
    """

    triggers: torch.Tensor | None = None
    bigram: torch.Tensor | None = None


@runtime_checkable
class MemoryTask(Task, Protocol):
    """A task with the induction-head memories of *Birth of a Transformer*: its batches carry
    `counter` [B, T] (n where input t is the n-th occurrence of a trigger, 0 elsewhere), which the
    attention probes read, and it names the memories the recall probes rank."""

    def memory_targets(self) -> MemoryTargets:
        """The trigger set and bigram table of this task's memories."""
        ...


def memory_targets(task: Task) -> MemoryTargets:
    """The task's memories, or none (every token, no bigram table) for a task without them."""
    return task.memory_targets() if isinstance(task, MemoryTask) else MemoryTargets()
