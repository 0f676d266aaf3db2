"""`clamps`: which sub-circuit of the induction head gates the others (Singh et al., ICML 2024).

Each condition holds part of the circuit at its ideal form for the whole run (`training.clamps`):
layer 1's previous-token pattern (`prev_token`, their sub-circuit A), layer 2's induction pattern
(`induction`, the match B), W_O² at its copy memory (`W_O2`, the copy C); no clamp, each alone and
each pair, over seeds. Measured: the step at which the task's circuit is in place — in-context
accuracy 0.9 on triggered-bigram, the start of the bigram phase on markov-icl
(`markov_phases.phase_starts`). A clamp that removes most of the delay gates the others; the
effects add up when a pair's saving is the sum of its two clamps' savings.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from birth.base.curves import first_crossing
from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Validated
from birth.experiments.common import Seeds, Train, TrainedRun, run_seeds, train_run
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import STUDY_SEEDS, quick, tiny
from birth.experiments.transformer.markov_phases import markov_train, phase_starts
from tasks.markov_icl import MarkovICLConfig
from tasks.triggered_bigram import ICL_ACC, TaskConfig
from training.config import TrainConfig

CLAMPED = ("prev_token", "induction", "W_O2")  # the sub-circuits A, B, C
CONDITIONS: tuple[tuple[str, ...], ...] = (
    ((),) + tuple((c,) for c in CLAMPED) + tuple(itertools.combinations(CLAMPED, 2))
)
LEVEL = 0.9  # in-context accuracy of the triggered-bigram circuit
Which = Literal["triggered-bigram", "markov-icl", "both"]


def bigram_train() -> TrainConfig:
    """The quick run with the paper's fixed triggers (the ideal induction pattern is read from the
    tokens) for 1000 steps."""
    return quick(trigger_mode="fixed", steps=1000, eval_every=20)


def markov_simplified(**changes) -> TrainConfig:
    """markov-phases' run on the 2-layer simplified model (d = 64, W_K¹, W_K², W_O² from zero, lr
    0.03 held constant, batch 64): the model whose W_O² has a hand-built copy memory to be held at.
    The clamps move the start of the bigram phase, which a constant rate keeps comparable."""
    return markov_train(
        variant="simplified",
        d_model=64,
        trainable_init="zero",
        lr=0.03,
        lr_decay="none",
        batch_size=64,
        steps=600,
    ).replace(**changes)


@dataclass(frozen=True)
class ClampsConfig(Validated):
    bigram: Train = field(default_factory=bigram_train)  # the triggered-bigram run
    markov: Train = field(default_factory=lambda: markov_simplified())  # the markov-icl run
    which: Which = "markov-icl"  # the task(s) studied
    seeds: Seeds = STUDY_SEEDS  # runs per condition
    device: Device = "auto"  # where the runs train

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.bigram.task, TaskConfig) or self.bigram.task.trigger_mode != "fixed":
            raise ValueError("--bigram: the clamps study needs triggered-bigram with --trigger-mode fixed")
        if not isinstance(self.markov.task, MarkovICLConfig):
            raise ValueError("--markov: the clamps study needs the markov-icl task")
        for train in (self.bigram, self.markov):
            if train.optim.clamp:
                raise ValueError("leave --clamp empty: the experiment sets it")


@dataclass(frozen=True)
class Condition:
    task: str
    clamps: list[str]
    steps: list[int | None]  # per seed: step at which the circuit is in place (None: never)
    mean: float | None  # over the seeds that reached it
    std: float | None
    reached: int


@dataclass(frozen=True)
class ClampsResult(ExperimentResult):
    conditions: list[Condition]
    additivity: dict[str, dict[str, float | None]]  # "task:a+b" -> measured and additive savings
    gating: dict[str, str | None]  # task -> the single clamp that saves the most steps

    def headline(self) -> str:
        parts = []
        for task, clamp in self.gating.items():
            base = next(c for c in self.conditions if c.task == task and not c.clamps)
            alone = [c for c in self.conditions if c.task == task and len(c.clamps) == 1]
            steps = ", ".join(f"{c.clamps[0]} {_fmt(c)}" for c in alone)
            parts.append(f"{task}: no clamp {_fmt(base)}; {steps}; largest saving: {clamp}")
        return "; ".join(parts)


def _fmt(c: Condition) -> str:
    if c.mean is None:
        return "never"
    partial = "" if c.reached == len(c.steps) else f" ({c.reached}/{len(c.steps)})"
    return f"{c.mean:.0f} ± {c.std:.0f}{partial}"


def circuit_step(task: str, run: TrainedRun) -> int | None:
    if task == "markov-icl":
        return phase_starts(run)["bigram"]
    return first_crossing(run.steps(), run.curve(ICL_ACC), LEVEL)


def _condition(task: str, clamps: tuple[str, ...], steps: list[int | None]) -> Condition:
    hit = [s for s in steps if s is not None]
    return Condition(
        task=task,
        clamps=list(clamps),
        steps=steps,
        mean=statistics.fmean(hit) if hit else None,
        std=(statistics.stdev(hit) if len(hit) > 1 else 0.0) if hit else None,
        reached=len(hit),
    )


def _analysis(conditions: list[Condition]) -> tuple[dict, dict]:
    additivity: dict[str, dict[str, float | None]] = {}
    gating: dict[str, str | None] = {}
    for task in dict.fromkeys(c.task for c in conditions):
        # a condition whose circuit some seed never formed has no step to compare (its mean over
        # the other seeds would be a biased saving)
        mean = {
            tuple(c.clamps): c.mean if c.reached == len(c.steps) else None
            for c in conditions
            if c.task == task
        }
        base = mean[()]
        saving = {k: None if base is None or v is None else base - v for k, v in mean.items()}
        singles = {k[0]: v for k, v in saving.items() if len(k) == 1 and v is not None}
        gating[task] = max(singles, key=singles.get) if singles else None
        for pair in (k for k in saving if len(k) == 2):
            a, b = saving[(pair[0],)], saving[(pair[1],)]
            additivity[f"{task}:{'+'.join(pair)}"] = {
                "measured": saving[pair],
                "additive": None if a is None or b is None else a + b,
            }
    return additivity, gating


def plot_clamps(result: ClampsResult, out_dir: Path) -> list[Path]:
    tasks = list(dict.fromkeys(c.task for c in result.conditions))
    fig, axes = new_figure(ncols=len(tasks))
    for ax, task in zip(axes[0], tasks):
        conds = [c for c in result.conditions if c.task == task]
        labels = ["+".join(c.clamps) or "none" for c in conds]
        for i, c in enumerate(conds):
            hit = [s for s in c.steps if s is not None]
            ax.scatter([i] * len(hit), hit, color="tab:blue", alpha=0.6)
            if c.mean is not None:
                ax.errorbar(i, c.mean, yerr=c.std, fmt="_", color="k", ms=16, capsize=3)
            if c.reached < len(c.steps):
                ax.text(i, 0, f"{len(c.steps) - c.reached} never", fontsize=7, ha="center")
        ax.set_xticks(range(len(conds)), labels, rotation=30, fontsize=8)
        what = "bigram phase start" if task == "markov-icl" else f"in-context accuracy {LEVEL}"
        ax.set_ylabel(f"step of {what}")
        ax.set_title(task, fontsize=9)
    return save_figure(fig, out_dir, "clamps")


def _small() -> ClampsConfig:
    bigram = tiny(bigram_train(), fast_path=False)
    markov = markov_simplified(seq_len=8, d_model=16, batch_size=8, steps=4, eval_every=2, eval_batch_size=8)
    return ClampsConfig(bigram=bigram, markov=markov, which="both", seeds=1, device="cpu")


def _runs(config: ClampsConfig) -> list[tuple[str, TrainConfig]]:
    runs = []
    if config.which in ("triggered-bigram", "both"):
        runs.append(("triggered-bigram", config.bigram))
    if config.which in ("markov-icl", "both"):
        runs.append(("markov-icl", config.markov))
    return runs


@register(
    "clamps",
    family="transformer",
    summary="clamping the previous-token head, the induction match or the copy: which gates the circuit",
    config=ClampsConfig,
    plot=plot_clamps,
    full=lambda: ClampsConfig(which="both", seeds=5),
    small=_small,
)
def run_clamps(config: ClampsConfig, out_dir: Path, *, log=print, progress: bool = True) -> ClampsResult:
    conditions = []
    for task, base in _runs(config):
        for clamps in CONDITIONS:
            steps = []
            for seed in run_seeds(base, config.seeds):
                # the hooks of a pattern clamp need the TransformerLens forward; the others keep
                # the run's own (the fast path computes the same function)
                patterned = any(c in ("prev_token", "induction") for c in clamps)
                train = base.replace(
                    clamp=",".join(clamps), seed=seed, **({"fast_path": False} if patterned else {})
                )
                name = f"{task}-{'+'.join(clamps) or 'none'}-seed{seed}"
                log(f"[clamps] {name}: {train.optim.steps} steps")
                run = train_run(train, out_dir, name, device=config.device, progress=progress, log=log)
                steps.append(circuit_step(task, run))
            conditions.append(_condition(task, clamps, steps))
    additivity, gating = _analysis(conditions)
    return ClampsResult(conditions=conditions, additivity=additivity, gating=gating)
