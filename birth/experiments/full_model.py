"""The paper's first headline on the full transformer: *global bigrams are learned fast, the induction
head develops slowly* (Bietti et al., 2023, section 5 and Fig. 2), and the feed-forward memory W_F
that holds those bigrams in the simplified model.

- `global-vs-icl`: the full model (the `full` preset: 2 layers, 4 heads, pre-LayerNorm, ReLU MLPs,
  trained embeddings, AdamW, loss on all tokens). Curves of the bigram loss (counter == 0 targets)
  against its floor, the Bayes loss of those targets (`birth.metrics.bigram_floor`: the mean
  entropy H(π_b(·|z_t)) over the evaluation batch's counter-0 positions), and of the in-context
  accuracy; the step at which the bigram loss comes within `--tolerance` of the floor and the steps
  at which the in-context accuracy passes 0.9 and 0.99.
- `global-vs-icl-ffn`: the same with the `simplified-ffn` preset (the simplified model plus a
  trainable linear W_F after the second attention layer), with the W_F probe (KL between π_b and
  what W_F alone predicts, `probes.recall.ff_bigram_kl`) next to the three memory probes.
- `layers-full`: 1 vs 2 layers of the full model over seeds (mean ± std).

Every run lives under `out_dir/runs/` (`birth inspect` reads it). "Step of X" is the first
evaluation step at which X holds (None: never within the run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from birth.base.io import new_figure, save_figure
from birth.experiments.common import (
    Device,
    TrainedRun,
    check_device,
    check_positive,
    check_seeds,
    check_train,
    eval_batch,
    experiment_train,
    run_seeds,
    train_run,
)
from birth.experiments.registry import ExperimentResult, register
from birth.metrics import bigram_floor, first_crossing, first_crossing_below, mean_std
from probes.recall import FF_PROBE, PROBES
from tasks.shakespeare import load_stats
from training.config import FULL, SIMPLIFIED_FFN_PRESET, TrainConfig

ICL_LEVELS = (0.9, 0.99)  # in-context accuracy levels whose first step is reported
TOLERANCE = 0.05  # the bigram loss is "at its floor" within this fraction of it
REFERENCE_SIZES = dict(d_model=128, seq_len=256)  # the reference full model's d and T (the preset's: 64, 128)
DEPTHS = (2, 1)


def _full() -> TrainConfig:
    return experiment_train(FULL)


def _full_reference() -> TrainConfig:
    """The reference sizes, d = 128 and T = 256 (the preset's architecture and optimizer are the
    reference's), for twice the steps: at d = 128 the induction head forms later."""
    return _full().replace(**REFERENCE_SIZES, steps=2 * FULL.optim.steps, eval_batch_size=512)


def _ffn() -> TrainConfig:
    return experiment_train(SIMPLIFIED_FFN_PRESET)


def _ffn_reference() -> TrainConfig:
    """The paper's simplified-model sizes (d = 256, T = 256, batch 512) with W_F, on all tokens."""
    return _ffn().replace(d_model=256, seq_len=256, batch_size=512, eval_batch_size=512)


def _tiny(train: TrainConfig) -> TrainConfig:
    """A few steps of a tiny model: seconds, for the tests (the numbers mean nothing)."""
    return train.replace(d_model=16, seq_len=16, batch_size=8, steps=4, eval_every=2, eval_batch_size=8)


# ---------------------------------------------------------------------------------------------
# global-vs-icl: the bigram loss reaches its floor long before the induction head forms
# ---------------------------------------------------------------------------------------------


def _check_global_vs_icl(config) -> None:
    check_train(config.train)
    check_device(config.device)
    check_positive("tolerance", config.tolerance)
    if config.train.optim.loss_on != "all":
        raise ValueError(
            f"--loss-on must be all (the bigram loss is trained on the counter-0 targets), "
            f"got {config.train.optim.loss_on!r}"
        )


@dataclass(frozen=True)
class GlobalVsIclConfig:
    train: TrainConfig = field(default_factory=_full)  # the training run (loss on all tokens)
    tolerance: float = TOLERANCE  # the bigram loss is at its floor within this fraction of it
    device: Device = "auto"  # where the run trains (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check_global_vs_icl(self)


@dataclass(frozen=True)
class GlobalVsIclResult(ExperimentResult):
    run: TrainedRun
    bigram_floor: float  # Bayes loss of the counter-0 targets of the evaluation batch (nats)
    tolerance: float  # "at the floor": bigram loss <= (1 + tolerance) · floor
    bigram_step: int | None  # first evaluation step with the bigram loss at its floor
    icl_steps: dict[str, int | None]  # "0.9", "0.99": first step with in-context accuracy >= level
    final_icl_acc: float
    final_bigram_loss: float
    target_met: bool  # final in-context accuracy >= 0.99 and final bigram loss at its floor

    @property
    def bigram_gap(self) -> float:
        """The final bigram loss above its floor, as a fraction of the floor."""
        return self.final_bigram_loss / self.bigram_floor - 1.0

    def headline(self) -> str:
        percent = f"{100 * self.tolerance:g}%"
        return (
            f"bigram loss within {percent} of its floor {self.bigram_floor:.3f} at step "
            f"{self.bigram_step}; in-context accuracy 0.9 at step {self.icl_steps['0.9']}, 0.99 at step "
            f"{self.icl_steps['0.99']}; final in-context accuracy {self.final_icl_acc:.4f}, bigram loss "
            f"{self.final_bigram_loss:.3f} ({100 * self.bigram_gap:+.1f}% of the floor): target "
            f"{'met' if self.target_met else 'NOT met'}"
        )


def _global_vs_icl(config, out_dir: Path, name: str, log, progress: bool) -> dict:
    """Train the run, compute the floor on its evaluation batch and the crossing steps.

    The floor's batch is the evaluation batch drawn on the CPU (`eval_batch`): the loop's own when it
    trains on the CPU; on CUDA the loop draws a different batch of the same law (the floor moves by
    a few tenths of a percent between draws of 256 sequences)."""
    stats = load_stats()
    _, batch = eval_batch(config.train, stats)
    floor = bigram_floor(batch, stats.bigram_probs)
    log(f"[{name}] bigram floor (mean entropy H(π_b(·|z_t)) over the evaluation batch's counter-0 "
        f"targets): {floor:.4f} nats; at the floor within {100 * config.tolerance:g}%: <= "
        f"{floor * (1 + config.tolerance):.4f}")  # fmt: skip
    log(f"[{name}] {config.train.optim.steps} steps")
    run = train_run(config.train, out_dir, name, device=config.device, progress=progress, log=log)
    steps = run.steps()
    bigram = run.curve("eval/bigram_loss")
    icl = run.curve("eval/icl_acc")
    final_icl, final_bigram = icl[-1], bigram[-1]
    at_floor = final_bigram <= floor * (1 + config.tolerance)
    return dict(
        run=run,
        bigram_floor=floor,
        tolerance=config.tolerance,
        bigram_step=first_crossing_below(steps, bigram, floor * (1 + config.tolerance)),
        icl_steps={f"{level:g}": first_crossing(steps, icl, level) for level in ICL_LEVELS},
        final_icl_acc=final_icl,
        final_bigram_loss=final_bigram,
        target_met=bool(final_icl >= ICL_LEVELS[-1] and at_floor),
    )


def _plot_curves(ax_bigram, ax_icl, result: GlobalVsIclResult) -> None:
    run = result.run
    steps = run.steps()
    floor = result.bigram_floor
    ax_bigram.plot(steps, run.curve("eval/bigram_loss"), color="tab:green", label="bigram loss (counter 0)")
    ax_bigram.axhline(floor, color="k", lw=1, label=f"floor {floor:.3f} (Bayes loss)")
    ax_bigram.axhline(floor * (1 + result.tolerance), color="gray", ls="--", lw=0.8,
                      label=f"floor + {100 * result.tolerance:g}%")  # fmt: skip
    ax_bigram.set_ylim(
        floor * 0.95, max(floor * 1.6, min(run.curve("eval/bigram_loss")[1:] or [floor]) * 1.1)
    )
    ax_bigram.set_ylabel("held-out loss (nats)")
    ax_icl.plot(steps, run.curve("eval/icl_acc"), color="tab:blue", label="in-context accuracy")
    for level in ICL_LEVELS:
        ax_icl.axhline(level, color="gray", ls=":", lw=0.8)
    ax_icl.set_ylim(-0.02, 1.02)
    ax_icl.set_ylabel("in-context accuracy (counter >= 2)")
    marks = [(result.bigram_step, "tab:green", "--", "bigram at floor")]
    marks += [
        (s, "tab:blue", style, f"icl {level}")
        for (level, s), style in zip(result.icl_steps.items(), ("--", "-."))
    ]
    for ax in (ax_bigram, ax_icl):
        for step, color, style, label in marks:
            if step is not None:
                ax.axvline(step, color=color, ls=style, lw=0.8, alpha=0.8, label=f"{label} (step {step})")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)


def plot_global_vs_icl(result: GlobalVsIclResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2)
    _plot_curves(axes[0][0], axes[0][1], result)
    axes[0][0].set_title("global bigrams: fast")
    axes[0][1].set_title("induction head: slow")
    return save_figure(fig, out_dir, "global_vs_icl")


@register(
    "global-vs-icl",
    family="transformer",
    summary="full model, loss on all tokens: bigram loss reaches its floor before the induction head forms",
    config=GlobalVsIclConfig,
    plot=plot_global_vs_icl,
    full=lambda: GlobalVsIclConfig(train=_full_reference()),
    small=lambda: GlobalVsIclConfig(train=_tiny(_full()), device="cpu"),
)
def run_global_vs_icl(
    config: GlobalVsIclConfig, out_dir: Path, *, log=print, progress: bool = True
) -> GlobalVsIclResult:
    return GlobalVsIclResult(**_global_vs_icl(config, out_dir, "full", log, progress))


# ---------------------------------------------------------------------------------------------
# global-vs-icl-ffn: the simplified model's W_F stores the bigrams while the induction memories form
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlobalVsIclFfnConfig:
    train: TrainConfig = field(default_factory=_ffn)  # the training run (a final W_F, loss on all tokens)
    tolerance: float = TOLERANCE  # the bigram loss is at its floor within this fraction of it
    device: Device = "auto"  # where the run trains (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check_global_vs_icl(self)
        if not self.train.model.has_final_ffn:
            raise ValueError(
                "the W_F probe needs a feed-forward layer after the last attention layer: "
                "--mlp linear (or relu) with --mlp-layers final or all"
            )


@dataclass(frozen=True)
class GlobalVsIclFfnResult(GlobalVsIclResult):
    ff_kl_start: float  # the W_F probe at step 0 (KL, nats; lower: W_F holds more of π_b)
    ff_kl_final: float  # the W_F probe at the end
    ff_kl_at_icl: float | None  # the W_F probe when in-context accuracy first reaches 0.9
    ff_half_step: int | None  # first step with the W_F probe at half its start value or below
    probe_steps: dict[str, int | None]  # first step with each memory probe >= 0.9

    def headline(self) -> str:
        memories = ", ".join(f"{k} {v}" for k, v in self.probe_steps.items())
        return (
            super().headline() + f"; W_F probe {self.ff_kl_start:.3f} → {self.ff_kl_final:.3f} (half at step "
            f"{self.ff_half_step}); memory probes at 0.9: {memories}"
        )


def plot_global_vs_icl_ffn(result: GlobalVsIclFfnResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 3)
    _plot_curves(axes[0][0], axes[0][1], result)
    run = result.run
    ax = axes[0][1]
    for name in PROBES:
        ax.plot(run.steps(), run.curve(f"probes/{name}"), lw=1, alpha=0.8, label=f"{name} probe")
    ax.legend(fontsize=7)
    ax = axes[0][2]
    ax.plot(run.steps(), run.curve(f"probes/{FF_PROBE}"), color="tab:purple")
    ax.set_xlabel("step")
    ax.set_ylabel("KL(π_b(·|k) ‖ softmax(W_U W_F w_E(k))) (nats)")
    ax.set_title("W_F probe (non-trigger tokens k)")
    axes[0][0].set_title("bigram loss and its floor")
    axes[0][1].set_title("in-context accuracy and memories")
    return save_figure(fig, out_dir, "global_vs_icl_ffn")


@register(
    "global-vs-icl-ffn",
    family="transformer",
    summary="simplified model + W_F, loss on all tokens: W_F probe falls while the induction memories form",
    config=GlobalVsIclFfnConfig,
    plot=plot_global_vs_icl_ffn,
    full=lambda: GlobalVsIclFfnConfig(train=_ffn_reference()),
    small=lambda: GlobalVsIclFfnConfig(train=_tiny(_ffn()), device="cpu"),
)
def run_global_vs_icl_ffn(
    config: GlobalVsIclFfnConfig, out_dir: Path, *, log=print, progress: bool = True
) -> GlobalVsIclFfnResult:
    fields = _global_vs_icl(config, out_dir, "simplified-ffn", log, progress)
    run: TrainedRun = fields["run"]
    steps, kl = run.steps(), run.curve(f"probes/{FF_PROBE}")
    icl_step = fields["icl_steps"]["0.9"]
    return GlobalVsIclFfnResult(
        **fields,
        ff_kl_start=kl[0],
        ff_kl_final=kl[-1],
        ff_kl_at_icl=None if icl_step is None else kl[steps.index(icl_step)],
        ff_half_step=first_crossing_below(steps, kl, kl[0] / 2),
        probe_steps={name: run.order.get(name) for name in PROBES if name in run.order},
    )


# ---------------------------------------------------------------------------------------------
# layers-full: 2 vs 1 layer of the full model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayersFullConfig:
    train: TrainConfig = field(default_factory=_full)  # base training run; --n-layers is set per arm
    seeds: int = 2  # runs per depth, seeds --seed, --seed + 1, ...
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        check_train(self.train)
        check_device(self.device)
        check_seeds(self.seeds)


@dataclass(frozen=True)
class FullDepthSummary:
    icl_acc_mean: float  # mean over seeds of the final in-context accuracy
    icl_acc_std: float  # population standard deviation over seeds
    bigram_loss_mean: float  # mean over seeds of the final bigram loss
    bigram_loss_std: float
    icl_acc: list[float]  # per seed
    bigram_loss: list[float]  # per seed


@dataclass(frozen=True)
class LayersFullResult(ExperimentResult):
    table: dict[str, FullDepthSummary]  # "2L", "1L"
    bigram_floor: float  # Bayes loss of the bigram targets of the evaluation batch
    runs: dict[str, list[TrainedRun]]  # "2L", "1L": one run per seed

    def headline(self) -> str:
        two, one = self.table["2L"], self.table["1L"]
        return (
            f"full model over {len(two.icl_acc)} seed(s): in-context accuracy 2 layers "
            f"{two.icl_acc_mean:.3f} ± {two.icl_acc_std:.3f}, 1 layer {one.icl_acc_mean:.3f} ± "
            f"{one.icl_acc_std:.3f}; bigram loss {two.bigram_loss_mean:.3f} vs {one.bigram_loss_mean:.3f} "
            f"(floor {self.bigram_floor:.3f})"
        )


def plot_layers_full(result: LayersFullResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2)
    for key, color in (("2L", "tab:blue"), ("1L", "tab:orange")):
        for i, run in enumerate(result.runs[key]):
            label = f"{key[0]} layer{'s' if key == '2L' else ''}" if i == 0 else None
            axes[0][0].plot(run.steps(), run.curve("eval/icl_acc"), color=color, alpha=0.8, label=label)
            axes[0][1].plot(run.steps(), run.curve("eval/bigram_loss"), color=color, alpha=0.8, label=label)
    axes[0][1].axhline(result.bigram_floor, color="k", lw=1, label="floor")
    axes[0][0].set_ylabel("in-context accuracy (counter >= 2)")
    axes[0][1].set_ylabel("bigram loss (counter 0)")
    axes[0][1].set_ylim(result.bigram_floor * 0.95, result.bigram_floor * 1.6)
    axes[0][0].set_title("full model: 2 layers vs 1 layer")
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "layers_full")


@register(
    "layers-full",
    family="transformer",
    summary="full model, 2 vs 1 layer: in-context accuracy and bigram loss, mean ± std over seeds",
    config=LayersFullConfig,
    plot=plot_layers_full,
    full=lambda: LayersFullConfig(train=_full_reference(), seeds=5),
    small=lambda: LayersFullConfig(train=_tiny(_full()), seeds=2, device="cpu"),
)
def run_layers_full(
    config: LayersFullConfig, out_dir: Path, *, log=print, progress: bool = True
) -> LayersFullResult:
    stats = load_stats()
    _, batch = eval_batch(config.train, stats)
    table: dict[str, FullDepthSummary] = {}
    runs: dict[str, list[TrainedRun]] = {}
    for layers in DEPTHS:
        key = f"{layers}L"
        runs[key] = []
        for seed in run_seeds(config.train, config.seeds):
            train = config.train.replace(n_layers=layers, seed=seed)
            log(f"[layers-full] {layers} layer(s), seed {seed}: {train.optim.steps} steps")
            runs[key].append(
                train_run(
                    train, out_dir, f"{key}-seed{seed}", device=config.device, progress=progress, log=log
                )
            )
        icl = [_number(run.final.get("eval/icl_acc")) for run in runs[key]]
        bigram = [_number(run.final.get("eval/bigram_loss")) for run in runs[key]]
        table[key] = FullDepthSummary(*mean_std(icl), *mean_std(bigram), icl, bigram)
    return LayersFullResult(table=table, bigram_floor=bigram_floor(batch, stats.bigram_probs), runs=runs)


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)
