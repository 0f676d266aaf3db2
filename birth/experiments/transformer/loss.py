"""`loss`: the loss on the outputs only vs on all tokens: speed of the induction head, bigram loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from birth.base.curves import first_crossing
from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Validated
from birth.experiments.common import Train, TrainedRun, train_run
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import THRESHOLD, paper, quick, tiny
from tasks.protocol import LossOn
from tasks.triggered_bigram import BIGRAM_LOSS, ICL_ACC

LOSSES: tuple[LossOn, ...] = get_args(LossOn)


@dataclass(frozen=True)
class LossConfig(Validated):
    train: Train = field(default_factory=quick)  # base training run; --loss-on is set per arm
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train.task.n_triggers == 0:
            raise ValueError("--n-triggers 0 leaves no target for the outputs-only arm; use K >= 1")


@dataclass(frozen=True)
class LossRun:
    run: TrainedRun
    icl_crossing: int | None  # first evaluation step with in-context accuracy >= 0.9 (None: never)


@dataclass(frozen=True)
class LossResult(ExperimentResult):
    arms: dict[str, LossRun]  # "outputs", "all"

    def headline(self) -> str:
        o, a = self.arms["outputs"], self.arms["all"]
        return (
            f"outputs-only vs all-token loss: in-context accuracy {o.run.final[ICL_ACC]:.3f} vs "
            f"{a.run.final[ICL_ACC]:.3f} (0.9 reached at step {o.icl_crossing} vs "
            f"{a.icl_crossing}); bigram loss {o.run.final[BIGRAM_LOSS]:.3f} vs "
            f"{a.run.final[BIGRAM_LOSS]:.3f}"
        )


def plot_loss(result: LossResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2)
    for loss_on, color in zip(LOSSES, ("tab:blue", "tab:green")):
        run = result.arms[loss_on].run
        axes[0][0].plot(run.steps(), run.curve(ICL_ACC), color=color, label=f"loss on {loss_on}")
        axes[0][1].plot(run.steps(), run.curve(BIGRAM_LOSS), color=color, label=f"loss on {loss_on}")
    axes[0][0].set_ylabel("in-context accuracy")
    axes[0][1].set_ylabel("bigram loss (counter == 0)")
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.legend()
    return save_figure(fig, out_dir, "loss")


@register(
    "loss",
    family="transformer",
    summary="loss on outputs only vs on all tokens: induction speed, bigram loss",
    config=LossConfig,
    plot=plot_loss,
    full=lambda: LossConfig(train=paper()),
    small=lambda: LossConfig(train=tiny(), device="cpu"),
)
def run_loss(config: LossConfig, out_dir: Path, *, log=print, progress: bool = True) -> LossResult:
    arms: dict[str, LossRun] = {}
    for loss_on in LOSSES:
        train = config.train.replace(loss_on=loss_on)
        log(f"[loss] loss on {loss_on}: {train.optim.steps} steps")
        run = train_run(train, out_dir, loss_on, device=config.device, progress=progress, log=log)
        arms[loss_on] = LossRun(run, first_crossing(run.steps(), run.curve(ICL_ACC), THRESHOLD))
    return LossResult(arms=arms)
