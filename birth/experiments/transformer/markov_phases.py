"""`markov-phases`: the three phases of in-context Markov chains (Edelman et al., NeurIPS 2024).

The 2-layer simplified transformer trains on `markov-icl`; every evaluation records the KL of its
next-token law to the uniform, in-context unigram and in-context bigram strategies
(`tasks.markov_icl`). The phase at an evaluation is the strategy the model is closest to; a phase
starts at the first evaluation where its strategy is the closest. Run with the paper's prior and
with doubly stochastic chains (the unigram strategy uninformative), over seeds: the delay claim is
the step at which the bigram phase starts under each prior, mean ± std over seeds, and their
difference paired by seed; the final loss against the Bayes-optimal loss is reported per prior,
mean ± std over seeds, with the number of seeds within `tolerance` of it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Float, Validated
from birth.experiments.common import Seeds, Train, TrainedRun, experiment_train, run_seeds, train_runs
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import STUDY_SEEDS
from birth.models.transformer import ModelConfig
from tasks.markov_icl import EXCESS_LOSS, INDUCTION_MASS, KL, PREV_MASS, STRATEGIES, MarkovICLConfig, Prior
from training.config import OptimConfig, RunConfig, TrainConfig

PRIORS: tuple[Prior, ...] = ("dirichlet", "doubly_stochastic")
COLORS = {"uniform": "tab:gray", "unigram": "tab:orange", "bigram": "tab:blue"}


def markov_train(**changes) -> TrainConfig:
    """The CPU-sized run: k = 3 states, T = 64, a 2-layer attention-only transformer with one head
    per layer and every weight trained (as the paper's; d = 32, learned embeddings and positions,
    no LayerNorm), AdamW, loss on every target; evaluated every 5 steps, finer than the gap between
    the priors' bigram phases. The learning rate decays to 0 along a cosine: the phases are over
    early, and the end of the run at a small rate is what brings the loss to the Bayes loss
    (docs/studies.md)."""
    base = TrainConfig(
        task=MarkovICLConfig(n_states=3, seq_len=64),
        model=ModelConfig(d_model=32, variant="full"),
        optim=OptimConfig(
            optimizer="adamw",
            lr=0.01,
            lr_decay="cosine",
            weight_decay=0.01,
            batch_size=128,
            steps=3200,
            loss_on="all",
        ),
        run=RunConfig(eval_every=5, eval_batch_size=256),
    )
    return experiment_train(base).replace(**changes)


def paper_train() -> TrainConfig:
    """The reference code's task and model size: k = 2, α = 1, T = 100, d = 16, batch 64, AdamW
    (absolute learned positions instead of its relative ones; the CPU default's lr 0.01 and cosine
    decay instead of a constant 5e-4, 4000 steps)."""
    return markov_train(
        n_states=2, seq_len=100, d_model=16, batch_size=64, steps=4000, eval_every=10, eval_batch_size=512
    )


@dataclass(frozen=True)
class MarkovPhasesConfig(Validated):
    train: Train = field(default_factory=markov_train)  # the run (its task is markov-icl)
    seeds: Seeds = STUDY_SEEDS  # runs per prior, seeds --seed, --seed + 1, ...
    tolerance: float = 0.02  # "at the Bayes loss": final loss within this fraction of it
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        super().__post_init__()
        Float(0.0, open_low=True).check("tolerance", self.tolerance)
        if not isinstance(self.train.task, MarkovICLConfig):
            raise ValueError("--train: markov-phases trains on the markov-icl task")


@dataclass(frozen=True)
class PhaseRun:
    prior: str
    seed: int
    phase_starts: dict[str, int | None]  # first evaluation step at which each strategy is the closest
    final_excess_loss: float  # final loss / Bayes loss - 1
    final_kl: dict[str, float]
    final_prev_token_mass: float
    final_induction_mass: float
    run: TrainedRun


@dataclass(frozen=True)
class MarkovPhasesResult(ExperimentResult):
    runs: list[PhaseRun]
    tolerance: float
    bigram_start: dict[str, dict[str, float | int | None]]  # prior -> mean, std, reached
    # prior -> mean and std over seeds of the final (model loss - Bayes loss) / Bayes loss on the
    # held-out batch, every position counted alike (`tasks.markov_icl.EXCESS_LOSS`)
    final_excess: dict[str, dict[str, float]]
    within_tolerance: dict[str, int]  # prior -> seeds whose final loss is within tolerance of Bayes
    # the delay claim: bigram-phase start with the paper's prior minus with doubly stochastic chains,
    # paired by seed (mean, std, pairs: the seeds reaching the phase under both priors)
    delay: dict[str, float | int | None]

    def headline(self) -> str:
        parts = []
        for prior in PRIORS:
            b, e = self.bigram_start[prior], self.final_excess[prior]
            n = sum(r.prior == prior for r in self.runs)
            start = "never" if b["mean"] is None else f"{b['mean']:.0f} ± {b['std']:.0f}"
            parts.append(
                f"{prior}: bigram phase at step {start} ({b['reached']}/{n} seeds), final loss "
                f"{100 * e['mean']:+.2f} ± {100 * e['std']:.2f}% of Bayes ({self.within_tolerance[prior]}/{n} "
                f"within {100 * self.tolerance:g}%)"
            )
        d = self.delay
        if d["mean"] is not None:
            parts.append(f"delay {d['mean']:.0f} ± {d['std']:.0f} steps ({d['pairs']} seeds)")
        return "; ".join(parts)


def phase_starts(run: TrainedRun) -> dict[str, int | None]:
    """First evaluation step at which each strategy has the smallest KL to the model."""
    curves = {s: run.curve(KL + s) for s in STRATEGIES}
    starts: dict[str, int | None] = dict.fromkeys(STRATEGIES)
    for i, step in enumerate(run.steps()):
        values = {s: c[i] for s, c in curves.items() if not math.isnan(c[i])}
        if values:
            closest = min(values, key=values.get)
            if starts[closest] is None:
                starts[closest] = step
    return starts


def _mean_std(values: list[int | None]) -> dict[str, float | int | None]:
    hit = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(hit) if hit else None,
        "std": statistics.stdev(hit) if len(hit) > 1 else 0.0 if hit else None,
        "reached": len(hit),
    }


def excess_summary(runs: list[PhaseRun]) -> dict[str, float]:
    """Mean and sample std over seeds of the final excess loss (std 0 for one seed)."""
    values = [r.final_excess_loss for r in runs]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def paired_delay(runs: list[PhaseRun]) -> dict[str, float | int | None]:
    """Bigram-phase start under the paper's prior minus under doubly stochastic chains, seed by
    seed (the seeds that reach the phase under both), as mean, std and the number of pairs."""
    starts = {(r.prior, r.seed): r.phase_starts["bigram"] for r in runs}
    seeds = sorted({r.seed for r in runs})
    diffs = [
        starts[PRIORS[0], s] - starts[PRIORS[1], s]
        for s in seeds
        if starts.get((PRIORS[0], s)) is not None and starts.get((PRIORS[1], s)) is not None
    ]
    summary = _mean_std(diffs)
    return {"mean": summary["mean"], "std": summary["std"], "pairs": summary["reached"]}


def plot_phases(result: MarkovPhasesResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(ncols=len(PRIORS))
    for ax, prior in zip(axes[0], PRIORS):
        runs = [r for r in result.runs if r.prior == prior]
        if not runs:
            continue
        first = runs[0].run
        steps = first.steps()
        for strategy in STRATEGIES:
            for i, r in enumerate(runs):
                ax.plot(r.run.steps(), r.run.curve(KL + strategy), color=COLORS[strategy], lw=1.2 if i == 0 else 0.6,
                        alpha=1.0 if i == 0 else 0.4, label=f"KL to {strategy}" if i == 0 else None)  # fmt: skip
        # shade the phases of the first seed: the strategy closest to the model at each evaluation
        curves = {s: first.curve(KL + s) for s in STRATEGIES}
        for i in range(len(steps) - 1):
            values = {s: c[i] for s, c in curves.items() if not math.isnan(c[i])}
            if values:
                ax.axvspan(
                    steps[i], steps[i + 1], color=COLORS[min(values, key=values.get)], alpha=0.12, lw=0
                )
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("KL(strategy ‖ model) (nats)")
        b = result.bigram_start[prior]
        start = "never" if b["mean"] is None else f"{b['mean']:.0f} ± {b['std']:.0f}"
        ax.set_title(f"{prior}: bigram phase at step {start}", fontsize=9)
        ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "markov_phases")


def _small() -> MarkovPhasesConfig:
    train = markov_train(seq_len=8, d_model=16, batch_size=8, steps=4, eval_every=2, eval_batch_size=8)
    return MarkovPhasesConfig(train=train, seeds=1, device="cpu")


@register(
    "markov-phases",
    family="transformer",
    summary="uniform → unigram → bigram phases on in-context Markov chains; the unigram delays the bigram",
    config=MarkovPhasesConfig,
    plot=plot_phases,
    full=lambda: MarkovPhasesConfig(train=paper_train(), seeds=5),
    small=_small,
)
def run_markov_phases(
    config: MarkovPhasesConfig, out_dir: Path, *, log=print, progress: bool = True
) -> MarkovPhasesResult:
    jobs = [(prior, seed) for prior in PRIORS for seed in run_seeds(config.train, config.seeds)]
    for prior, seed in jobs:
        log(f"[markov-phases] {prior}, seed {seed}: {config.train.optim.steps} steps")
    # every run has the same architecture: they train side by side in one process (`train_runs`)
    trained = train_runs([config.train.replace(prior=prior, seed=seed) for prior, seed in jobs], out_dir,
                         [f"{prior}-seed{seed}" for prior, seed in jobs],
                         device=config.device, progress=progress, log=log)  # fmt: skip
    runs = [
        PhaseRun(
            prior=prior,
            seed=seed,
            phase_starts=phase_starts(run),
            final_excess_loss=float(run.final[EXCESS_LOSS]),
            final_kl={s: float(run.final[KL + s]) for s in STRATEGIES},
            final_prev_token_mass=float(run.final.get(PREV_MASS) or math.nan),
            final_induction_mass=float(run.final.get(INDUCTION_MASS) or math.nan),
            run=run,
        )
        for (prior, seed), run in zip(jobs, trained)
    ]
    by_prior = {p: [r for r in runs if r.prior == p] for p in PRIORS}
    return MarkovPhasesResult(
        runs=runs,
        tolerance=config.tolerance,
        bigram_start={p: _mean_std([r.phase_starts["bigram"] for r in rs]) for p, rs in by_prior.items()},
        final_excess={p: excess_summary(rs) for p, rs in by_prior.items()},
        within_tolerance={
            p: sum(r.final_excess_loss <= config.tolerance for r in rs) for p, rs in by_prior.items()
        },
        delay=paired_delay(runs),
    )
