"""`ood`: output distribution shift: trained with uniform outputs, evaluated with bigram outputs, and
the reverse."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Validated
from birth.experiments.common import Train, eval_batch, train_run, trained_model
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import paper, quick, tiny
from probes.recall import all_probes
from tasks.protocol import MemoryTargets
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import ICL_ACC, TriggeredBigram
from training.evaluation import evaluate, standard_groups

OUTPUT_LAWS = ("uniform", "bigram")


@dataclass(frozen=True)
class OodConfig(Validated):
    train: Train = field(default_factory=quick)  # base training run; --output-mode is set per arm
    device: Device = "auto"  # where the runs train (auto: CUDA when present)


@dataclass(frozen=True)
class OodResult(ExperimentResult):
    icl_acc: dict[str, dict[str, float]]  # [trained with][evaluated with] in-context accuracy
    probes: dict[str, dict[str, float]]  # [trained with] final probes (W_KQ2 over the K most frequent tokens)

    def headline(self) -> str:
        m = self.icl_acc
        return (
            f"train uniform → eval bigram outputs: {m['uniform']['bigram']:.3f} (in-dist "
            f"{m['uniform']['uniform']:.3f}); train bigram → eval uniform: "
            f"{m['bigram']['uniform']:.3f} (in-dist {m['bigram']['bigram']:.3f})"
        )


def plot_ood(result: OodResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(size=(5.0, 4.0))
    ax = axes[0][0]
    grid = [[result.icl_acc[t][e] for e in OUTPUT_LAWS] for t in OUTPUT_LAWS]
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="w" if value < 0.6 else "k")
    ax.set_xticks(range(len(OUTPUT_LAWS)), [f"eval {m}" for m in OUTPUT_LAWS])
    ax.set_yticks(range(len(OUTPUT_LAWS)), [f"train {m}" for m in OUTPUT_LAWS])
    ax.set_title("in-context accuracy, output distribution shift")
    fig.colorbar(image, ax=ax)
    return save_figure(fig, out_dir, "ood")


@register(
    "ood",
    family="transformer",
    summary="train with uniform outputs → evaluate with bigram outputs, and the reverse",
    config=OodConfig,
    plot=plot_ood,
    full=lambda: OodConfig(train=paper()),
    small=lambda: OodConfig(train=tiny(), device="cpu"),
)
def run_ood(config: OodConfig, out_dir: Path, *, log=print, progress: bool = True) -> OodResult:

    stats = load_stats()
    icl_acc: dict[str, dict[str, float]] = {}
    probes: dict[str, dict[str, float]] = {}
    for train_law in OUTPUT_LAWS:
        train = config.train.replace(output_mode=train_law)
        log(f"[ood] train with {train_law} outputs: {train.optim.steps} steps")
        train_run(train, out_dir, train_law, device=config.device, progress=progress, log=log)
        model = trained_model(out_dir, train_law)
        # W_KQ2 is ranked over the K most frequent characters whatever --trigger-mode says
        frequent = TriggeredBigram(train.task, stats).fixed_triggers
        icl_acc[train_law] = {}
        for eval_law in OUTPUT_LAWS:
            task, batch = eval_batch(train.replace(output_mode=eval_law), stats)
            groups = standard_groups(task, loss_on=train.optim.loss_on, targets=MemoryTargets(frequent))
            row = evaluate(model, batch, groups, fast_path=train.run.fast_path)
            icl_acc[train_law][eval_law] = row[ICL_ACC]
        probes[train_law] = all_probes(model, frequent)
    return OodResult(icl_acc=icl_acc, probes=probes)
