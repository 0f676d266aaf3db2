"""The training claims of *Birth of a Transformer*, one experiment each: layers, triggers, order,
loss, ood.

Each trains the simplified model on the triggered-bigram task from a base training config (the
quick preset by default: minutes on a 2-core CPU; `full()` the paper preset and 5 seeds, for a GPU)
with one field changed per arm, and keeps every run under `out_dir/runs/`. The numbers are the
held-out metrics and the memory-recall probes the training loop records (`birth.metrics`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from birth.base.io import new_figure, save_figure
from birth.experiments.common import (
    Device,
    TrainedRun,
    check_device,
    check_seeds,
    check_train,
    eval_batch,
    experiment_train,
    run_seeds,
    train_run,
    trained_model,
)
from birth.experiments.registry import ExperimentResult, register
from birth.metrics import evaluate, first_crossing, mean_std
from birth.theory import MEMORIES
from probes.attention import attention_patterns, save_attention_heatmaps
from probes.recall import all_probes
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import TriggeredBigram
from training.config import PAPER, QUICK, TrainConfig

THRESHOLD = 0.9  # a memory "is learned" once its probe reaches this recall (as in `birth train`)
PAPER_SEEDS = 5  # seeds of the full-size multi-seed experiments


def _quick() -> TrainConfig:
    return experiment_train(QUICK)


def _paper() -> TrainConfig:
    return experiment_train(PAPER)


def _tiny() -> TrainConfig:
    """A few steps of a tiny model: seconds, for the tests (the numbers mean nothing)."""
    return _quick().replace(d_model=16, seq_len=16, batch_size=8, steps=4, eval_every=2, eval_batch_size=8)


def _check(config) -> None:
    check_train(config.train)
    check_device(config.device)


# ---------------------------------------------------------------------------------------------
# layers: 2 layers vs 1 layer
# ---------------------------------------------------------------------------------------------

DEPTHS = (2, 1)


@dataclass(frozen=True)
class LayersConfig:
    train: TrainConfig = field(default_factory=_quick)  # base training run; --n-layers is set per arm
    seeds: int = 2  # runs per depth, seeds --seed, --seed + 1, ...
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check(self)
        check_seeds(self.seeds)


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
            ax.plot(run.steps(), run.curve("eval/icl_acc"), color=color, alpha=0.8, label=label)
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
    full=lambda: LayersConfig(train=_paper(), seeds=PAPER_SEEDS),
    small=lambda: LayersConfig(train=_tiny(), seeds=1, device="cpu"),
)
def run_layers(config: LayersConfig, out_dir: Path, *, log=print, progress: bool = True) -> LayersResult:
    table: dict[str, DepthSummary] = {}
    runs: dict[str, list[TrainedRun]] = {}
    for layers in DEPTHS:
        key = f"{layers}L"
        runs[key] = []
        for seed in run_seeds(config.train, config.seeds):
            train = config.train.replace(n_layers=layers, seed=seed)
            log(f"[layers] {layers} layer(s), seed {seed}: {train.optim.steps} steps")
            run = train_run(
                train, out_dir, f"{key}-seed{seed}", device=config.device, progress=progress, log=log
            )
            runs[key].append(run)
        accs = [run.final["eval/icl_acc"] for run in runs[key]]
        mean, std = mean_std(accs)
        table[key] = DepthSummary(mean, std, accs)
    return LayersResult(table=table, runs=runs)


# ---------------------------------------------------------------------------------------------
# triggers: fixed vs random triggers
# ---------------------------------------------------------------------------------------------

TRIGGER_MODES = ("fixed", "random")
ATTENTION_POSITIONS = 64  # the attention maps show the first positions only (readable characters)


@dataclass(frozen=True)
class TriggersConfig:
    train: TrainConfig = field(default_factory=_quick)  # base training run; --trigger-mode is set per arm
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check(self)


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
            f"in-context accuracy: fixed {f['eval/icl_acc']:.3f}, random {r['eval/icl_acc']:.3f}; "
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
        for key in ("eval/icl_acc", *(f"probes/{m}" for m in MEMORIES)):
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
    full=lambda: TriggersConfig(train=_paper()),
    small=lambda: TriggersConfig(train=_tiny(), device="cpu"),
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


# ---------------------------------------------------------------------------------------------
# order: W_OV2 → W_KQ2 → W_KQ1 over seeds
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderConfig:
    train: TrainConfig = field(default_factory=_quick)  # the training run repeated over seeds
    seeds: int = 2  # runs, seeds --seed, --seed + 1, ...
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check(self)
        check_seeds(self.seeds)


@dataclass(frozen=True)
class SeedOrder:
    seed: int
    order: dict[str, int | None]  # first step at which each probe reaches 0.9


@dataclass(frozen=True)
class OrderResult(ExperimentResult):
    crossings: dict[str, list[int | None]]  # per memory, its 0.9-crossing step in each seed
    median: dict[str, float | None]  # per memory, the median over the seeds that reached 0.9
    paper_order_count: int  # seeds with W_OV2 < W_KQ2 < W_KQ1 strictly (ties do not count)
    per_seed: list[SeedOrder]

    def headline(self) -> str:
        return (
            f"order W_OV2 → W_KQ2 → W_KQ1 in {self.paper_order_count}/{len(self.per_seed)} seed(s); "
            "median 0.9-crossing steps " + ", ".join(f"{k} {v}" for k, v in self.median.items())
        )


def paper_order(order: dict[str, int | None]) -> bool:
    """The probes crossed in the paper's order W_OV2 → W_KQ2 → W_KQ1, at distinct steps."""
    steps = [order.get(k) for k in MEMORIES]
    return all(s is not None for s in steps) and steps[0] < steps[1] < steps[2]


def plot_order(result: OrderResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure()
    ax = axes[0][0]
    for i, crossings in enumerate(result.crossings.values()):
        values = [v for v in crossings if v is not None]
        ax.scatter(values, [i] * len(values), s=40, alpha=0.7)
        missing = len(crossings) - len(values)
        if missing:
            # x in axes coordinates: the label stays inside the axes whatever the steps
            ax.text(0.98, i + 0.15, f"{missing} not reached", fontsize=8, ha="right",
                    transform=ax.get_yaxis_transform())  # fmt: skip
    ax.set_yticks(range(len(result.crossings)), list(result.crossings))
    ax.set_ylim(-0.5, len(result.crossings) - 0.5)
    ax.set_xlabel(f"first step with probe >= {THRESHOLD}")
    ax.set_title(f"learning order over {len(result.per_seed)} seed(s)")
    return save_figure(fig, out_dir, "order")


@register(
    "order",
    family="transformer",
    summary="0.9-crossing steps of W_OV2, W_KQ2, W_KQ1 over seeds (paper: W_OV2 → W_KQ2 → W_KQ1)",
    config=OrderConfig,
    plot=plot_order,
    full=lambda: OrderConfig(train=_paper(), seeds=PAPER_SEEDS),
    small=lambda: OrderConfig(train=_tiny(), seeds=1, device="cpu"),
)
def run_order(config: OrderConfig, out_dir: Path, *, log=print, progress: bool = True) -> OrderResult:
    per_seed: list[SeedOrder] = []
    for seed in run_seeds(config.train, config.seeds):
        train = config.train.replace(seed=seed)
        log(f"[order] seed {seed}: {train.optim.steps} steps")
        run = train_run(train, out_dir, f"seed{seed}", device=config.device, progress=progress, log=log)
        per_seed.append(SeedOrder(seed, run.order))
    crossings = {k: [s.order.get(k) for s in per_seed] for k in MEMORIES}
    median = {
        k: statistics.median(reached) if (reached := [v for v in vs if v is not None]) else None
        for k, vs in crossings.items()
    }
    count = sum(paper_order(s.order) for s in per_seed)
    return OrderResult(crossings=crossings, median=median, paper_order_count=count, per_seed=per_seed)


# ---------------------------------------------------------------------------------------------
# loss: loss on outputs only vs on all tokens
# ---------------------------------------------------------------------------------------------

LOSSES = ("outputs", "all")


@dataclass(frozen=True)
class LossConfig:
    train: TrainConfig = field(default_factory=_quick)  # base training run; --loss-on is set per arm
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check(self)
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
            f"outputs-only vs all-token loss: in-context accuracy {o.run.final['eval/icl_acc']:.3f} vs "
            f"{a.run.final['eval/icl_acc']:.3f} (0.9 reached at step {o.icl_crossing} vs "
            f"{a.icl_crossing}); bigram loss {o.run.final['eval/bigram_loss']:.3f} vs "
            f"{a.run.final['eval/bigram_loss']:.3f}"
        )


def plot_loss(result: LossResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2)
    for loss_on, color in zip(LOSSES, ("tab:blue", "tab:green")):
        run = result.arms[loss_on].run
        axes[0][0].plot(run.steps(), run.curve("eval/icl_acc"), color=color, label=f"loss on {loss_on}")
        axes[0][1].plot(run.steps(), run.curve("eval/bigram_loss"), color=color, label=f"loss on {loss_on}")
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
    full=lambda: LossConfig(train=_paper()),
    small=lambda: LossConfig(train=_tiny(), device="cpu"),
)
def run_loss(config: LossConfig, out_dir: Path, *, log=print, progress: bool = True) -> LossResult:
    arms: dict[str, LossRun] = {}
    for loss_on in LOSSES:
        train = config.train.replace(loss_on=loss_on)
        log(f"[loss] loss on {loss_on}: {train.optim.steps} steps")
        run = train_run(train, out_dir, loss_on, device=config.device, progress=progress, log=log)
        arms[loss_on] = LossRun(run, first_crossing(run.steps(), run.curve("eval/icl_acc"), THRESHOLD))
    return LossResult(arms=arms)


# ---------------------------------------------------------------------------------------------
# ood: output distribution shift
# ---------------------------------------------------------------------------------------------

OUTPUT_LAWS = ("uniform", "bigram")


@dataclass(frozen=True)
class OodConfig:
    train: TrainConfig = field(default_factory=_quick)  # base training run; --output-mode is set per arm
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        _check(self)


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
    full=lambda: OodConfig(train=_paper()),
    small=lambda: OodConfig(train=_tiny(), device="cpu"),
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
            _, batch = eval_batch(train.replace(output_mode=eval_law), stats)
            row = evaluate(
                model,
                batch,
                loss_on=train.optim.loss_on,
                fast_path=train.run.fast_path,
                probe_triggers=frequent,
            )
            icl_acc[train_law][eval_law] = row["eval/icl_acc"]
        probes[train_law] = all_probes(model, frequent)
    return OodResult(icl_acc=icl_acc, probes=probes)
