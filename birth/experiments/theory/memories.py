"""`memories`: the paper's hand-built memories written into the TransformerLens model
(`birth.models.targets.insert_memories`), in-context accuracy against the memories' scale, with and
without a first-position term, and the probes (all 1 when the memories are in place)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from birth.base.curves import mean_std
from birth.base.io import new_figure, save_figure
from birth.base.validate import Floats, Validated
from birth.experiments.common import Seeds, Train, run_seeds
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.theory.common import PAPER_SEEDS, check_simplified_two_layers
from birth.models.targets import insert_memories
from tasks.protocol import MemoryTargets
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import ICL_ACC, TriggeredBigram
from training.config import TrainConfig
from training.evaluation import evaluate, standard_groups


@dataclass(frozen=True)
class MemoryPoint:
    """The hand-built memories of one model at one scale, measured on a held-out batch."""

    seed: int  # the model's seed (its random frozen embeddings and W_OV¹)
    scale: float  # stored logit of W_OV² and attention score of the key-query memories
    first_position_fix: bool  # the extra W_KQ² term for position 0 (see `target_memories`)
    icl_acc: float  # in-context accuracy (counter >= 2 targets)
    probes: dict[str, float]  # memory recall of W_OV2, W_KQ2, W_KQ1


def hand_built_sweep(
    config: TrainConfig,
    seeds: Sequence[int],
    scales: Sequence[float],
    fixes: Sequence[bool] = (False, True),
) -> list[MemoryPoint]:
    """In-context accuracy and probes of the paper's hand-built memories in the model of `config`,
    for each seed, with and without the first-position term, at each scale.

    Every point is measured on the held-out batch of `config` (its eval seed and size). The memories
    store the K fixed triggers, or every token with random triggers.
    """
    stats = load_stats()
    config.validate(stats.vocab_size)
    task = TriggeredBigram(config.task, stats)
    batch = task.sample(config.run.eval_batch_size, task.generator(config.run.eval_seed))
    triggers = task.fixed_triggers if config.task.trigger_mode == "fixed" else None
    points = []
    for seed in seeds:
        model = config.replace(seed=seed).build_model(stats.vocab_size)
        for fix in fixes:
            for scale in scales:
                insert_memories(model, triggers, scale, first_position_fix=fix)
                groups = standard_groups(task, loss_on=config.optim.loss_on, targets=MemoryTargets(triggers))
                row = evaluate(model, batch, groups, fast_path=config.run.fast_path)
                probes = {k.removeprefix("probes/"): v for k, v in row.items() if k.startswith("probes/")}
                points.append(MemoryPoint(seed, scale, fix, row[ICL_ACC], probes))
    return points


def best_scale(points: Sequence[MemoryPoint], first_position_fix: bool) -> tuple[float, float]:
    """(scale, accuracy) of the scale with the highest seed-mean in-context accuracy."""
    scales = dict.fromkeys(p.scale for p in points if p.first_position_fix == first_position_fix)
    if not scales:
        raise ValueError(f"no point with first_position_fix={first_position_fix}")
    means = {
        s: mean_std(p.icl_acc for p in points if p.scale == s and p.first_position_fix == first_position_fix)[
            0
        ]
        for s in scales
    }
    scale = max(means, key=means.get)
    return scale, means[scale]


MEMORY_SCALES = (0.3, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0)


def _memories_train(seq_len: int = 128) -> TrainConfig:
    # d = 256, the paper's width: at d = 128 the 65 pairs of W_OV² cross-talk too much for 99%
    return TrainConfig().replace(d_model=256, seq_len=seq_len, eval_batch_size=256)


@dataclass(frozen=True)
class MemoriesConfig(Validated):
    train: Train = field(default_factory=_memories_train)  # the model, task and held-out batch
    seeds: Seeds = 2  # models (random frozen weights), seeds --seed, --seed + 1, ...
    # stored logit / attention score of the memories
    scales: Annotated[tuple[float, ...], Floats(0.0, open_low=True)] = MEMORY_SCALES

    def __post_init__(self) -> None:
        super().__post_init__()
        check_simplified_two_layers(self.train)


@dataclass(frozen=True)
class MemoriesResult(ExperimentResult):
    d_model: int
    seq_len: int
    seeds: int
    rows: list[MemoryPoint]  # every (seed, first-position term, scale)
    all_probes_one: bool  # every probe of every point recalls all its pairs
    best: dict[str, tuple[float, float]]  # "with_fix", "paper": (best scale, its seed-mean accuracy)

    def headline(self) -> str:
        (s_fix, a_fix), (s_raw, a_raw) = self.best["with_fix"], self.best["paper"]
        return (
            f"hand-built memories (d={self.d_model}, T={self.seq_len}, {self.seeds} seed(s)): in-context "
            f"accuracy {a_fix:.4f} at scale {s_fix:g} with the first-position term, {a_raw:.4f} at scale "
            f"{s_raw:g} without; every probe = 1: {self.all_probes_one}"
        )


def plot_memories(result: MemoriesResult, out_dir: Path) -> list[Path]:
    scales = list(dict.fromkeys(r.scale for r in result.rows))
    fig, axes = new_figure()
    ax = axes[0][0]
    for fix, style in ((False, "--"), (True, "-")):
        means = [
            mean_std(r.icl_acc for r in result.rows if r.scale == s and r.first_position_fix == fix)[0]
            for s in scales
        ]
        label = "paper's memories" + (" + first-position term" if fix else "")
        ax.plot(scales, means, style, marker="o", label=label)
    ax.axhline(0.99, color="gray", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("memory scale (stored logit / attention score)")
    ax.set_ylabel("in-context accuracy")
    ax.set_title(f"hand-built memories, d={result.d_model}, T={result.seq_len}")
    ax.legend()
    return save_figure(fig, out_dir, "memories")


@register(
    "memories",
    family="theory",
    summary="hand-built memories in the TL model: accuracy vs scale, probes = 1",
    config=MemoriesConfig,
    plot=plot_memories,
    full=lambda: MemoriesConfig(train=_memories_train(seq_len=256), seeds=PAPER_SEEDS),
    small=lambda: MemoriesConfig(
        train=TrainConfig().replace(d_model=32, seq_len=16, eval_batch_size=16), seeds=1, scales=(1.0, 30.0)
    ),
)
def run_memories(
    config: MemoriesConfig, out_dir: Path, *, log=print, progress: bool = True
) -> MemoriesResult:
    train = config.train
    log(f"[memories] d={train.model.d_model}, T={train.task.seq_len}, {config.seeds} seed(s)")
    rows = hand_built_sweep(train, run_seeds(train, config.seeds), config.scales)
    return MemoriesResult(
        d_model=train.model.d_model,
        seq_len=train.task.seq_len,
        seeds=config.seeds,
        rows=rows,
        all_probes_one=all(all(v == 1.0 for v in r.probes.values()) for r in rows),
        best={"with_fix": best_scale(rows, True), "paper": best_scale(rows, False)},
    )
