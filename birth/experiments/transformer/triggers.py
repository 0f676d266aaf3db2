"""`triggers`: fixed vs random triggers: in-context accuracy, the probes, and the attention maps of
one held-out sequence side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Validated
from birth.experiments.common import Train, TrainedRun, train_run, trained_model
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import paper, quick, tiny
from birth.models.targets import MEMORIES
from probes.attention import attention_patterns, save_attention_heatmaps
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import ICL_ACC, TriggeredBigram, TriggerMode

TRIGGER_MODES: tuple[TriggerMode, ...] = get_args(TriggerMode)
ATTENTION_POSITIONS = 64  # the attention maps show the first positions only (readable characters)


@dataclass(frozen=True)
class TriggersConfig(Validated):
    train: Train = field(default_factory=quick)  # base training run; --trigger-mode is set per arm
    device: Device = "auto"  # where the runs train (auto: CUDA when present)


@dataclass(frozen=True)
class TriggerRun:
    run: TrainedRun
    heatmaps: list[str]  # per-layer attention heatmaps of one held-out sequence, relative to out_dir
    attention: list[list[list[float]]]  # per layer, the [query][key] attention of that sequence


@dataclass(frozen=True)
class TriggersResult(ExperimentResult):
    modes: dict[str, TriggerRun]  # "fixed", "random"

    def headline(self) -> str:
        f, r = self.modes["fixed"].run.final, self.modes["random"].run.final
        return (
            f"in-context accuracy: fixed {f[ICL_ACC]:.3f}, random {r[ICL_ACC]:.3f}; "
            f"W_KQ2 probe: fixed {f['probes/W_KQ2']:.2f} (over the K triggers), "
            f"random {r['probes/W_KQ2']:.2f} (over all tokens)"
        )


def plot_triggers(result: TriggersResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(2, 2, size=(4.5, 4.2))
    for row, mode in enumerate(TRIGGER_MODES):
        for layer, pattern in enumerate(result.modes[mode].attention):
            ax = axes[row][layer]
            ax.imshow(pattern, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
            ax.set_title(f"{mode} triggers, layer {layer + 1}")
            ax.set_xlabel("key")
            ax.set_ylabel("query")
    paths = save_figure(fig, out_dir, "attention_side_by_side")
    fig, axes = new_figure(1, 2)
    for col, mode in enumerate(TRIGGER_MODES):
        ax = axes[0][col]
        run = result.modes[mode].run
        for key in (ICL_ACC, *(f"probes/{m}" for m in MEMORIES)):
            ax.plot(run.steps(), run.curve(key), label=key.split("/")[-1])
        ax.set_title(f"{mode} triggers")
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    return paths + save_figure(fig, out_dir, "triggers")


@register(
    "triggers",
    family="transformer",
    summary="fixed vs random triggers: accuracy, probes, attention maps side by side",
    config=TriggersConfig,
    plot=plot_triggers,
    full=lambda: TriggersConfig(train=paper()),
    small=lambda: TriggersConfig(train=tiny(), device="cpu"),
)
def run_triggers(
    config: TriggersConfig, out_dir: Path, *, log=print, progress: bool = True
) -> TriggersResult:

    stats = load_stats()
    modes: dict[str, TriggerRun] = {}
    for mode in TRIGGER_MODES:
        train = config.train.replace(trigger_mode=mode)
        log(f"[triggers] {mode} triggers: {train.optim.steps} steps")
        run = train_run(train, out_dir, mode, device=config.device, progress=progress, log=log)
        # attention maps of the trained model on one held-out sequence of its own task
        model = trained_model(out_dir, mode)
        task = TriggeredBigram(train.task, stats)
        batch = task.sample(1, task.generator(train.run.eval_seed))
        heatmaps = save_attention_heatmaps(model, stats, batch, out_dir / f"attention_{mode}")
        _, patterns = attention_patterns(model, batch.inputs[:, :ATTENTION_POSITIONS])
        modes[mode] = TriggerRun(
            run=run,
            heatmaps=[str(Path(p).relative_to(out_dir)) for p in heatmaps],
            attention=[p[0].tolist() for p in patterns],
        )
    return TriggersResult(modes=modes)
