"""`global-vs-icl`: the paper's first headline on the full transformer (Bietti et al., 2023, section 5
and Fig. 2): *global bigrams are learned fast, the induction head develops slowly*.

The full model (the `full` preset: 2 layers, 4 heads, pre-LayerNorm, ReLU MLPs, trained embeddings,
AdamW, loss on all tokens). Curves of the bigram loss (counter == 0 targets) against its floor, the
Bayes loss of those targets (`tasks.triggered_bigram.bigram_floor`: the mean entropy H(π_b(·|z_t)) over the
evaluation batch's counter-0 positions), and of the in-context accuracy; the step at which the
bigram loss comes within `--tolerance` of the floor and the steps at which the in-context accuracy
passes 0.9 and 0.99 ("step of X": the first evaluation step at which X holds, None: never).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Validated
from birth.experiments.common import Positive, Train
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


@dataclass(frozen=True)
class GlobalVsIclConfig(Validated):
    train: Train = field(default_factory=full_train)  # the training run (loss on all tokens)
    tolerance: Positive = TOLERANCE  # the bigram loss is at its floor within this fraction of it
    device: Device = "auto"  # where the run trains (auto: CUDA when present)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_global_vs_icl(self)


def plot_global_vs_icl(result: GlobalVsIclResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2)
    plot_curves(axes[0][0], axes[0][1], result)
    axes[0][0].set_title("global bigrams: fast")
    axes[0][1].set_title("induction head: slow")
    return save_figure(fig, out_dir, "global_vs_icl")


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
) -> GlobalVsIclResult:
    return GlobalVsIclResult(**global_vs_icl_run(config, out_dir, "full", log, progress))
