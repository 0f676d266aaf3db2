"""Held-out evaluation as metric groups: one forward of the model, then each group's metrics.

    groups = standard_groups(task, loss_on="outputs", attention=True, matrices=trained_matrices(model))
    row = evaluate(model, batch, groups)       # {"eval/loss": ..., "eval/icl_acc": ..., "probes/W_OV2": ...}

A group is a callable of the `Heldout` forward returning named metrics; its keys are written
once, here or with the task (`tasks.triggered_bigram.ICL_ACC`). The forward is the fast path
where the architecture allows it (`birth.models.transformer.supports_fast_path`), else the
TransformerLens forward; a group that reads attention patterns (`CircuitProbes`) gets them from
the same fast forward (`fast_logits_and_patterns`), or for other architectures from one
TransformerLens forward with hooks, whose logits every group then reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from birth.base.curves import first_crossing
from birth.models.transformer import fast_logits, fast_logits_and_patterns, model_config, supports_fast_path
from probes.attention import circuit_probes, forward_with_patterns
from probes.margins import kq1_position_recall, margin_probes, recall_all_kq2
from probes.recall import FF_PROBE, all_probes, head_probes, in_context_trigger_shares, reads_per_head
from tasks.circuits import AttentionTask
from tasks.protocol import LossOn, MemoryTargets, MemoryTask, Task, TokenBatch, memory_targets

EVAL_LOSS = "eval/loss"  # cross-entropy on the targets the run trains on (`--loss-on`)
TRAIN_LOSS = "train/loss"  # the last training batch's loss
STEP = "step"
PROBES = "probes/"  # memory recall (`probes.recall`); W_F_kl is a divergence
HEAD_PROBES = "head_probes/"  # per-head readings of a multi-head or LayerNorm model (`head_probes`)
MARGIN = "margin/"  # normalized margins of the recall probes (`probes.margins`)
RECALL_ALL_KQ2 = "recall_all/W_KQ2"  # W_KQ² ranked against all N tokens
KQ1 = "kq1/"  # the W_KQ¹ probe by position
ATTENTION = "attn/"  # the attention probes of the induction circuit (`probes.attention.circuit_probes`)
NORM = "norm/"  # Frobenius norm of each trained matrix
GRAD_NORM = "grad_norm/"  # ... and of its gradient (`training.matrices.gradient_norms`)

THRESHOLD = 0.9  # a probe "has learned" its memory once it reaches this recall


@dataclass(frozen=True)
class Heldout:
    """One forward of `model` on the held-out `batch`: what every metric group reads."""

    model: nn.Module
    batch: TokenBatch
    logits: torch.Tensor  # [B, T, N]
    patterns: list[torch.Tensor] = field(default_factory=list)  # [B, T, T] per layer, when asked for

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(dim=-1)


class MetricGroup(Protocol):
    """Metrics of one kind. `patterns`: whether it reads the attention patterns."""

    patterns: ClassVar[bool]

    def applies(self, model: nn.Module) -> bool:
        """Whether the group has metrics for this architecture."""
        ...

    def __call__(self, heldout: Heldout) -> dict[str, float]: ...


def _one_head_per_layer(model: nn.Module, min_layers: int) -> bool:
    config = model_config(model)
    return config.n_layers >= min_layers and config.n_heads == 1


@dataclass(frozen=True)
class TaskMetrics:
    """`eval/loss` on the targets `loss_on` selects, then the task's own held-out metrics."""

    task: Task
    loss_on: LossOn = "outputs"
    patterns: ClassVar[bool] = False

    def applies(self, model: nn.Module) -> bool:
        return True

    def __call__(self, heldout: Heldout) -> dict[str, float]:
        logits, batch = heldout.logits, heldout.batch
        mask = self.task.loss_mask(batch, self.loss_on)
        loss = F.cross_entropy(logits[mask], batch.targets[mask]).item() if mask.any() else float("nan")
        return {EVAL_LOSS: loss, **self.task.metrics(logits, batch)}


@dataclass(frozen=True)
class RecallProbes:
    """`probes/NAME`: the memory-recall probes of the weights (`probes.recall.all_probes`: the
    paper's per-head reading for the simplified model, the layer readings for any other), ranking
    the trigger set of `targets`; `probes/W_F_kl` when it has a bigram table and the last layer a
    feed-forward layer; for a multi-head or LayerNorm model also the per-head readings as
    `head_probes/NAME` (best head) and `head_probes/NAME/l1h0` (`probes.recall.head_probes`).
    `in_context`: the held-out batch carries the occurrence counter (a `MemoryTask`'s); with random
    triggers the layer reading of W_KQ2 then weighs each token by its share of the batch's in-context
    targets (`probes.recall.in_context_trigger_shares`)."""

    targets: MemoryTargets = MemoryTargets()
    in_context: bool = False
    patterns: ClassVar[bool] = False

    def applies(self, model: nn.Module) -> bool:
        return True

    def __call__(self, heldout: Heldout) -> dict[str, float]:
        model, triggers, batch = heldout.model, self.targets.triggers, heldout.batch
        weights = None
        if self.in_context and triggers is None and not reads_per_head(model):
            weights = in_context_trigger_shares(batch.inputs, batch.counter, model.W_E.shape[0])
        probes = all_probes(model, triggers, self.targets.bigram, weights)
        row = {PROBES + name: value for name, value in probes.items()}
        if not reads_per_head(model):
            row.update({HEAD_PROBES + name: value for name, value in head_probes(model, triggers).items()})
        return row


@dataclass(frozen=True)
class MarginReadings:
    """The non-saturating readings of the probes (`probes.margins`): `margin/W_OV2`, `margin/W_KQ2`,
    `margin/W_KQ1`, and with 2 layers `recall_all/W_KQ2` and the W_KQ¹ probe by position `kq1/...`.
    Only for one head per layer, no LayerNorm and additive positions: they read the raw embeddings,
    as the simplified model's memories store them."""

    triggers: torch.Tensor | None = None
    patterns: ClassVar[bool] = False

    def applies(self, model: nn.Module) -> bool:
        config = model_config(model)
        return config.n_heads == 1 and config.normalization == "none" and config.positions != "rotary"

    def __call__(self, heldout: Heldout) -> dict[str, float]:
        model = heldout.model
        row = {MARGIN + name: value for name, value in margin_probes(model, self.triggers).items()}
        if model_config(model).n_layers >= 2:
            row[RECALL_ALL_KQ2] = recall_all_kq2(model, self.triggers)
            row.update({KQ1 + name: value for name, value in kq1_position_recall(model).items()})
        return row


@dataclass(frozen=True)
class CircuitProbes:
    """`attn/...`: the attention probes of the reference code (2+ layers, one head each) on a
    `tasks.protocol.MemoryTask` batch (they read its occurrence counter)."""

    patterns: ClassVar[bool] = True

    def applies(self, model: nn.Module) -> bool:
        return _one_head_per_layer(model, 2)

    def __call__(self, heldout: Heldout) -> dict[str, float]:
        first, second = heldout.patterns[0], heldout.patterns[1]
        batch = heldout.batch
        scores = circuit_probes(first, second, batch.inputs, batch.counter, heldout.predictions)
        return {ATTENTION + name: value for name, value in scores.items()}


@dataclass(frozen=True)
class TaskAttention:
    """The task's own readings of the attention patterns (`tasks.circuits.AttentionTask`, e.g. the
    statistical induction head of `markov-icl`), for one head per layer."""

    task: AttentionTask
    patterns: ClassVar[bool] = True

    def applies(self, model: nn.Module) -> bool:
        return _one_head_per_layer(model, 1)

    def __call__(self, heldout: Heldout) -> dict[str, float]:
        return self.task.attention_metrics(heldout.patterns, heldout.batch)


@dataclass(frozen=True)
class MatrixNorms:
    """`norm/NAME`: the Frobenius norm of each matrix (name -> parameter, e.g. the trained ones)."""

    matrices: Mapping[str, nn.Parameter]
    patterns: ClassVar[bool] = False

    def applies(self, model: nn.Module) -> bool:
        return True

    def __call__(self, heldout: Heldout) -> dict[str, float]:
        return {NORM + name: p.detach().norm().item() for name, p in self.matrices.items()}


def standard_groups(
    task: Task,
    *,
    loss_on: LossOn = "outputs",
    targets: MemoryTargets | None = None,
    attention: bool = False,
    matrices: Mapping[str, nn.Parameter] | None = None,
) -> list[MetricGroup]:
    """What a training run records: the task's metrics, the recall probes and their margins
    (reading `targets`, default the task's memories), the attention probes (`attention`, on a
    `MemoryTask`) and the norms of `matrices`."""
    targets = memory_targets(task) if targets is None else targets
    groups: list[MetricGroup] = [
        TaskMetrics(task, loss_on),
        RecallProbes(targets, in_context=isinstance(task, MemoryTask)),
        MarginReadings(targets.triggers),
    ]
    if attention and isinstance(task, MemoryTask):
        groups.append(CircuitProbes())
    if attention and isinstance(task, AttentionTask):
        groups.append(TaskAttention(task))
    if matrices:
        groups.append(MatrixNorms(matrices))
    return groups


@torch.no_grad()
def evaluate(
    model: nn.Module, batch: TokenBatch, groups: Sequence[MetricGroup], *, fast_path: bool = True
) -> dict[str, float]:
    """The metrics of every group that applies to `model`, from one forward on `batch`."""
    active = [group for group in groups if group.applies(model)]
    patterns: list[torch.Tensor] = []
    fast = fast_path and supports_fast_path(model_config(model))
    if any(group.patterns for group in active):
        # the fast path computes the patterns the probes read (one head per layer) without hooks
        logits, patterns = (fast_logits_and_patterns if fast else forward_with_patterns)(model, batch.inputs)
    elif fast:
        logits = fast_logits(model, batch.inputs)
    else:
        logits = model(batch.inputs)
    heldout = Heldout(model, batch, logits, patterns)
    row: dict[str, float] = {}
    for group in active:
        row.update(group(heldout))
    return row


def learning_order(rows: list[dict], threshold: float = THRESHOLD) -> dict[str, int | None]:
    """First step at which each recall probe reaches `threshold` (None if never); the W_F probe is
    a divergence (lower is better) and has no such step."""
    keys = [k for k in (rows[0] if rows else {}) if k.startswith(PROBES) and k != PROBES + FF_PROBE]
    steps = [r[STEP] for r in rows]
    return {k.removeprefix(PROBES): first_crossing(steps, [r.get(k) for r in rows], threshold) for k in keys}


def format_order(order: dict[str, int | None]) -> str:
    reached = sorted((s, k) for k, s in order.items() if s is not None)
    text = " → ".join(f"{k} ({s})" for s, k in reached)
    missing = [k for k, s in order.items() if s is None]
    if missing:
        text += ("; " if text else "") + "not reached: " + ", ".join(missing)
    return text or "no probes"
