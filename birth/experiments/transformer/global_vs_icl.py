"""`global-vs-icl`: the paper's first headline on the full transformer (Bietti et al., 2023, section 5
and Fig. 2): *global bigrams are learned fast, the induction head develops slowly*.

The full model (the `full` preset: 2 layers, 4 heads, pre-LayerNorm, ReLU MLPs, trained embeddings,
AdamW, loss on all tokens). Curves of the bigram loss (counter == 0 targets) against its floor, the
Bayes loss of those targets (`tasks.triggered_bigram.bigram_floor`: the mean entropy H(π_b(·|z_t)) over the
evaluation batch's counter-0 positions), and of the in-context accuracy; the step at which the
bigram loss comes within `--tolerance` of the floor and the steps at which the in-context accuracy
passes 0.9 and 0.99 ("step of X": the first evaluation step at which X holds, None: never).

The memories under the full model's layer readings (`probes.recall.layer_probes`, logged as
probes/NAME): the step at which each reaches 0.9 and the Pearson correlation of its curve with the
in-context accuracy's. Where the previous-token memory W_KQ¹ is stored, by position, on the final
model: the weight reading (`probes.recall.kq1_by_position`), the held-out attention of query t+1 on
t (best layer-1 head) and where the triggers first occur (the keys the induction head needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Validated
from birth.experiments.common import Positive, Train, TrainedRun, eval_batch, trained_model
from birth.experiments.registry import register
from birth.experiments.transformer.common import (
    TOLERANCE,
    GlobalVsIclResult,
    check_global_vs_icl,
    full_reference,
    full_train,
    global_vs_icl_run,
    plot_curves,
    tiny,
)
from probes.attention import head_patterns
from probes.recall import PROBES, kq1_by_position
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import ICL_ACC, Batch
from training.evaluation import THRESHOLD

POSITION_BINS = 8  # the by-position reading of W_KQ¹ is reported in this many bins of positions


@dataclass(frozen=True)
class GlobalVsIclConfig(Validated):
    train: Train = field(default_factory=full_train)  # the training run (loss on all tokens)
    tolerance: Positive = TOLERANCE  # the bigram loss is at its floor within this fraction of it
    device: Device = "auto"  # where the run trains (auto: CUDA when present)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_global_vs_icl(self)


def probe_tracking(run: TrainedRun) -> tuple[dict[str, int | None], dict[str, float]]:
    """Of each memory probe of `run` (probes/NAME): the first step at which it reaches 0.9 (None:
    never), and the Pearson correlation of its curve with the in-context accuracy's over the
    evaluations (NaN if either is constant)."""
    icl = np.array(run.curve(ICL_ACC))
    steps: dict[str, int | None] = {}
    correlation: dict[str, float] = {}
    for name in (*PROBES, "W_OV"):  # "W_OV": a 1-layer model's only memory
        key = f"probes/{name}"
        if key not in run.final:
            continue
        steps[name] = run.order.get(key.removeprefix("probes/"))
        curve = np.array(run.curve(key))
        keep = ~(np.isnan(curve) | np.isnan(icl))
        a, b = curve[keep], icl[keep]
        constant = len(a) < 2 or a.std() == 0 or b.std() == 0
        correlation[name] = math.nan if constant else float(np.corrcoef(a, b)[0, 1])
    return steps, correlation


@dataclass(frozen=True)
class PreviousTokenByPosition:
    """Where a model stores its previous-token memory, by position t (query t+1, key t), in bins of
    positions starting at `bin_starts`."""

    bin_starts: list[int]
    weight_reading: list[float]  # fraction of the bin's t at which the weights store t+1 -> t
    attention: list[float]  # held-out attention of query t+1 on key t, best layer-1 head, bin mean
    first_occurrences: list[float]  # share of the held-out triggers' first occurrences in the bin


@torch.no_grad()
def previous_token_by_position(
    model: nn.Module, batch: Batch, bins: int = POSITION_BINS
) -> PreviousTokenByPosition:
    """The final model's previous-token memory by position: the weight reading
    (`probes.recall.kq1_by_position`) against the attention the layer-1 heads pay on the held-out
    batch and the positions of the triggers' first occurrences (where the induction head's keys
    need the previous token)."""
    stored = kq1_by_position(model).float()  # [T-1]
    _, patterns = head_patterns(model, batch.inputs)
    on_previous = torch.diagonal(patterns[0], offset=-1, dim1=-2, dim2=-1).mean(dim=0)  # [H, T-1]
    attention = on_previous.max(dim=0).values
    first = (batch.counter == 1).float().sum(dim=0)[: len(stored)].cpu()
    first = first / first.sum().clamp(min=1.0)
    size = math.ceil(len(stored) / bins)
    starts = list(range(0, len(stored), size))
    return PreviousTokenByPosition(
        bin_starts=starts,
        weight_reading=[stored[s : s + size].mean().item() for s in starts],
        attention=[attention[s : s + size].mean().item() for s in starts],
        first_occurrences=[first[s : s + size].sum().item() for s in starts],
    )


@dataclass(frozen=True)
class GlobalVsIclProbeResult(GlobalVsIclResult):
    probe_steps: dict[str, int | None]  # first step with each memory probe (probes/NAME) >= 0.9
    probe_icl_correlation: dict[str, float]  # Pearson r of each probe's curve with the accuracy's
    previous_token: PreviousTokenByPosition  # the final model's previous-token memory by position

    def headline(self) -> str:
        reached = sorted((s, k) for k, s in self.probe_steps.items() if s is not None)
        order = " → ".join(f"{k} ({s})" for s, k in reached) or "none"
        missing = [
            f"{k} (final {self.run.final[f'probes/{k}']:.2f})"
            for k, s in self.probe_steps.items()
            if s is None
        ]
        correlation = ", ".join(f"{k} {r:.3f}" for k, r in self.probe_icl_correlation.items())
        return (
            super().headline() + f"; memories at {THRESHOLD}: {order}"
            + (f", not reached: {', '.join(missing)}" if missing else "")
            + f"; correlation with the in-context accuracy: {correlation}"
        )  # fmt: skip


def plot_global_vs_icl(result: GlobalVsIclProbeResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 3)
    plot_curves(axes[0][0], axes[0][1], result)
    axes[0][0].set_title("global bigrams: fast")
    run, ax = result.run, axes[0][1]
    for name, step in result.probe_steps.items():
        r = result.probe_icl_correlation[name]
        reached = "never" if step is None else f"step {step}"
        label = f"{name} probe ({THRESHOLD} at {reached}, r = {r:.2f})"
        ax.plot(run.steps(), run.curve(f"probes/{name}"), lw=1, alpha=0.8, label=label)
    ax.legend(fontsize=7)
    ax.set_title("induction head: slow; its memories")
    plot_previous_token_by_position(axes[0][2], result.previous_token)
    return save_figure(fig, out_dir, "global_vs_icl")


def plot_previous_token_by_position(ax, reading: PreviousTokenByPosition) -> None:
    x = np.array(reading.bin_starts)
    width = (x[1] - x[0]) if len(x) > 1 else 1
    ax.step(x, reading.weight_reading, where="post", color="tab:red", label="W_KQ1 weight reading")
    ax.step(x, reading.attention, where="post", color="tab:blue", label="attention on t (held out)")
    ax.bar(x, reading.first_occurrences, width=width, align="edge", color="gray", alpha=0.3,
           label="triggers' first occurrences")  # fmt: skip
    ax.set_xlabel("position t (query t+1, key t)")
    ax.set_ylim(0, 1.02)
    ax.set_title("previous-token memory by position")
    ax.legend(fontsize=7)


@register(
    "global-vs-icl",
    family="transformer",
    summary="full model, loss on all tokens: bigram loss reaches its floor before the induction head forms",
    config=GlobalVsIclConfig,
    plot=plot_global_vs_icl,
    full=lambda: GlobalVsIclConfig(train=full_reference()),
    small=lambda: GlobalVsIclConfig(train=tiny(full_train()), device="cpu"),
)
def run_global_vs_icl(
    config: GlobalVsIclConfig, out_dir: Path, *, log=print, progress: bool = True
) -> GlobalVsIclProbeResult:
    fields = global_vs_icl_run(config, out_dir, "full", log, progress)
    steps, correlation = probe_tracking(fields["run"])
    _, batch = eval_batch(config.train, load_stats())
    by_position = previous_token_by_position(trained_model(out_dir, "full"), batch)
    return GlobalVsIclProbeResult(
        **fields, probe_steps=steps, probe_icl_correlation=correlation, previous_token=by_position
    )
