"""The theory of *Birth of a Transformer*, one experiment each: memories, gradient-steps,
three-steps, lemma, noisy-lemma.

They use the setting of the paper's constructions, not a training preset: the TrainConfig defaults
(K=5 fixed triggers, N(0, I/d) embeddings, loss on the outputs) at the sizes below, and take
seconds to minutes on a CPU. The computations are in `birth.theory`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from birth.base.io import new_figure, save_figure
from birth.base.seeds import check_seed
from birth.base.validate import check_int
from birth.experiments.common import check_positive, check_seeds, check_train, run_seeds
from birth.experiments.registry import ExperimentResult, register
from birth.metrics import mean_std
from birth.theory import (
    MEMORIES,
    ORTHOGONAL_STEP_NORMS,
    PAPER_ORDER,
    REVERSE_ORDER,
    THEOREM_STEP_NORMS,
    MemoryPoint,
    StepRecord,
    best_scale,
    hand_built_sweep,
    lemma_one_step,
    noisy_lemma_one_step,
    orthogonal_width,
    run_gradient_steps,
)
from tasks.shakespeare import load_stats
from training.config import TrainConfig

PAPER_SEEDS = 5  # seeds of the full-size memories experiment


def _check_simplified_two_layers(train: TrainConfig) -> None:
    check_train(train)
    if train.model.n_layers != 2 or train.model.variant != "simplified":
        raise ValueError(
            "--n-layers must be 2 and --variant simplified: the construction is that of the simplified "
            f"2-layer model, got {train.model.n_layers} layer(s), variant {train.model.variant!r}"
        )


# ---------------------------------------------------------------------------------------------
# memories: the hand-built memories in the TransformerLens model
# ---------------------------------------------------------------------------------------------

MEMORY_SCALES = (0.3, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0)


def _memories_train(seq_len: int = 128) -> TrainConfig:
    # d = 256, the paper's width: at d = 128 the 65 pairs of W_OV² cross-talk too much for 99%
    return TrainConfig().replace(d_model=256, seq_len=seq_len, eval_batch_size=256)


@dataclass(frozen=True)
class MemoriesConfig:
    train: TrainConfig = field(default_factory=_memories_train)  # the model, task and held-out batch
    seeds: int = 2  # models (random frozen weights), seeds --seed, --seed + 1, ...
    scales: tuple[float, ...] = MEMORY_SCALES  # stored logit / attention score of the memories

    def __post_init__(self) -> None:
        _check_simplified_two_layers(self.train)
        check_seeds(self.seeds)
        if not self.scales:
            raise ValueError("--scales needs at least one scale")
        for scale in self.scales:
            check_positive("scales", scale)


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


# ---------------------------------------------------------------------------------------------
# gradient-steps: three large-batch gradient steps from zero (paper, Theorem 3)
# ---------------------------------------------------------------------------------------------


def _gradient_train() -> TrainConfig:
    return TrainConfig().replace(
        d_model=256,
        seq_len=64,  # T=64: fewer positions share W_KQ¹'s 1/t-diluted signal
        output_mode="no_repeat",  # o_k = q_k makes "q q q ..." loops that dominate the gradient
        eval_batch_size=256,
    )


def _orthogonal_train(train: TrainConfig) -> TrainConfig:
    """`train` with d raised to fit `orthogonal_embeddings` (3N + 2T), rounded up to a multiple of 128:
    the theorem's infinite-width idealization."""
    width = orthogonal_width(load_stats().vocab_size, train.task.seq_len)
    return train.replace(d_model=max(train.model.d_model, 128 * math.ceil(width / 128)))


@dataclass(frozen=True)
class GradientStepsConfig:
    train: TrainConfig = field(default_factory=_gradient_train)  # model, task and held-out batch
    # the loss is on second occurrences only (≈ 2 targets per sequence at T=64): many sequences
    sequences: int = 4096  # sequences per gradient step (random embeddings)
    # without cross-talk step 3 is limited by sampling noise (its signal is ∝ 1/t)
    orthogonal_factor: int = 4  # the orthogonal-embedding run uses this many times --sequences

    def __post_init__(self) -> None:
        _check_simplified_two_layers(self.train)
        check_int("sequences", self.sequences, 1)
        check_int("orthogonal_factor", self.orthogonal_factor, 1)


@dataclass(frozen=True)
class StepRun:
    """One application of the three-step procedure."""

    label: str  # paper, reverse, orthogonal
    order: tuple[str, ...]  # the memories stepped, in turn
    embeddings: str  # random (the model's N(0, I/d)) or orthogonal (the infinite-width idealization)
    d_model: int
    n_sequences: int  # sequences per gradient step
    title: str
    records: list[StepRecord]  # the initial state, then the state after each step

    def recalls(self) -> str:
        steps = ", ".join(f"{r.matrix} {r.probes[r.matrix]:.2f}" for r in self.records[1:])
        return f"{steps} (icl {self.records[-1].icl_acc:.3f})"


@dataclass(frozen=True)
class GradientStepsResult(ExperimentResult):
    base: str  # distribution of the non-trigger transitions (the theorem's: uniform)
    runs: list[StepRun]  # paper order, reverse order, paper order with orthogonal embeddings

    def run(self, label: str) -> StepRun:
        return next(r for r in self.runs if r.label == label)

    def headline(self) -> str:
        ortho = self.run("orthogonal")
        return (
            f"R after steps 1-3, paper order: {self.run('paper').recalls()}; reverse order: "
            f"{self.run('reverse').recalls()}; orthogonal embeddings (d={ortho.d_model}), paper order: "
            f"{ortho.recalls()}"
        )


def plot_gradient_steps(result: GradientStepsResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, len(result.runs), size=(5.0, 4.0))
    for ax, run in zip(axes[0], result.runs):
        xs = list(range(len(run.records)))
        for key in MEMORIES:
            ax.plot(xs, [r.probes[key] for r in run.records], marker="o", label=key)
        ax.plot(xs, [r.icl_acc for r in run.records], "k--", marker="x", label="icl acc")
        ax.set_xticks(xs, ["init"] + [r.matrix for r in run.records[1:]])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(run.title, fontsize=9)
        ax.set_ylabel("memory recall R")
        ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "gradient_steps")


@register(
    "gradient-steps",
    family="theory",
    summary="3 large-batch gradient steps from zero (W_OV2, W_KQ2, W_KQ1) vs reverse order",
    config=GradientStepsConfig,
    plot=plot_gradient_steps,
    full=lambda: GradientStepsConfig(sequences=32768),
    small=lambda: GradientStepsConfig(
        train=_gradient_train().replace(d_model=32, seq_len=24, eval_batch_size=16),
        sequences=64,
        orthogonal_factor=1,
    ),
)
def run_gradient_steps_experiment(
    config: GradientStepsConfig, out_dir: Path, *, log=print, progress: bool = True
) -> GradientStepsResult:
    train, n = config.train, config.sequences
    # the theorem's infinite-width idealization: exactly orthogonal embeddings, d rounded up to 128
    ortho = _orthogonal_train(train)
    d, d_ortho = train.model.d_model, ortho.model.d_model
    # label, order, training config, embeddings, step norms (None: the defaults), sequences, title
    plans = (
        ("paper", PAPER_ORDER, train, "random", None, n, f"paper order, d={d}"),
        ("reverse", REVERSE_ORDER, train, "random", None, n, f"reverse order, d={d}"),
        ("orthogonal", PAPER_ORDER, ortho, "orthogonal", ORTHOGONAL_STEP_NORMS, config.orthogonal_factor * n,
         f"paper order, orthogonal embeddings, d={d_ortho}"),
    )  # fmt: skip
    runs = []
    for label, order, cfg, embeddings, norms, sequences, title in plans:
        log(
            f"[gradient-steps] {label}: order {' → '.join(order)}, {embeddings} embeddings, "
            f"d={cfg.model.d_model}, {sequences} sequences per step"
        )
        records = run_gradient_steps(
            cfg, order, n_sequences=sequences, embeddings=embeddings, step_norms=norms, progress=log
        )
        runs.append(StepRun(label, order, embeddings, cfg.model.d_model, sequences, title, records))
    return GradientStepsResult(base="uniform", runs=runs)


# ---------------------------------------------------------------------------------------------
# three-steps: the three gradient steps in the theorem's setting, one assumption removed at a time
# ---------------------------------------------------------------------------------------------

Variant = Literal["theorem", "no-symmetry", "no-restriction", "identity-value", "task-data", "paper-setting"]
VARIANTS: tuple[str, ...] = get_args(Variant)
THREE_STEPS_TARGET = 0.9  # the in-context accuracy asked of the construction (issue 13)


@dataclass(frozen=True)
class VariantPlan:
    """One setting of the three steps: the theorem's unless a field says otherwise."""

    description: str  # one line: what differs from the theorem's setting
    data: str = "theorem"  # theorem (the second output token, `birth.theory.theorem_batch`) or task
    value_tokens: bool = True  # layer 2's value reads the token part only (else W_V² = I)
    restrict: tuple[str, ...] = tuple(PAPER_ORDER)  # memories stepped on their theorem block only
    symmetric: bool = True  # gradients averaged over the token relabelings that keep the law
    # the update norm of each step (a grid: line search on held-out sequences)
    step_norms: dict = field(default_factory=lambda: dict(THEOREM_STEP_NORMS))


VARIANT_PLANS: dict[str, VariantPlan] = {
    "theorem": VariantPlan("the theorem's setting"),
    "no-symmetry": VariantPlan("sampled gradients, not averaged over relabelings", symmetric=False),
    "no-restriction": VariantPlan("every block of W_K¹ and W_K² steps", restrict=()),
    "identity-value": VariantPlan(
        "W_V² = I and every block of W_O² steps: the value carries layer 1's output",
        value_tokens=False,
        restrict=("W_KQ2", "W_KQ1"),
    ),
    "task-data": VariantPlan("the task's sequences, loss on every counter >= 2 target", data="task"),
    "paper-setting": VariantPlan(
        "gradient-steps' orthogonal run: task data, W_V² = I, no simplification",
        data="task",
        value_tokens=False,
        restrict=(),
        symmetric=False,
        step_norms=dict(ORTHOGONAL_STEP_NORMS),
    ),
}


def _three_steps_train() -> TrainConfig:
    # d = 384 fits the orthogonal embeddings at T = 64 (3N + 2T = 323); 512 held-out sequences hold
    # about 1000 counter >= 2 targets
    return _gradient_train().replace(d_model=384, eval_batch_size=512)


@dataclass(frozen=True)
class ThreeStepsConfig:
    train: TrainConfig = field(
        default_factory=_three_steps_train
    )  # model, task, held-out batch (d raised to fit)
    per_position: int = 8  # theorem data: sequences per first-occurrence position (T − 2 of them) per step
    task_sequences: int = 4096  # task data: sequences per step
    variants: tuple[Variant, ...] = VARIANTS  # the settings to run, each a row of the result

    def __post_init__(self) -> None:
        _check_simplified_two_layers(self.train)
        if self.train.task.trigger_mode != "fixed":
            raise ValueError(
                f"--trigger-mode must be fixed (the theorem's data), got {self.train.task.trigger_mode!r}"
            )
        if self.train.optim.loss_on != "outputs":
            raise ValueError(
                f"--loss-on must be outputs (the theorem's loss), got {self.train.optim.loss_on!r}"
            )
        check_int("per_position", self.per_position, 1)
        check_int("task_sequences", self.task_sequences, 1)
        if not self.variants:
            raise ValueError("--variants needs at least one variant")
        for variant in self.variants:
            if variant not in VARIANTS:
                raise ValueError(f"--variants must be among {VARIANTS}, got {variant!r}")


@dataclass(frozen=True)
class VariantRun:
    """The three steps in one setting."""

    variant: str
    description: str
    data: str
    value_tokens: bool
    restrict: tuple[str, ...]  # the memories stepped on their theorem block only
    symmetric: bool
    d_model: int
    n_sequences: int  # sequences per gradient step
    seconds: float  # wall time of the three steps and their measurements
    records: list[StepRecord]  # the initial state, then the state after each step

    @property
    def recalls(self) -> list[float]:
        """R of the memory stepped, after each step."""
        return [r.probes[r.matrix] for r in self.records[1:]]

    @property
    def icl_acc(self) -> float:
        return self.records[-1].icl_acc

    def summary(self) -> str:
        return f"R = {', '.join(f'{v:.2f}' for v in self.recalls)}, icl {self.icl_acc:.3f}"


@dataclass(frozen=True)
class ThreeStepsResult(ExperimentResult):
    d_model: int
    seq_len: int
    target: float  # the in-context accuracy the construction should reach
    runs: list[VariantRun]

    def run(self, variant: str) -> VariantRun:
        return next(r for r in self.runs if r.variant == variant)

    def headline(self) -> str:
        rows = "; ".join(f"{r.variant}: {r.summary()}" for r in self.runs)
        return f"three gradient steps (orthogonal embeddings, d={self.d_model}, T={self.seq_len}): {rows}"


def plot_three_steps(result: ThreeStepsResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2, size=(6.0, 4.2))
    ax = axes[0][0]
    for run in result.runs:
        ax.plot(range(len(run.records)), [r.icl_acc for r in run.records], marker="o", label=run.variant)
    ax.axhline(result.target, color="gray", ls=":", lw=0.8)
    ax.set_xticks(range(4), ["init", *PAPER_ORDER])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("in-context accuracy")
    ax.set_title(f"after each step (d={result.d_model}, T={result.seq_len})", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0][1]
    keys = [*PAPER_ORDER, "icl"]
    width = 0.8 / len(result.runs)
    for i, run in enumerate(result.runs):
        values = [*run.recalls, run.icl_acc]
        ax.bar(
            [k + (i - (len(result.runs) - 1) / 2) * width for k in range(len(keys))],
            values,
            width,
            label=run.variant,
        )
    ax.set_xticks(range(len(keys)), ["R(W_OV2)", "R(W_KQ2)", "R(W_KQ1)", "icl acc"])
    ax.set_ylim(0, 1.05)
    ax.set_title("after the three steps", fontsize=9)
    return save_figure(fig, out_dir, "three_steps")


@register(
    "three-steps",
    family="theory",
    summary="3 gradient steps in the theorem's setting (a working induction head) and without each assumption",
    config=ThreeStepsConfig,
    plot=plot_three_steps,
    full=lambda: ThreeStepsConfig(per_position=64, task_sequences=16384),
    small=lambda: ThreeStepsConfig(
        train=_gradient_train().replace(d_model=32, seq_len=16, eval_batch_size=32),
        per_position=1,
        task_sequences=128,  # second occurrences are rare at T = 16
        variants=("theorem", "task-data"),
    ),
)
def run_three_steps(
    config: ThreeStepsConfig, out_dir: Path, *, log=print, progress: bool = True
) -> ThreeStepsResult:
    train = _orthogonal_train(config.train)
    T, d = train.task.seq_len, train.model.d_model
    runs = []
    for variant in config.variants:
        plan = VARIANT_PLANS[variant]
        n = config.per_position * (T - 2) if plan.data == "theorem" else config.task_sequences
        log(f"[three-steps] {variant} ({plan.description}): d={d}, T={T}, {n} sequences per step")
        start = time.perf_counter()
        records = run_gradient_steps(
            train,
            PAPER_ORDER,
            n_sequences=n,
            embeddings="orthogonal",
            step_norms=plan.step_norms,
            data=plan.data,
            value_tokens=plan.value_tokens,
            restrict=plan.restrict,
            symmetric=plan.symmetric,
            progress=log if progress else None,
        )
        seconds = time.perf_counter() - start
        options = {
            k: getattr(plan, k) for k in ("description", "data", "value_tokens", "restrict", "symmetric")
        }
        runs.append(
            VariantRun(variant=variant, **options, d_model=d, n_sequences=n, seconds=seconds, records=records)
        )
    return ThreeStepsResult(d_model=d, seq_len=T, target=THREE_STEPS_TARGET, runs=runs)


# ---------------------------------------------------------------------------------------------
# lemma: gradients as memories
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LemmaConfig:
    n_tokens: int = 64  # N, the number of input (and output) tokens
    d: int = 1024  # embedding dimension (the orthonormal run needs d >= N)
    eta: float = 1.0  # step size η
    samples_per_token: int = 200  # the sampled run draws this many times N inputs
    seed: int = 0  # seeds the embeddings, f* and the sampled inputs

    def __post_init__(self) -> None:
        check_int("n_tokens", self.n_tokens, 2)
        check_int("d", self.d, self.n_tokens)
        check_positive("eta", self.eta)
        check_int("samples_per_token", self.samples_per_token, 1)
        check_seed(self.seed)


@dataclass(frozen=True)
class LemmaRun:
    max_abs_error: float  # max |v_kᵀ W₁ u_z − (η/N) 1{f*(z)=k}|
    relative_error: float  # the same in units of η/N
    argmax_accuracy: float  # argmax_k v_kᵀ W₁ u_z = f*(z)
    n_samples: int  # 0: the exact population gradient
    measured: list[list[float]]  # [k][z] v_kᵀ W₁ u_z
    predicted: list[list[float]]  # [k][z] (η/N) 1{f*(z)=k}


@dataclass(frozen=True)
class LemmaResult(ExperimentResult):
    n_tokens: int
    d: int
    eta: float
    summary: dict[str, LemmaRun]  # population, sampled, orthonormal

    def headline(self) -> str:
        pop, n = self.summary["population"], self.n_tokens
        return (
            f"one population gradient step (N={n}, d={self.d}, η={self.eta}): "
            f"max |v_kᵀW₁u_z − (η/N)1{{f*(z)=k}}| = {pop.relative_error:.3f} η/N (sampled "
            f"{self.summary['sampled'].relative_error:.3f}, orthonormal "
            f"{self.summary['orthonormal'].relative_error:.4f} ≈ 1/N = {1 / n:.4f}); argmax accuracy "
            f"{pop.argmax_accuracy:.3f}"
        )


def plot_lemma(result: LemmaResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, len(result.summary), size=(4.2, 4.0))
    unit = result.eta / result.n_tokens
    for ax, (label, run) in zip(axes[0], result.summary.items()):
        predicted = [v / unit for row in run.predicted for v in row]
        measured = [v / unit for row in run.measured for v in row]
        ax.scatter(predicted, measured, s=4, alpha=0.4)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("predicted 1{f*(z)=k}  (units of η/N)")
        ax.set_ylabel("measured v_kᵀ W₁ u_z  (units of η/N)")
        ax.set_title(f"{label}: max err {run.relative_error:.3f}")
    return save_figure(fig, out_dir, "lemma")


@register(
    "lemma",
    family="theory",
    summary="one population gradient step: v_kᵀ W_1 u_z ≈ (η/N) 1{f*(z)=k}",
    config=LemmaConfig,
    plot=plot_lemma,
    full=lambda: LemmaConfig(n_tokens=100, d=4096),
    small=lambda: LemmaConfig(n_tokens=8, d=64),
)
def run_lemma(config: LemmaConfig, out_dir: Path, *, log=print, progress: bool = True) -> LemmaResult:
    n, d, eta, seed = config.n_tokens, config.d, config.eta, config.seed
    runs = {
        "population": lemma_one_step(n, d, eta, seed=seed),
        "sampled": lemma_one_step(n, d, eta, n_samples=config.samples_per_token * n, seed=seed),
        "orthonormal": lemma_one_step(n, d, eta, seed=seed, orthonormal=True),
    }
    summary = {
        label: LemmaRun(
            max_abs_error=r.max_abs_error,
            relative_error=r.relative_error,
            argmax_accuracy=r.argmax_accuracy,
            n_samples=r.n_samples,
            measured=r.measured.tolist(),
            predicted=r.predicted.tolist(),
        )
        for label, r in runs.items()
    }
    return LemmaResult(n_tokens=n, d=d, eta=eta, summary=summary)


# ---------------------------------------------------------------------------------------------
# noisy-lemma: gradients as memories with noisy inputs x = u_y + n_t
# ---------------------------------------------------------------------------------------------

NOISY_WIDTHS = (128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class NoisyLemmaConfig:
    n_tokens: int = 64  # N, the number of labels y (and input embeddings u_y)
    n_noise: int = 64  # T, the number of noise embeddings n_t (e.g. positions)
    d: int = 1024  # embedding dimension (the orthonormal run needs d >= N + T)
    eta: float = 1.0  # step size η
    samples_per_token: int = 200  # the sampled run draws this many times N pairs (y, t)
    widths: tuple[int, ...] = NOISY_WIDTHS  # d of the width sweep (N(0, I/d) embeddings, population step)
    seed: int = 0  # seeds the embeddings and the sampled pairs

    def __post_init__(self) -> None:
        check_int("n_tokens", self.n_tokens, 2)
        check_int("n_noise", self.n_noise, 1)
        check_int("d", self.d, self.n_tokens + self.n_noise)
        check_positive("eta", self.eta)
        check_int("samples_per_token", self.samples_per_token, 1)
        if not self.widths:
            raise ValueError("--widths needs at least one width")
        for width in self.widths:
            check_int("widths", width, 1)
        check_seed(self.seed)


@dataclass(frozen=True)
class NoisyLemmaRun:
    max_abs_error: float  # max over (k, y, t) of |v_kᵀ W₁ x − (η/N) 1{k=y}|, x = u_y + n_t
    relative_error: float  # the same in units of η/N
    argmax_accuracy: float  # argmax_k v_kᵀ W₁ x = y, over every (y, t)
    noise_spread: float  # max over (k, y) of max_t − min_t of the score, in units of η/N
    formula_error: float  # max |measured − (η/N) Σ_j v_kᵀv_j (u_j − ū)ᵀ x| in units of η/N
    n_samples: int  # 0: the exact population gradient
    measured: list[list[float]]  # [k][y] v_kᵀ W₁ (u_y + n_t), mean over t
    spread: list[list[float]]  # [k][y] max_t − min_t of v_kᵀ W₁ (u_y + n_t)
    predicted: list[list[float]]  # [k][y] (η/N) 1{k=y}


@dataclass(frozen=True)
class NoisyWidth:
    d: int
    relative_error: float  # population step, N(0, I/d) embeddings
    noise_spread: float


@dataclass(frozen=True)
class NoisyLemmaResult(ExperimentResult):
    n_tokens: int
    n_noise: int
    d: int
    eta: float
    summary: dict[str, NoisyLemmaRun]  # population, sampled, orthonormal
    widths: list[NoisyWidth]  # the width sweep
    slope: float  # log-log slope of the cross-talk (relative error − 1/N) against d; theory −1/2

    def headline(self) -> str:
        pop, n = self.summary["population"], self.n_tokens
        return (
            f"one population step on x = u_y + n_t (N={n}, T={self.n_noise}, d={self.d}, η={self.eta}): "
            f"max |v_kᵀW₁x − (η/N)1{{k=y}}| = {pop.relative_error:.3f} η/N (sampled "
            f"{self.summary['sampled'].relative_error:.3f}, orthonormal "
            f"{self.summary['orthonormal'].relative_error:.4f} ≈ 1/N = {1 / n:.4f}); the noise moves a score "
            f"by {pop.noise_spread:.3f} η/N (orthonormal {self.summary['orthonormal'].noise_spread:.1e}); "
            f"cross-talk ∝ d^{self.slope:.2f} (theory −0.5); argmax accuracy {pop.argmax_accuracy:.3f}"
        )


def plot_noisy_lemma(result: NoisyLemmaResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, len(result.summary) + 1, size=(4.2, 4.0))
    unit = result.eta / result.n_tokens
    for ax, (label, run) in zip(axes[0], result.summary.items()):
        predicted = [v / unit for row in run.predicted for v in row]
        measured = [v / unit for row in run.measured for v in row]
        spread = [v / unit / 2 for row in run.spread for v in row]
        ax.errorbar(predicted, measured, yerr=spread, fmt="o", ms=2, alpha=0.4, elinewidth=0.5)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("predicted 1{k=y}  (units of η/N)")
        ax.set_ylabel("measured v_kᵀ W₁ (u_y + n_t)  (η/N; bar: range over t)")
        ax.set_title(f"{label}: max err {run.relative_error:.3f}", fontsize=9)
    ax = axes[0][-1]
    ds = [w.d for w in result.widths]
    ax.plot(ds, [w.relative_error for w in result.widths], "o-", label="max error")
    ax.plot(ds, [w.noise_spread for w in result.widths], "s-", label="noise spread over t")
    ref = result.widths[0].relative_error
    ax.plot(ds, [ref * (d / ds[0]) ** -0.5 for d in ds], "k:", label="∝ d^-1/2")
    ax.axhline(1 / result.n_tokens, color="gray", ls="--", lw=0.8, label="1/N (orthonormal)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.minorticks_off()
    ax.set_xticks(ds, [str(d) for d in ds])
    ax.set_xlabel("d")
    ax.set_ylabel("units of η/N")
    ax.set_title(f"N(0, I/d) embeddings: slope {result.slope:.2f}", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "noisy_lemma")


def _crosstalk_slope(widths: list[NoisyWidth], n_tokens: int) -> float:
    """Least-squares slope of log(relative error − 1/N) against log d (nan with < 2 widths)."""
    floor = 1 / n_tokens  # the exact O(η/N²) term, the error left at infinite width
    points = [(math.log(w.d), math.log(w.relative_error - floor)) for w in widths if w.relative_error > floor]
    if len({x for x, _ in points}) < 2:
        return math.nan
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


@register(
    "noisy-lemma",
    family="theory",
    summary="one population gradient step on x = u_y + n_t: v_kᵀ W_1 x ≈ (η/N) 1{k=y}",
    config=NoisyLemmaConfig,
    plot=plot_noisy_lemma,
    full=lambda: NoisyLemmaConfig(n_tokens=100, n_noise=100, d=4096),
    small=lambda: NoisyLemmaConfig(n_tokens=8, n_noise=8, d=64, widths=(32, 128)),
)
def run_noisy_lemma(
    config: NoisyLemmaConfig, out_dir: Path, *, log=print, progress: bool = True
) -> NoisyLemmaResult:
    n, T, d, eta, seed = config.n_tokens, config.n_noise, config.d, config.eta, config.seed
    runs = {
        "population": noisy_lemma_one_step(n, T, d, eta, seed=seed),
        "sampled": noisy_lemma_one_step(n, T, d, eta, n_samples=config.samples_per_token * n, seed=seed),
        "orthonormal": noisy_lemma_one_step(n, T, d, eta, seed=seed, orthonormal=True),
    }
    summary = {
        label: NoisyLemmaRun(
            max_abs_error=r.max_abs_error,
            relative_error=r.relative_error,
            argmax_accuracy=r.argmax_accuracy,
            noise_spread=r.noise_spread,
            formula_error=r.formula_error,
            n_samples=r.n_samples,
            measured=r.measured.mean(dim=2).tolist(),
            spread=(r.measured.amax(dim=2) - r.measured.amin(dim=2)).tolist(),
            predicted=r.predicted[:, :, 0].tolist(),
        )
        for label, r in runs.items()
    }
    widths = []
    for width in config.widths:
        r = noisy_lemma_one_step(n, T, width, eta, seed=seed)
        widths.append(NoisyWidth(width, r.relative_error, r.noise_spread))
        if progress:
            log(
                f"[noisy-lemma] d={width}: max error {r.relative_error:.4f} η/N, noise spread {r.noise_spread:.4f}"
            )
    return NoisyLemmaResult(
        n_tokens=n, n_noise=T, d=d, eta=eta, summary=summary, widths=widths, slope=_crosstalk_slope(widths, n)
    )
