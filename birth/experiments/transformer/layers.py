"""`layers`: 2 layers vs 1 layer, the final in-context accuracy mean ± std over seeds (paper: ≈99% vs
≈55%)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from birth.base.curves import mean_std
from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Validated
from birth.experiments.common import Seeds, Train, TrainedRun
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import PAPER_SEEDS, paper, quick, tiny, train_depths
from tasks.triggered_bigram import ICL_ACC


@dataclass(frozen=True)
class LayersConfig(Validated):
    train: Train = field(default_factory=quick)  # base training run; --n-layers is set per arm
    seeds: Seeds = 2  # runs per depth, seeds --seed, --seed + 1, ...
    device: Device = "auto"  # where the runs train (auto: CUDA when present)


@dataclass(frozen=True)
class DepthSummary:
    icl_acc_mean: float  # mean over seeds of the final in-context accuracy
    icl_acc_std: float  # population standard deviation over seeds
    icl_acc: list[float]  # per seed


@dataclass(frozen=True)
class LayersResult(ExperimentResult):
    table: dict[str, DepthSummary]  # "2L", "1L"
    runs: dict[str, list[TrainedRun]]  # "2L", "1L": one run per seed

    def headline(self) -> str:
        two, one = self.table["2L"], self.table["1L"]
        return (
            f"in-context accuracy over {len(two.icl_acc)} seed(s): 2 layers {two.icl_acc_mean:.3f} ± "
            f"{two.icl_acc_std:.3f}, 1 layer {one.icl_acc_mean:.3f} ± {one.icl_acc_std:.3f} "
            f"(paper ≈0.99 vs ≈0.55)"
        )


def plot_layers(result: LayersResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure()
    ax = axes[0][0]
    for key, color in (("2L", "tab:blue"), ("1L", "tab:orange")):
        for i, run in enumerate(result.runs[key]):
            label = f"{key[0]} layer{'s' if key == '2L' else ''}" if i == 0 else None
            ax.plot(run.steps(), run.curve(ICL_ACC), color=color, alpha=0.8, label=label)
    ax.axhline(0.99, color="gray", ls=":", lw=0.8)
    ax.axhline(0.55, color="gray", ls=":", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("in-context accuracy (counter >= 2)")
    ax.set_title("2 layers vs 1 layer (paper: ≈99% vs ≈55%)")
    ax.legend()
    return save_figure(fig, out_dir, "layers")


@register(
    "layers",
    family="transformer",
    summary="2 vs 1 layer: in-context accuracy mean ± std over seeds (paper ≈99% vs ≈55%)",
    config=LayersConfig,
    plot=plot_layers,
    full=lambda: LayersConfig(train=paper(), seeds=PAPER_SEEDS),
    small=lambda: LayersConfig(train=tiny(), seeds=1, device="cpu"),
)
def run_layers(config: LayersConfig, out_dir: Path, *, log=print, progress: bool = True) -> LayersResult:
    runs = train_depths(
        config.train, config.seeds, out_dir, "layers", device=config.device, progress=progress, log=log
    )
    table: dict[str, DepthSummary] = {}
    for key, depth_runs in runs.items():
        accs = [run.final[ICL_ACC] for run in depth_runs]
        mean, std = mean_std(accs)
        table[key] = DepthSummary(mean, std, accs)
    return LayersResult(table=table, runs=runs)
