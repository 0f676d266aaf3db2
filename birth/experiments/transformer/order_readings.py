"""`order-readings`: the learning order under three readings of the probes: the recall probes, the
recall against all tokens and the normalized margin (`probes.margins`), at the quick and the paper
preset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, get_args

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Choices, Float, Int, Validated
from birth.experiments.common import Seeds, Train, TrainedRun, experiment_train, run_seeds, train_run
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import (
    STUDY_SEEDS,
    THRESHOLD,
    check_studied_model,
    crossing,
    quick,
    study_tiny,
)
from birth.models.targets import MEMORIES
from training.config import PAPER

Arm = Literal["quick", "quick-fixed", "paper"]
ARMS: tuple[Arm, ...] = get_args(Arm)
READINGS = ("recall", "recall_all", "margin")


def reading_keys(reading: str) -> dict[str, str]:
    """The metric each memory is read from under a reading."""
    if reading == "recall":
        return {m: f"probes/{m}" for m in MEMORIES}
    if reading == "recall_all":  # W_OV2 and W_KQ1 already rank every token / position
        return {"W_OV2": "probes/W_OV2", "W_KQ2": "recall_all/W_KQ2", "W_KQ1": "probes/W_KQ1"}
    return {m: f"margin/{m}" for m in MEMORIES}


def margin_level(values: Sequence[float], fraction: float, min_rise: float) -> float | None:
    """The margin reading's level for one memory: m(0) + fraction (m(end) - m(0)), the point where
    the memory has covered `fraction` of its rise over the run; None when it rose by less than
    `min_rise` (the memory did not form). The margins of learned memories end at different heights
    (W_KQ¹'s neighbouring positions score close to the right one), so one absolute level would
    compare heights, not times; a random init starts every margin near -0.5, a zero init at 0."""
    start, end = values[0], values[-1]
    if any(v != v for v in (start, end)) or end - start < min_rise:
        return None
    return start + fraction * (end - start)


def order_under(
    run: TrainedRun, reading: str, fraction: float = 0.5, min_rise: float = 0.1
) -> tuple[dict[str, int | None], dict[str, float | None]]:
    """(memory -> first step reaching its level, memory -> level) under a reading: the recalls
    at 0.9, the margins at `margin_level`."""
    order, levels = {}, {}
    for memory, key in reading_keys(reading).items():
        level = margin_level(run.curve(key), fraction, min_rise) if reading == "margin" else THRESHOLD
        levels[memory] = level
        order[memory] = None if level is None else crossing(run, key, level)
    return order, levels


def order_text(order: dict[str, int | None]) -> str:
    reached = sorted((s, m) for m, s in order.items() if s is not None)
    text = " → ".join(f"{m} ({s})" for s, m in reached)
    missing = [m for m, s in order.items() if s is None]
    return text + (("; " if text else "") + "not reached: " + ", ".join(missing) if missing else "")


def is_paper_order(order: dict[str, int | None]) -> bool:
    """W_OV2 → W_KQ2 → W_KQ1 with W_OV2 first at a distinct step; W_KQ1 may be unreached (last)."""
    ov, kq2, kq1 = (order[m] for m in MEMORIES)
    if ov is None or kq2 is None or not ov < kq2:
        return False
    return kq1 is None or kq2 < kq1


@dataclass(frozen=True)
class OrderReadingsConfig(Validated):
    train: Train = field(default_factory=quick)  # the quick arm (quick-fixed: with fixed triggers)
    # the paper arm is the paper preset cut to its first steps (W_OV2 and W_KQ2 cross within 300);
    # full() runs its whole 1000 steps
    paper_steps: Annotated[int, Int(1)] = 300  # steps of the paper arm (the paper preset, fixed triggers)
    # quick, quick-fixed (the quick arm with fixed triggers), paper
    arms: Annotated[tuple[Arm, ...], Choices(ARMS)] = ARMS
    # margin reading: first step covering this fraction of the margin's rise
    margin_fraction: Annotated[float, Float(0.0, 1.0, open_low=True)] = 0.5
    # margin reading: a margin rising less than this over the run is "not learned"
    min_rise: Annotated[float, Float(0.0, 2.0)] = 0.1
    seeds: Seeds = 1  # runs per arm
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_studied_model(self.train)


@dataclass(frozen=True)
class ArmOrders:
    trigger_mode: str  # fixed or random
    orders: dict[str, list[dict[str, int | None]]]  # reading -> per seed, memory -> crossing step
    levels: dict[str, list[dict[str, float | None]]]  # reading -> per seed, memory -> the level crossed
    paper_order: dict[str, int]  # reading -> seeds whose order is W_OV2 → W_KQ2 → W_KQ1
    runs: list[TrainedRun]


@dataclass(frozen=True)
class OrderReadingsResult(ExperimentResult):
    arms: dict[str, ArmOrders]
    margin_fraction: float

    def headline(self) -> str:
        parts = []
        for arm, a in self.arms.items():
            first = {r: order_text(a.orders[r][0]) for r in READINGS}
            parts.append(f"{arm}: " + " | ".join(f"{r}: {t}" for r, t in first.items()))
        return "learning order (first seed) — " + "; ".join(parts)


def plot_order_readings(result: OrderReadingsResult, out_dir: Path) -> list[Path]:
    arms = list(result.arms)
    fig, axes = new_figure(len(arms), len(READINGS), size=(4.2, 3.0))
    for i, arm in enumerate(arms):
        run = result.arms[arm].runs[0]
        for j, reading in enumerate(READINGS):
            ax = axes[i][j]
            order = result.arms[arm].orders[reading][0]
            levels = result.arms[arm].levels[reading][0]
            for k, (memory, key) in enumerate(reading_keys(reading).items()):
                ax.plot(run.steps(), run.curve(key), color=f"C{k}", label=memory)
                if order[memory] is not None:
                    ax.axvline(order[memory], color=f"C{k}", ls=":", lw=0.8)
                    ax.plot([order[memory]], [levels[memory]], "o", color=f"C{k}", ms=4)
            if reading != "margin":
                ax.axhline(THRESHOLD, color="gray", lw=0.6)
            ax.set_ylim(-1.02 if reading == "margin" else -0.02, 1.02)
            ax.set_title(f"{arm} ({result.arms[arm].trigger_mode} triggers): {reading}", fontsize=9)
            ax.set_xlabel("step")
            if j == 0:
                ax.legend(fontsize=7)
    paths = save_figure(fig, out_dir, "order_readings")
    # the W_KQ1 probe by position bin: late positions learn last (their gradient is ∝ 1/t)
    fig, axes = new_figure(1, len(arms), size=(4.2, 3.2))
    for i, arm in enumerate(arms):
        run, ax = result.arms[arm].runs[0], axes[0][i]
        bins = sorted(k for k in run.history[-1] if k.startswith("kq1/pos_"))
        for k, key in enumerate(bins):
            color = (k / max(1, len(bins) - 1), 0.2, 1 - k / max(1, len(bins) - 1))
            ax.plot(run.steps(), run.curve(key), color=color, label=key.removeprefix("kq1/pos_"))
        ax.set_xlabel("step")
        ax.set_ylabel("W_KQ1 recall of the positions t in the bin")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{arm}: W_KQ1 by position", fontsize=9)
        ax.legend(fontsize=6, title="t", title_fontsize=7)
    return paths + save_figure(fig, out_dir, "kq1_positions")


@register(
    "order-readings",
    family="transformer",
    summary="learning order under the recall probes, recall against all tokens and margins (quick, paper)",
    config=OrderReadingsConfig,
    plot=plot_order_readings,
    full=lambda: OrderReadingsConfig(paper_steps=PAPER.optim.steps, seeds=STUDY_SEEDS),
    small=lambda: OrderReadingsConfig(
        train=study_tiny(), paper_steps=1, arms=("quick", "quick-fixed"), device="cpu"
    ),
)
def run_order_readings(
    config: OrderReadingsConfig, out_dir: Path, *, log=print, progress: bool = True
) -> OrderReadingsResult:
    arms: dict[str, ArmOrders] = {}
    for arm in config.arms:
        base = {
            "quick": config.train,
            "quick-fixed": config.train.replace(trigger_mode="fixed"),
            "paper": experiment_train(PAPER).replace(steps=config.paper_steps),
        }[arm]
        runs = []
        for seed in run_seeds(base, config.seeds):
            log(
                f"[order-readings] {arm} ({base.task.trigger_mode} triggers), seed {seed}: {base.optim.steps} steps"
            )
            runs.append(train_run(base.replace(seed=seed), out_dir, f"{arm}-seed{seed}", device=config.device,
                                  progress=progress, log=log))  # fmt: skip
        read = {
            r: [order_under(run, r, config.margin_fraction, config.min_rise) for run in runs]
            for r in READINGS
        }
        orders = {r: [o for o, _ in read[r]] for r in READINGS}
        levels = {r: [lv for _, lv in read[r]] for r in READINGS}
        paper = {r: sum(is_paper_order(o) for o in orders[r]) for r in READINGS}
        arms[arm] = ArmOrders(base.task.trigger_mode, orders, levels, paper, runs)
        for r in READINGS:
            log(f"[order-readings] {arm} {r}: {order_text(orders[r][0])}")
    return OrderReadingsResult(arms, config.margin_fraction)
