"""Curve metrics shared by training, plots and experiments."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tasks.triggered_bigram import Batch


def first_crossing(
    steps: Sequence[int], values: Iterable[float | None], threshold: float
) -> int | None:
    """First step whose value is >= `threshold` (None if never; missing or NaN values never count)."""
    for step, value in zip(steps, values):
        if value is not None and not math.isnan(value) and value >= threshold:
            return int(step)
    return None


def first_crossing_below(
    steps: Sequence[int], values: Iterable[float | None], threshold: float
) -> int | None:
    """First step whose value is <= `threshold` (a loss reaching its floor); None if never."""
    return first_crossing(steps, (None if v is None else -v for v in values), -threshold)


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and population standard deviation of the values that exist (None and NaN skipped)."""
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return float("nan"), float("nan")
    return statistics.fmean(clean), statistics.pstdev(clean) if len(clean) > 1 else 0.0


# --- held-out metrics of the triggered-bigram task (paper Fig. 3) -------------------------------

LossOn = Literal["outputs", "all"]


def loss_mask(batch: Batch, loss_on: LossOn) -> torch.Tensor:
    """Targets the loss is taken on: counter >= 2 (outputs after a repeated trigger) or all."""
    if loss_on == "outputs":
        return batch.counter >= 2
    return torch.ones_like(batch.counter, dtype=torch.bool)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batch: Batch,
    *,
    loss_on: LossOn = "outputs",
    fast_path: bool = True,
    probe_triggers: torch.Tensor | None = None,
) -> dict[str, float]:
    """Held-out metrics: loss on the trained targets, in-context accuracy (counter >= 2),
    first-occurrence accuracy (counter == 1), accuracy after any trigger (counter >= 1), bigram
    loss and accuracy (counter == 0), and the memory-recall probes."""
    from birth.model import fast_logits
    from probes.recall import all_probes

    logits = fast_logits(model, batch.inputs) if fast_path else model(batch.inputs)
    targets, counter = batch.targets, batch.counter
    correct = logits.argmax(dim=-1) == targets

    def acc(mask: torch.Tensor) -> float:
        return correct[mask].float().mean().item() if mask.any() else float("nan")

    def ce(mask: torch.Tensor) -> float:
        return F.cross_entropy(logits[mask], targets[mask]).item() if mask.any() else float("nan")

    row = {
        "eval/loss": ce(loss_mask(batch, loss_on)),
        "eval/icl_acc": acc(counter >= 2),
        "eval/first_acc": acc(counter == 1),
        "eval/trigger_acc": acc(counter >= 1),
        "eval/bigram_loss": ce(counter == 0),
        "eval/bigram_acc": acc(counter == 0),
    }
    for name, value in all_probes(model, probe_triggers).items():
        row[f"probes/{name}"] = value
    return row
