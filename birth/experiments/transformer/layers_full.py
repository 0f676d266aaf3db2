"""`layers-full`: 1 vs 2 layers of the full model over seeds: in-context accuracy and bigram loss,
mean ± std; per run, the step at which each memory probe (the layer readings, probes/NAME) reaches
0.9 and the correlation of its curve with the in-context accuracy's (`global_vs_icl.probe_tracking`),
and, per 2-layer run, where its final model stores the previous-token memory by position, beside
the held-out attention on the previous token (`global_vs_icl.previous_token_by_position`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from birth.base.curves import mean_std
from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Validated
from birth.experiments.common import (
    Seeds,
    Train,
    TrainedRun,
    eval_batch,
    trained_model,
)
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import (
    PAPER_SEEDS,
    full_reference,
    full_train,
    tiny,
    train_depths,
)
from birth.experiments.transformer.global_vs_icl import (
    PreviousTokenByPosition,
    plot_previous_token_by_position,
    previous_token_by_position,
    probe_tracking,
)
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import BIGRAM_LOSS, ICL_ACC, bigram_floor
from training.evaluation import THRESHOLD


@dataclass(frozen=True)
class LayersFullConfig(Validated):
    train: Train = field(default_factory=full_train)  # base training run; --n-layers is set per arm
    seeds: Seeds = 2  # runs per depth, seeds --seed, --seed + 1, ...
    device: Device = "auto"  # where the runs train (auto: CUDA when present)


@dataclass(frozen=True)
class FullDepthSummary:
    icl_acc_mean: float  # mean over seeds of the final in-context accuracy
    icl_acc_std: float  # population standard deviation over seeds
    bigram_loss_mean: float  # mean over seeds of the final bigram loss
    bigram_loss_std: float
    icl_acc: list[float]  # per seed
    bigram_loss: list[float]  # per seed
    probe_steps: list[dict[str, int | None]]  # per seed: first step with each memory probe >= 0.9
    probe_icl_correlation: list[dict[str, float]]  # per seed: Pearson r with the in-context accuracy


@dataclass(frozen=True)
class LayersFullResult(ExperimentResult):
    table: dict[str, FullDepthSummary]  # "2L", "1L"
    bigram_floor: float  # Bayes loss of the bigram targets of the evaluation batch
    runs: dict[str, list[TrainedRun]]  # "2L", "1L": one run per seed
    # per 2-layer run, where its final model stores the previous-token memory, by position
    previous_token: list[PreviousTokenByPosition]

    def headline(self) -> str:
        two, one = self.table["2L"], self.table["1L"]
        return (
            f"full model over {len(two.icl_acc)} seed(s): in-context accuracy 2 layers "
            f"{two.icl_acc_mean:.3f} ± {two.icl_acc_std:.3f}, 1 layer {one.icl_acc_mean:.3f} ± "
            f"{one.icl_acc_std:.3f}; bigram loss {two.bigram_loss_mean:.3f} vs {one.bigram_loss_mean:.3f} "
            f"(floor {self.bigram_floor:.3f}); 2 layers, memory probes at 0.9 per seed: "
            + ", ".join(
                f"{k} " + "/".join("never" if s.get(k) is None else str(s[k]) for s in two.probe_steps)
                for k in (two.probe_steps[0] if two.probe_steps else {})
            )
            + "; correlation with the in-context accuracy: "
            + ", ".join(
                f"{k} " + "/".join(f"{r[k]:.3f}" for r in two.probe_icl_correlation)
                for k in (two.probe_icl_correlation[0] if two.probe_icl_correlation else {})
            )
        )


def plot_memory_probes(ax, result: LayersFullResult) -> None:
    """The 2-layer runs' memory probes (probes/NAME) against their in-context accuracy, each labelled
    with its 0.9 step and its correlation with the accuracy."""
    summary = result.table["2L"]
    for i, run in enumerate(result.runs["2L"]):
        style = ("-", "--", ":")[i % 3]
        label = f"in-context accuracy, seed {run.seed}"
        ax.plot(run.steps(), run.curve(ICL_ACC), color="k", lw=1.5, ls=style, label=label)
        for j, (name, step) in enumerate(summary.probe_steps[i].items()):
            r = summary.probe_icl_correlation[i][name]
            reached = "never" if step is None else str(step)
            label = f"{name}, seed {run.seed}: 0.9 at {reached}, r = {r:.2f}"
            ax.plot(
                run.steps(),
                run.curve(f"probes/{name}"),
                color=f"C{j}",
                lw=1,
                alpha=0.8,
                ls=style,
                label=label,
            )
    ax.axhline(THRESHOLD, color="gray", lw=0.8, ls=":")
    ax.set_ylabel("memory probe / in-context accuracy")
    ax.set_title("2 layers: the memories (layer readings)")
    ax.set_xlabel("step")
    ax.legend(fontsize=6)


def plot_layers_full(result: LayersFullResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 4)
    plot_memory_probes(axes[0][2], result)
    if result.previous_token:
        plot_previous_token_by_position(axes[0][3], result.previous_token[0])
        axes[0][3].set_title(f"previous-token memory by position, seed {result.runs['2L'][0].seed}")
    for key, color in (("2L", "tab:blue"), ("1L", "tab:orange")):
        for i, run in enumerate(result.runs[key]):
            label = f"{key[0]} layer{'s' if key == '2L' else ''}" if i == 0 else None
            axes[0][0].plot(run.steps(), run.curve(ICL_ACC), color=color, alpha=0.8, label=label)
            axes[0][1].plot(run.steps(), run.curve(BIGRAM_LOSS), color=color, alpha=0.8, label=label)
    axes[0][1].axhline(result.bigram_floor, color="k", lw=1, label="floor")
    axes[0][0].set_ylabel("in-context accuracy (counter >= 2)")
    axes[0][1].set_ylabel("bigram loss (counter 0)")
    axes[0][1].set_ylim(result.bigram_floor * 0.95, result.bigram_floor * 1.6)
    axes[0][0].set_title("full model: 2 layers vs 1 layer")
    for ax in axes[0][:2]:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "layers_full")


@register(
    "layers-full",
    family="transformer",
    summary="full model, 2 vs 1 layer: in-context accuracy and bigram loss, mean ± std over seeds",
    config=LayersFullConfig,
    plot=plot_layers_full,
    full=lambda: LayersFullConfig(train=full_reference(), seeds=PAPER_SEEDS),
    small=lambda: LayersFullConfig(train=tiny(full_train()), seeds=2, device="cpu"),
)
def run_layers_full(
    config: LayersFullConfig, out_dir: Path, *, log=print, progress: bool = True
) -> LayersFullResult:
    stats = load_stats()
    _, batch = eval_batch(config.train, stats)
    runs = train_depths(
        config.train, config.seeds, out_dir, "layers-full", device=config.device, progress=progress, log=log
    )
    table: dict[str, FullDepthSummary] = {}
    for key in runs:
        icl = [_number(run.final.get(ICL_ACC)) for run in runs[key]]
        bigram = [_number(run.final.get(BIGRAM_LOSS)) for run in runs[key]]
        tracking = [probe_tracking(run) for run in runs[key]]
        table[key] = FullDepthSummary(
            *mean_std(icl), *mean_std(bigram), icl, bigram, [t[0] for t in tracking], [t[1] for t in tracking]
        )
    previous_token = [
        previous_token_by_position(trained_model(out_dir, run.name), batch) for run in runs["2L"]
    ]
    return LayersFullResult(
        table=table,
        bigram_floor=bigram_floor(batch, stats.bigram_probs),
        runs=runs,
        previous_token=previous_token,
    )


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)
