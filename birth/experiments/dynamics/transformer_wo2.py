"""transformer-wo2: the birth transformer with only W_O² trained at η in [20, 200] (per-token margins of
the W_OV² memory), and every trained matrix at the same steps (loss spikes).

Every run is a run of the one transformer trainer (`training.trainer.train`): plain SGD (torch's SGD
with momentum 0 and weight decay 0), the loss on the counter >= 2 targets, an evaluation on a fixed
held-out batch before every step. The experiment adds two callbacks: `TrainOnly` picks the arm's
matrices before the optimizer is built, `ArmRecorder` reads the W_OV² margins and keeps the
held-out curve. Each run's directory is `out_dir/runs/ARM_lrETA`.
"""

from __future__ import annotations

import math
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.seeds import step_seed
from birth.base.validate import Float, Floats, Int, Validated
from birth.experiments.common import RUNS, Seed
from birth.experiments.dynamics.common import (
    colormap,
    rounded,
)
from birth.experiments.registry import ExperimentResult, register
from birth.memories import dynamics as dyn
from birth.memories.problem import score_margins
from birth.models.transformer import ModelConfig, attn_linear, native
from tasks.triggered_bigram import ICL_ACC, TaskConfig
from training.callbacks import Callback, TrainingRun
from training.config import OptimConfig, RunConfig, TrainConfig
from training.evaluation import EVAL_LOSS, STEP, TaskMetrics
from training.matrices import named_matrices
from training.trainer import train

Arm = Literal["wo2", "all"]
AllMatrices = Literal["simplified", "attention"]

EVAL_STREAM = 0x5EED_E0A1  # seed stream (seed, EVAL_STREAM) of the held-out batch
LOSS_ON = "outputs"  # the paper's loss: targets after a repeated trigger (counter >= 2)


@dataclass(frozen=True)
class TransformerWo2Config(Validated):
    d_model: Annotated[int, Int(1)] = (
        64  # d of the simplified 2-layer birth model (frozen N(0, I/d) embeddings)
    )
    seq_len: Annotated[int, Int(8)] = (
        64  # T of the triggered-bigram task (K = 5 fixed triggers, uniform outputs)
    )
    batch_size: Annotated[int, Int(1)] = 32  # sequences per SGD step (fresh, seeded batches)
    # fixed held-out sequences on which the loss curve is measured every step
    eval_batch_size: Annotated[int, Int(1)] = 64
    lrs: Annotated[tuple[float, ...], Floats(0.0, open_low=True)] = (
        20.0,
        60.0,
        200.0,
    )  # step sizes η (plain SGD)
    steps: Annotated[int, Int(4)] = 300  # SGD steps per run
    # the every-matrix arm: W_K¹, W_K², W_O² (the paper's) or all W_Q, W_K, W_V, W_O
    all_matrices: AllMatrices = "simplified"
    margin_every: Annotated[int, Int(1)] = 5  # W_OV² margins measured every this many steps
    # fit margin vs log t over t >= fit_from * steps (two halves of that log window)
    fit_from: Annotated[float, Float(0.0, 1.0, open_low=True, open_high=True)] = 0.1
    # a spike: the held-out loss above spike_factor × its running minimum
    spike_factor: Annotated[float, Float(1.0, open_low=True)] = 1.5
    device: Device = "cpu"  # auto: cuda when available
    seed: Seed = 0  # seeds the model, the training batches and the held-out batch


@dataclass(frozen=True)
class TransformerRun:
    arm: Arm  # wo2: only W_O² trains; all: every matrix of the arm (see all_matrices)
    lr: float
    loss: list[float]  # held-out loss (counter >= 2 targets) before each step
    accuracy: list[float]  # held-out in-context accuracy
    margin_steps: list[int]
    margins: list  # [k][token]: W_OV² margins
    slope_early: float  # median over tokens of d margin / d log t, first half of the log window
    slope_late: float  # the same, second half: equal slopes = logarithmic growth
    stored: float  # fraction of tokens with a positive W_OV² margin at the end
    spikes: int
    max_jump: float  # largest loss / running minimum of the loss
    final_accuracy: float  # mean held-out accuracy over the last tenth of the run
    diverged: int | None


@dataclass(frozen=True)
class TransformerWo2Result(ExperimentResult):
    lrs: list[float]
    all_matrices: str
    runs: list[TransformerRun]
    fit_window: list[int]  # [t1, t2, t3]: early half [t1, t2], late half [t2, t3]
    seconds_per_step: float

    def headline(self) -> str:
        wo2 = [r for r in self.runs if r.arm == "wo2"]
        every = [r for r in self.runs if r.arm == "all"]
        slopes = ", ".join(f"η={r.lr:g} {r.slope_early:.2f}/{r.slope_late:.2f}" for r in wo2)
        spikes = ", ".join(f"η={r.lr:g} {r.spikes}" for r in wo2)
        spikes_all = ", ".join(f"η={r.lr:g} {r.spikes}" for r in every)
        return (
            f"W_O² only: median W_OV² margin slope vs log t (early/late half) {slopes}; loss spikes W_O² only: "
            f"{spikes}; every matrix: {spikes_all}"
        )


def plot_transformer_wo2(result: TransformerWo2Result, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 4, (4.2, 3.4))
    cmap = colormap("plasma")
    for k, lr in enumerate(result.lrs):
        color = cmap(0.85 * k / max(len(result.lrs) - 1, 1))
        for r in result.runs:
            if r.lr != lr:
                continue
            if r.arm == "wo2":
                axes[0][0].plot(range(len(r.loss)), r.loss, color=color, lw=0.9, label=f"η = {lr:g}")
                med = np.median(np.asarray(r.margins, dtype=float), -1)
                axes[0][2].plot(r.margin_steps[1:], med[1:], color=color, lw=1.2, label=f"η = {lr:g}")
            else:
                axes[0][1].plot(range(len(r.loss)), r.loss, color=color, lw=0.9, label=f"η = {lr:g}")
    axes[0][0].set_title("only W_O² trains: held-out loss", fontsize=9)
    axes[0][1].set_title(f"every matrix ({result.all_matrices}) trains: held-out loss", fontsize=9)
    for ax in axes[0][:2]:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax = axes[0][2]
    ax.set_xscale("log")
    for t in result.fit_window:
        ax.axvline(t, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("step t")
    ax.set_title("only W_O²: median W_OV² margin over tokens", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0][3]
    wo2 = [r for r in result.runs if r.arm == "wo2"]
    last = max(wo2, key=lambda r: r.lr)
    margins = np.asarray(last.margins, dtype=float)
    order = np.argsort(margins[-1])
    for j, token in enumerate(order.tolist()):
        ax.plot(
            last.margin_steps[1:],
            margins[1:, token],
            color=colormap("viridis")(j / max(len(order) - 1, 1)),
            lw=0.6,
        )
    ax.set_xscale("log")
    ax.set_xlabel("step t")
    ax.set_title(f"only W_O², η = {last.lr:g}: every token's margin", fontsize=9)
    return save_figure(fig, out_dir, "transformer_wo2")


def ov_margins(model: torch.nn.Module, layer: int = -1) -> torch.Tensor:
    """Per-token margins of the W_OV memory of `layer` (default: the last) of a birth model: (N,).

    Token k is stored when the unembedding ranks k first for the value-output image of its
    embedding, w_U(j)ᵀ W_O W_V w_E(k) (the paper's W_OV² probe): margin_k = score_k - max_{j≠k}
    score_j. Biases are left out, as in the probe (they are zero in the birth model)."""
    nm = native(model)
    index = layer % len(nm.layers)
    E, U = nm.tok_embed.weight, nm.head.weight  # [N, d] rows
    with torch.no_grad():
        values = F.linear(
            F.linear(E, attn_linear(model, index, "v").weight), attn_linear(model, index, "o").weight
        )
        s = values @ U.t()  # [N (token k), N (output j)]
        margins = score_margins(s.double(), torch.arange(s.shape[0], device=s.device))
    return margins.cpu()


def arm_matrices(arm: Arm, all_matrices: AllMatrices) -> tuple[str, ...]:
    """The matrices an arm trains (`training.matrices.named_matrices` names)."""
    if arm == "wo2":
        return ("W_O2",)
    if all_matrices == "simplified":
        return ("W_K1", "W_K2", "W_O2")  # what the simplified model trains (paper, section 4.2)
    return tuple(f"W_{kind}{layer}" for layer in (1, 2) for kind in "QKVO")


class TrainOnly(Callback):
    """Trains exactly the named matrices: set when the model is built, before the trainer binds its
    schedule and builds its optimizer over the parameters that require a gradient."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def on_model(self, model: nn.Module) -> None:
        matrices = named_matrices(model)
        missing = self.names - set(matrices)
        if missing:
            raise ValueError(f"the model has no matrix {', '.join(sorted(missing))}")
        for p in model.parameters():
            p.requires_grad_(False)
        for name in self.names:
            matrices[name].requires_grad_(True)


class ArmRecorder(Callback):
    """The held-out loss and in-context accuracy of every evaluation row, and the W_OV² margins
    (`ov_margins`) at step 0, every `every` steps and at the end."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.rows: dict[int, tuple[float, float]] = {}  # step -> (loss, accuracy)
        self.margin_steps: list[int] = []
        self.margins: list[torch.Tensor] = []

    def _read_margins(self, run: TrainingRun) -> None:
        self.margin_steps.append(run.step)
        self.margins.append(ov_margins(run.model))

    def on_start(self, run: TrainingRun) -> None:
        self._read_margins(run)

    def on_row(self, run: TrainingRun, row: dict[str, float]) -> None:
        self.rows[int(row[STEP])] = (row[EVAL_LOSS], row[ICL_ACC])

    def on_step(self, run: TrainingRun, updated: bool) -> None:
        if run.step % self.every == 0 or run.step == run.config.optim.steps:
            self._read_margins(run)


@dataclass(frozen=True)
class ArmTrajectory:
    """One arm's run: the held-out loss and in-context accuracy before each step; the W_OV² margins
    at `margin_steps`; `diverged`: the first step whose loss (training, or held-out after a finite
    start) is not finite (None), after which nothing is recorded."""

    loss: torch.Tensor  # (steps,), NaN after a divergence
    accuracy: torch.Tensor  # (steps,)
    margin_steps: torch.Tensor  # (K,)
    margins: torch.Tensor  # (K, N)
    diverged: int | None


def arm_config(config: TransformerWo2Config, lr: float) -> TrainConfig:
    """The trainer's config of one run: plain SGD at step size `lr` (no momentum, no weight decay:
    the dynamics the memory theory describes), evaluated before every step on a held-out batch
    drawn from the stream (seed, EVAL_STREAM); only the final checkpoint is written."""
    c = config
    return TrainConfig(
        task=TaskConfig(seq_len=c.seq_len),
        model=ModelConfig(d_model=c.d_model),
        optim=OptimConfig(
            optimizer="sgd",
            lr=lr,
            momentum=0.0,
            weight_decay=0.0,
            batch_size=c.batch_size,
            steps=c.steps,
            loss_on=LOSS_ON,
        ),
        run=RunConfig(
            seed=c.seed,
            eval_seed=step_seed(c.seed, EVAL_STREAM),
            eval_every=1,
            eval_batch_size=c.eval_batch_size,
            checkpoint_every=10**9,
            attention_probes=False,
        ),
    )


def train_arm(
    config: TransformerWo2Config,
    arm: Arm,
    lr: float,
    run_dir: Path,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> ArmTrajectory:
    """Train one arm at step size `lr` into `run_dir` with the trainer. Every run of the experiment
    sees the same batches (the batch of step t is seeded by (seed, t)): the arms and step sizes
    differ only in what they train and how far they step."""
    recorder = ArmRecorder(config.margin_every)
    result = train(
        arm_config(config, lr),
        run_dir,
        device=config.device,
        progress=progress,
        log=log,
        callbacks=[TrainOnly(arm_matrices(arm, config.all_matrices)), recorder],
        groups=lambda task, model: [TaskMetrics(task, LOSS_ON)],
    )
    if result.status == "interrupted":
        raise KeyboardInterrupt  # Ctrl-C in one run stops the experiment: one line, exit 130
    steps = config.steps
    loss = torch.full((steps,), math.nan, dtype=torch.float64)
    accuracy = loss.clone()
    for step, (step_loss, step_accuracy) in recorder.rows.items():
        if step < steps:
            loss[step], accuracy[step] = step_loss, step_accuracy
    diverged = result.step if result.status == "diverged" else None
    if math.isfinite(loss[0]):  # a held-out batch with targets: its loss is finite until a divergence
        bad = (~torch.isfinite(loss)).nonzero()
        if len(bad) and (diverged is None or int(bad[0]) < diverged):
            diverged = int(bad[0])
    margin_steps = torch.tensor(recorder.margin_steps)
    margins = torch.stack(recorder.margins)
    if diverged is not None:
        loss[diverged + 1 :] = math.nan
        accuracy[diverged + 1 :] = math.nan
        kept = margin_steps <= diverged
        margin_steps, margins = margin_steps[kept], margins[kept]
    return ArmTrajectory(loss, accuracy, margin_steps, margins, diverged)


def _median_log_slope(steps: torch.Tensor, margins: torch.Tensor, lo: int, hi: int) -> float:
    """Median over tokens of the slope of margin vs log t over the recorded steps in [lo, hi]."""
    keep = (steps >= lo) & (steps <= hi)
    if int(keep.sum()) < 2 or not bool(torch.isfinite(margins[keep]).all()):
        return math.nan
    slopes = [dyn.fit_log_growth(steps[keep], margins[keep, k], lo).slope for k in range(margins.shape[1])]
    return float(torch.tensor(slopes).median())


def fit_window(config: TransformerWo2Config) -> list[int]:
    """[t1, t2, t3]: the log window [fit_from × steps, steps] cut at its geometric middle t2."""
    t1 = max(1, int(round(config.fit_from * config.steps)))
    return [t1, int(round(math.sqrt(t1 * config.steps))), config.steps]


def summarize(config: TransformerWo2Config, arm: Arm, lr: float, trajectory: ArmTrajectory) -> TransformerRun:
    """What the result keeps of one run: its curves and the numbers the claim rests on."""
    steps, margins, loss, diverged = (
        trajectory.margin_steps,
        trajectory.margins,
        trajectory.loss,
        trajectory.diverged,
    )
    t1, t2, t3 = fit_window(config)
    finite = loss[torch.isfinite(loss)]
    running = torch.cummin(finite, 0).values
    tail = trajectory.accuracy[-max(1, config.steps // 10) :]
    return TransformerRun(
        arm=arm,
        lr=lr,
        loss=rounded(loss),
        accuracy=rounded(trajectory.accuracy, 4),
        margin_steps=steps.tolist(),
        margins=rounded(margins, 4),
        slope_early=_median_log_slope(steps, margins, t1, t2),
        slope_late=_median_log_slope(steps, margins, t2, t3),
        stored=float((margins[-1] > 0).double().mean()),
        spikes=dyn.count_spikes(loss[:diverged], config.spike_factor) + (diverged is not None),
        max_jump=float((finite[1:] / running[:-1]).max()) if len(finite) > 1 else math.nan,
        final_accuracy=float(tail[torch.isfinite(tail)].mean())
        if bool(torch.isfinite(tail).any())
        else math.nan,
        diverged=diverged,
    )


@register(
    "transformer-wo2",
    family="dynamics",
    summary="birth transformer: only W_O² trained at η in [20, 200] (per-token W_OV² margins); spikes when every matrix trains",
    config=TransformerWo2Config,
    plot=plot_transformer_wo2,
    full=lambda: TransformerWo2Config(
        d_model=256,
        seq_len=256,
        batch_size=512,
        eval_batch_size=512,
        steps=2000,
        lrs=(20.0, 50.0, 100.0, 150.0, 200.0),
        margin_every=10,
        device="auto",
    ),
    small=lambda: TransformerWo2Config(
        d_model=16, seq_len=16, batch_size=8, eval_batch_size=8, steps=8, lrs=(20.0, 200.0), margin_every=2
    ),
)
def run_transformer_wo2(
    config: TransformerWo2Config, out_dir: Path, *, log=print, progress: bool = True
) -> TransformerWo2Result:
    c = config
    runs, started = [], time.perf_counter()
    for arm in typing.get_args(Arm):
        for lr in c.lrs:
            trajectory = train_arm(
                c, arm, lr, Path(out_dir) / RUNS / f"{arm}_lr{lr:g}", progress=progress, log=log
            )
            run = summarize(c, arm, lr, trajectory)
            runs.append(run)
            log(
                f"  {arm:<3} η={lr:<6g} margin slope vs log t {run.slope_early:.3f} / {run.slope_late:.3f}, "
                f"stored {run.stored:.0%}; {run.spikes} spikes (max loss / running min {run.max_jump:.2f}); "
                f"accuracy {run.final_accuracy:.3f}"
                + ("" if run.diverged is None else f"; diverged at {run.diverged}")
            )
    seconds = (time.perf_counter() - started) / (2 * len(c.lrs) * c.steps)
    return TransformerWo2Result(list(c.lrs), c.all_matrices, runs, fit_window(c), seconds)
