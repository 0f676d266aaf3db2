"""transformer-wo2: the birth transformer with only W_O² trained at η in [20, 200] (per-token margins of
the W_OV² memory), and every trained matrix at the same steps (loss spikes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.seeds import check_seed, step_seed
from birth.base.validate import check_float, check_floats, check_int
from birth.experiments.dynamics.common import (
    colormap,
    rounded,
)
from birth.experiments.registry import ExperimentResult, register
from birth.memories import dynamics as dyn
from birth.memories.problem import score_margins
from birth.models.transformer import ModelConfig, attn_linear, build_model, fast_logits, native
from tasks.triggered_bigram import TaskConfig, TriggeredBigram

Arm = Literal["wo2", "all"]
AllMatrices = Literal["simplified", "attention"]


@dataclass(frozen=True)
class TransformerWo2Config:
    d_model: int = 64  # d of the simplified 2-layer birth model (frozen N(0, I/d) embeddings)
    seq_len: int = 64  # T of the triggered-bigram task (K = 5 fixed triggers, uniform outputs)
    batch_size: int = 32  # sequences per SGD step (fresh, seeded batches)
    eval_batch_size: int = 64  # fixed held-out sequences on which the loss curve is measured every step
    lrs: tuple[float, ...] = (20.0, 60.0, 200.0)  # step sizes η (plain SGD)
    steps: int = 300  # SGD steps per run
    all_matrices: AllMatrices = (
        "simplified"  # the every-matrix arm: W_K¹, W_K², W_O² (the paper's) or all W_Q, W_K, W_V, W_O
    )
    margin_every: int = 5  # W_OV² margins measured every this many steps
    fit_from: float = 0.1  # fit margin vs log t over t >= fit_from * steps (two halves of that log window)
    spike_factor: float = 1.5  # a spike: the held-out loss above spike_factor × its running minimum
    device: Device = "cpu"  # auto: cuda when available
    seed: int = 0  # seeds the model, the training batches and the held-out batch

    def __post_init__(self) -> None:
        check_int("d_model", self.d_model, 1)
        check_int("seq_len", self.seq_len, 8)
        check_int("batch_size", self.batch_size, 1)
        check_int("eval_batch_size", self.eval_batch_size, 1)
        check_floats("lrs", self.lrs, 0.0, open_low=True)
        check_int("steps", self.steps, 4)
        if self.all_matrices not in ("simplified", "attention"):
            raise ValueError(f"--all-matrices must be simplified or attention, got {self.all_matrices!r}")
        check_int("margin_every", self.margin_every, 1)
        check_float("fit_from", self.fit_from, 0.0, 1.0, open_low=True, open_high=True)
        check_float("spike_factor", self.spike_factor, 1.0, open_low=True)
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"--device must be cpu, cuda or auto, got {self.device!r}")
        check_seed(self.seed)


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


@dataclass(frozen=True)
class TransformerTrajectory:
    """A transformer SGD run: per step (before its update) the batch loss and in-context accuracy;
    the W_OV² margins at `margin_steps`; `diverged`: first step with a non-finite loss (None)."""

    loss: torch.Tensor  # (steps,), NaN after a divergence
    accuracy: torch.Tensor  # (steps,)
    margin_steps: torch.Tensor  # (K,)
    margins: torch.Tensor  # (K, N)
    diverged: int | None


def train_transformer_sgd(
    model: torch.nn.Module,
    trainable: Sequence[torch.nn.Parameter],
    batches: Sequence,
    lr: float,
    *,
    eval_batch=None,
    min_counter: int = 2,
    margin_every: int = 1,
) -> TransformerTrajectory:
    """Plain SGD (no momentum, no weight decay: the dynamics the memory theory describes) of the
    parameters `trainable` only, on the cross-entropy of the targets whose counter is >= min_counter
    (the paper's loss: second and later occurrences of a trigger), one batch per step.

    `batches`: the tasks.triggered_bigram.Batch of each step (drawn by the caller from seeded
    generators; every run of a comparison can share them). `eval_batch`: a fixed batch on which
    the recorded loss and accuracy are measured before every step (default: the step's own batch,
    whose batch-to-batch noise would hide the spikes of the dynamics). The model's other
    parameters are frozen for the run (requires_grad is set here). Logits: birth.models.transformer.fast_logits.
    """
    chosen = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    params = list(trainable)
    steps = len(batches)
    loss = torch.full((steps,), math.nan, dtype=torch.float64)
    acc = torch.full((steps,), math.nan, dtype=torch.float64)
    margin_steps, margins = [0], [ov_margins(model)]
    diverged = None

    def objective(batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        mask = batch.counter >= min_counter
        if not bool(mask.any()):
            return None
        logits = fast_logits(model, batch.inputs, positions=mask)
        targets = batch.targets[mask]
        return F.cross_entropy(logits, targets), (logits.argmax(-1) == targets).double().mean()

    for step, batch in enumerate(batches):
        if eval_batch is not None:
            with torch.no_grad():
                measured = objective(eval_batch)
        train_obj = objective(batch)
        if eval_batch is None:
            measured = train_obj
        if measured is not None:
            loss[step], acc[step] = float(measured[0].detach()), float(measured[1])
            if not math.isfinite(float(loss[step])):
                diverged = step
                break
        if train_obj is None:
            continue  # no in-context target in this batch: nothing to learn from
        if not torch.isfinite(train_obj[0]):
            diverged = step
            break
        grads = torch.autograd.grad(train_obj[0], params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
        if (step + 1) % margin_every == 0 or step + 1 == steps:
            margin_steps.append(step + 1)
            margins.append(ov_margins(model))
    return TransformerTrajectory(loss, acc, torch.tensor(margin_steps), torch.stack(margins), diverged)


def _median_log_slope(steps: torch.Tensor, margins: torch.Tensor, lo: int, hi: int) -> float:
    """Median over tokens of the slope of margin vs log t over the recorded steps in [lo, hi]."""
    keep = (steps >= lo) & (steps <= hi)
    if int(keep.sum()) < 2 or not bool(torch.isfinite(margins[keep]).all()):
        return math.nan
    slopes = [dyn.fit_log_growth(steps[keep], margins[keep, k], lo).slope for k in range(margins.shape[1])]
    return float(torch.tensor(slopes).median())


def _arm_parameters(model, arm: Arm, all_matrices: AllMatrices) -> list:
    if arm == "wo2":
        return [attn_linear(model, 1, "o").weight]
    if all_matrices == "simplified":
        return [attn_linear(model, layer, name).weight for layer, name in ((0, "k"), (1, "k"), (1, "o"))]
    return [attn_linear(model, layer, name).weight for layer in (0, 1) for name in ("q", "k", "v", "o")]


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
    device = ("cuda" if torch.cuda.is_available() else "cpu") if c.device == "auto" else c.device
    task = TriggeredBigram(TaskConfig(seq_len=c.seq_len), device=device)
    # every run sees the same batches: the arms and step sizes differ only in what they train
    batches = [task.sample(c.batch_size, task.generator(step_seed(c.seed, step))) for step in range(c.steps)]
    eval_batch = task.sample(c.eval_batch_size, task.generator(step_seed(c.seed, 0x5EED_E0A1)))
    t1 = max(1, int(round(c.fit_from * c.steps)))
    t2 = int(round(math.sqrt(t1 * c.steps)))
    window = [t1, t2, c.steps]
    runs, started = [], time.perf_counter()
    for arm in ("wo2", "all"):
        for lr in c.lrs:
            model = build_model(
                ModelConfig(d_model=c.d_model),
                n_ctx=c.seq_len,
                vocab_size=task.vocab_size,
                seed=c.seed,
                device=device,
            )
            traj = train_transformer_sgd(
                model,
                _arm_parameters(model, arm, c.all_matrices),
                batches,
                lr,
                eval_batch=eval_batch,
                margin_every=c.margin_every,
            )
            steps, margins = traj.margin_steps, traj.margins
            loss = traj.loss
            finite = loss[torch.isfinite(loss)]
            running = torch.cummin(finite, 0).values
            jump = float((finite[1:] / running[:-1]).max()) if len(finite) > 1 else math.nan
            tail = traj.accuracy[-max(1, c.steps // 10) :]
            run = TransformerRun(
                arm=arm,
                lr=lr,
                loss=rounded(loss),
                accuracy=rounded(traj.accuracy, 4),
                margin_steps=steps.tolist(),
                margins=rounded(margins, 4),
                slope_early=_median_log_slope(steps, margins, t1, t2),
                slope_late=_median_log_slope(steps, margins, t2, c.steps),
                stored=float((margins[-1] > 0).double().mean()),
                spikes=dyn.count_spikes(loss[: traj.diverged], c.spike_factor) + (traj.diverged is not None),
                max_jump=jump,
                final_accuracy=float(tail[torch.isfinite(tail)].mean())
                if bool(torch.isfinite(tail).any())
                else math.nan,
                diverged=traj.diverged,
            )
            runs.append(run)
            log(
                f"  {arm:<3} η={lr:<6g} margin slope vs log t {run.slope_early:.3f} / {run.slope_late:.3f}, "
                f"stored {run.stored:.0%}; {run.spikes} spikes (max loss / running min {run.max_jump:.2f}); "
                f"accuracy {run.final_accuracy:.3f}"
                + ("" if run.diverged is None else f"; diverged at {run.diverged}")
            )
    seconds = (time.perf_counter() - started) / (2 * len(c.lrs) * c.steps)
    return TransformerWo2Result(list(c.lrs), c.all_matrices, runs, window, seconds)
