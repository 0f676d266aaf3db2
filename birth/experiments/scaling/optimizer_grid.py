"""The optimizer grid of *Scaling Laws for Associative Memories* (section 5 and its appendix) at the
reference's grid, and a table that checks the seed's four training claims as measured ratios.

Task: N = 100 tokens, Zipf α = 2, M = 5 classes, f*(x) = x mod 5; T samples seen once (T / batch
steps); error = the exact Σ_x p(x) 1{wrong}. Models (embeddings N(0, I/d), drawn per seed), all
a linear memory h = W z(x) read out by logits = Uᵀ h:
  - matrix:  z(x) = e_x, W (d × d) trained, E and U fixed;
  - learned: the same with E and U trained too;
  - relu:    the ReLU-thresholded memory of the talk *Associative Memory with Heavy-Tailed Data*
             (Bietti, Cabannes et al.), trainable: z(x) = φ(x) with φ(x)_x' = ReLU(k_x'ᵀ k_x − η) over
             the N stored keys k = e / ‖e‖, and W = V (d × N).
             V = Σ_x' q(x') u_{f*(x')} 1_x'ᵀ is the talk's u_yᵀ Σ_x' q(x') u_{f*(x')} ReLU(e_x'ᵀ e_x − η);
             the threshold removes the cross-talk of nearly orthogonal keys, so its capacity grows
             exponentially with d (birth/memories/hopfield.py measures it for the stored-scheme version).
  The models are the feature maps of training/memories.py, which trains them.
  with h → LayerNorm(h) (no affine) when `layer_norm`. W starts with N(0, 1/d) entries, as in the
  reference (from W = 0, LayerNorm's first gradient is amplified by 1/√eps and stalls training).
  Optimizers: SGD, and a real Adam (β = (0.9, 0.999)) whose step is lr / d on W (lr / √d on V and
  the embeddings), the reference's scaling.

Runs of one (model, optimizer, LayerNorm, d, lr, batch) read the first T samples of one stream per
seed, for every T of the grid at once (the error after T samples is the error at step T / batch of
the longest run: a constant step size makes the shorter runs its prefixes); all seeds train side by
side. Every setting sees the same samples, embeddings and initial W, so the comparisons of the
claims table are paired. The reference grid is `full()`; `scripts/grids/optimizer_grid.yaml` splits
it into `birth grid` points and `python -m birth.experiments.scaling.optimizer_grid combine RESULTS.jsonl`
merges them into one table.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from birth.base.io import atomic_write_json, new_figure, save_figure
from birth.base.runtime import Device, resolve_device, torch_threads
from birth.base.validate import Choices, Float, Floats, Int, Ints, Validated
from birth.experiments.common import Seed
from birth.experiments.grid import read_results
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.scaling.common import Alpha, NumInputs, NumOutputs, check_threads
from birth.memories.problem import from_task, sample_batches
from tasks.zipf import ZipfAssociations
from training.memories import FEATURE_MAPS, FeatureMap, Init, MemoryTrainConfig, train_memory

GridOptimizer = Literal["sgd", "adam"]
# every feature map but the mlp memory (its capacity is measured by capacity-vs-parameters)
MODELS: tuple[str, ...] = tuple(m for m in FEATURE_MAPS if m != "mlp")
GRID_OPTIMIZERS: tuple[str, ...] = get_args(GridOptimizer)

# The reference's numbers (reference-facts.md): SGD, batch 64, matrix memory without LayerNorm,
# error at d = 10 and d = 1000 for lr 0.1 and 100 (the T is not stated).
REFERENCE_SGD_B64 = {(0.1, 10): 0.168, (0.1, 1000): 0.046, (100.0, 10): 0.031, (100.0, 1000): 0.002}
REFERENCE_DIMS = (10, 20, 50, 100, 200, 500, 1000)  # the reference grid's d


@dataclass(frozen=True)
class OptimizerGridConfig(Validated):
    num_inputs: NumInputs = 100  # N, tokens (Zipf law)
    num_outputs: NumOutputs = 5  # M, classes: f*(x) = x mod M
    alpha: Alpha = 2.0  # Zipf exponent
    dims: Annotated[tuple[int, ...], Ints(distinct=True)] = (10, 100)  # memory widths d
    # learning rates (Adam: divided by d, or √d for relu)
    lrs: Annotated[tuple[float, ...], Floats(0.0, open_low=True, distinct=True)] = (0.1, 1.0, 10.0, 100.0)
    batch_sizes: Annotated[tuple[int, ...], Ints(distinct=True)] = (16, 64, 256, 1024)  # samples per step
    num_samples: Annotated[tuple[int, ...], Ints(distinct=True)] = (1024, 10240)  # T, samples seen once
    layer_norms: Annotated[tuple[bool, ...], Choices((False, True))] = (False, True)  # LayerNorm on h(x)
    # SGD, Adam (β = 0.9, 0.999)
    optimizers: Annotated[tuple[GridOptimizer, ...], Choices(GRID_OPTIMIZERS)] = ("sgd", "adam")
    # memories (see the module doc)
    models: Annotated[tuple[FeatureMap, ...], Choices(MODELS)] = ("matrix", "learned", "relu")
    seeds: Annotated[int, Int(1)] = 3  # independent trials (data and embeddings), trained side by side
    relu_threshold: Annotated[float, Float(0.0, 1.0, open_high=True)] = 0.5  # η of the relu memory
    init: Init = "gaussian"  # W at step 0: N(0, 1/d) entries (the reference's) or 0
    seed: Seed = 0  # seeds every draw
    threads: int | None = None  # torch CPU threads (default: as set, e.g. by `birth grid` per job)
    device: Device = "cpu"  # where to compute (auto: cuda if available)

    def __post_init__(self) -> None:
        super().__post_init__()
        for t in self.num_samples:
            for b in self.batch_sizes:
                if t % b:
                    raise ValueError(
                        f"--num-samples {t} is not a multiple of --batch-sizes {b} (T / batch steps)"
                    )
        check_threads(self.threads)


# --------------------------------------------------------------------------------------------
# the grid


@dataclass(frozen=True)
class GridRun:
    """The error of one setting after T samples, over the seeds."""

    model: str
    optimizer: str
    layer_norm: bool
    d: int
    lr: float
    batch_size: int
    num_samples: int  # T
    error_mean: float
    error_std: float
    errors: list[float]  # per seed


@dataclass(frozen=True)
class Claim:
    """One claim as a ratio of summed errors over paired settings (> 1: the claim holds)."""

    claim: str
    comparison: str  # what is compared, "worse / better"
    settings: int  # paired settings compared
    error_against: float | None  # mean error of the side the claim says is worse
    error_for: float | None  # mean error of the side the claim says is better
    ratio: float | None  # error_against / error_for (None: not measurable; inf: error_for = 0)
    wins: float | None  # fraction of settings where the claimed-better side is lower (ties: half)
    by: dict[str, float | None]  # the ratio within each model and each optimizer


@dataclass(frozen=True)
class OptimizerGridResult(ExperimentResult):
    runs: list[GridRun]
    claims: list[Claim]
    reference: list[dict[str, Any]]  # SGD batch 64 matrix memory vs the reference's numbers
    seeds: int
    seconds: float  # training wall time

    @classmethod
    def from_runs(cls, runs: list[GridRun], seeds: int, seconds: float) -> OptimizerGridResult:
        return cls(runs, claims_of(runs), reference_rows(runs), seeds, seconds)

    def headline(self) -> str:
        parts = [
            f"{SHORT.get(c.claim, c.claim)} {'n/a' if c.ratio is None else f'x{c.ratio:.3g}'}"
            for c in self.claims
        ]
        return f"{len(self.runs)} settings; claims (worse/better error ratio, > 1 holds): " + ", ".join(parts)


SHORT = {
    "large learning rates are better": "large lr",
    "small batches are better": "small batch",
    "Adam works best": "Adam",
    "LayerNorm helps": "LayerNorm (best lr)",
    "LayerNorm helps (same lr)": "LayerNorm (same lr)",
}


def _pairs(
    index: dict[tuple, float], axis: int, against: Any, better: Any
) -> list[tuple[tuple, float, float]]:
    """(setting, error on the `against` side, error on the `better` side) for every setting with both."""
    out = []
    for key, value in index.items():
        if key[axis] != better:
            continue
        other = key[:axis] + (against,) + key[axis + 1 :]
        if other in index:
            out.append((key, index[other], value))
    return out


def _claim(name: str, comparison: str, pairs: list[tuple[tuple, float, float]]) -> Claim:
    def ratio(subset: list[tuple[tuple, float, float]]) -> float | None:
        if not subset:
            return None
        worse, better = sum(p[1] for p in subset), sum(p[2] for p in subset)
        if better == 0:
            return math.inf if worse > 0 else None
        return worse / better

    by: dict[str, float | None] = {}
    for label in MODELS + GRID_OPTIMIZERS:
        subset = [p for p in pairs if label in p[0][:2]]  # key[0] is the model, key[1] the optimizer
        if subset:
            by[label] = ratio(subset)
    n = len(pairs)
    return Claim(
        claim=name,
        comparison=comparison,
        settings=n,
        error_against=sum(p[1] for p in pairs) / n if n else None,
        error_for=sum(p[2] for p in pairs) / n if n else None,
        ratio=ratio(pairs),
        wins=(sum(1.0 if p[2] < p[1] else 0.5 if p[2] == p[1] else 0.0 for p in pairs) / n) if n else None,
        by=by,
    )


def claims_of(runs: list[GridRun]) -> list[Claim]:
    """The seed's four claims: large learning rates, small batches, Adam, LayerNorm (LayerNorm twice:
    each side at its best learning rate, and paired at the same learning rate)."""
    # key: (model, optimizer, layer_norm, d, lr, batch, T), in sorted order so that the sums do
    # not depend on the order of the runs (a grid merged from its points gives the same table)
    index = dict(
        sorted(
            ((r.model, r.optimizer, r.layer_norm, r.d, r.lr, r.batch_size, r.num_samples), r.error_mean)
            for r in runs
        )
    )
    lrs = sorted({r.lr for r in runs})
    batches = sorted({r.batch_size for r in runs})
    claims = []
    claims.append(
        _claim(
            "large learning rates are better",
            f"lr {lrs[0]:g} / lr {lrs[-1]:g}",
            _pairs(index, 4, lrs[0], lrs[-1]) if len(lrs) > 1 else [],
        )
    )
    claims.append(
        _claim(
            "small batches are better",
            f"batch {batches[-1]} / batch {batches[0]} (same T)",
            _pairs(index, 5, batches[-1], batches[0]) if len(batches) > 1 else [],
        )
    )
    # the optimizer and LayerNorm claims compare each side at its own best learning rate
    best: dict[tuple, float] = {}
    for key, value in index.items():
        setting = key[:4] + key[5:]
        best[setting] = min(value, best.get(setting, math.inf))
    claims.append(
        _claim("Adam works best", "SGD / Adam (each at its best lr)", _pairs(best, 1, "sgd", "adam"))
    )
    claims.append(
        _claim(
            "LayerNorm helps", "no LayerNorm / LayerNorm (each at its best lr)", _pairs(best, 2, False, True)
        )
    )
    claims.append(
        _claim(
            "LayerNorm helps (same lr)", "no LayerNorm / LayerNorm (same lr)", _pairs(index, 2, False, True)
        )
    )
    return claims


def reference_rows(runs: list[GridRun]) -> list[dict[str, Any]]:
    """Our SGD batch-64 matrix-memory errors (no LayerNorm) next to the reference's numbers."""
    rows = []
    for r in runs:
        key = (r.lr, r.d)
        if (r.model, r.optimizer, r.layer_norm, r.batch_size) == (
            "matrix",
            "sgd",
            False,
            64,
        ) and key in REFERENCE_SGD_B64:
            rows.append(
                {
                    "lr": r.lr,
                    "d": r.d,
                    "T": r.num_samples,
                    "error": r.error_mean,
                    "std": r.error_std,
                    "reference": REFERENCE_SGD_B64[key],
                }
            )
    return sorted(rows, key=lambda row: (row["lr"], row["d"], row["T"]))


def run_grid(config: OptimizerGridConfig, *, log=print, progress: bool = True) -> list[GridRun]:
    """Every setting of `config`, trained; one GridRun per (setting, T)."""
    from tqdm import tqdm

    device = resolve_device(config.device)
    task = ZipfAssociations(config.num_inputs, config.num_outputs, config.alpha)
    t_max = max(config.num_samples)
    # one stream of t_max samples per seed, cut into steps of each batch size
    batches = {
        b: sample_batches(task.probs(), config.seeds, t_max // b, b, config.seed) for b in config.batch_sizes
    }
    settings = list(
        itertools.product(
            config.models, config.optimizers, config.layer_norms, config.dims, config.lrs, config.batch_sizes
        )
    )
    runs = []
    for model, opt, ln, d, lr, b in tqdm(
        settings, desc="optimizer grid", disable=not progress, mininterval=5
    ):
        train = MemoryTrainConfig(
            opt,
            lr,
            b,
            t_max // b,
            layer_norm=ln,
            features=model,
            relu_threshold=config.relu_threshold,
            init=config.init,
            adam_scaling="width",
            eval_steps=tuple(t // b for t in config.num_samples),
        )
        problem = from_task(task, d, config.seeds, seed=config.seed, device=device)
        out = train_memory(problem, train, seed=config.seed, batches=batches[b])
        column = {int(s): i for i, s in enumerate(out.steps.tolist())}
        for t in config.num_samples:
            errors = out.error[column[t // b]]
            runs.append(
                GridRun(
                    model,
                    opt,
                    ln,
                    d,
                    float(lr),
                    b,
                    t,
                    errors.mean().item(),
                    errors.std(unbiased=False).item(),
                    errors.tolist(),
                )
            )
    return runs


def format_claims(result: OptimizerGridResult) -> list[str]:
    """The claims table as Markdown lines."""
    labels = [label for label in MODELS + GRID_OPTIMIZERS if any(label in c.by for c in result.claims)]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else "∞" if value == math.inf else f"{value:.3g}"

    lines = [
        "| claim | compared (worse / better) | settings | mean errors | ratio | wins | "
        + " | ".join(labels)
        + " |",
        "|---" * (6 + len(labels)) + "|",
    ]
    for c in result.claims:
        errors = "n/a" if c.error_for is None else f"{c.error_against:.4f} / {c.error_for:.4f}"
        lines.append(
            f"| {c.claim} | {c.comparison} | {c.settings} | {errors} | {fmt(c.ratio)} | "
            f"{'n/a' if c.wins is None else f'{c.wins:.2f}'} | "
            + " | ".join(fmt(c.by.get(k)) for k in labels)
            + " |"
        )
    return lines


def format_reference(result: OptimizerGridResult) -> list[str]:
    if not result.reference:
        return []
    lines = ["| lr | d | T | error (mean ± std) | reference |", "|---|---|---|---|---|"]
    for row in result.reference:
        lines.append(
            f"| {row['lr']:g} | {row['d']} | {row['T']} | {row['error']:.4f} ± {row['std']:.4f} | {row['reference']} |"
        )
    return lines


def plot_optimizer_grid(result: OptimizerGridResult, out_dir: Path) -> list[Path]:
    """Error vs d (vs the batch size when there is one d) per model (rows) and optimizer ×
    LayerNorm (columns), one line per learning rate; batch 64 (or the smallest), T = 10240 (the
    reference script's default, where its quoted numbers match ours) or the largest T."""
    runs = result.runs
    models = [m for m in MODELS if any(r.model == m for r in runs)]
    combos = [
        (o, ln)
        for o in GRID_OPTIMIZERS
        for ln in (False, True)
        if any((r.optimizer, r.layer_norm) == (o, ln) for r in runs)
    ]
    dims = sorted({r.d for r in runs})
    batches = sorted({r.batch_size for r in runs})
    batch = 64 if 64 in batches else batches[0]
    samples = {r.num_samples for r in runs}
    t_plot = 10240 if 10240 in samples else max(samples)  # the reference script's default T
    by_d = len(dims) > 1
    fig, axes = new_figure(len(models), len(combos), (3.2, 2.6))
    for i, model in enumerate(models):
        for j, (opt, ln) in enumerate(combos):
            ax = axes[i][j]
            for lr in sorted({r.lr for r in runs}):
                sel = sorted(
                    (
                        r
                        for r in runs
                        if (r.model, r.optimizer, r.layer_norm, r.lr, r.num_samples)
                        == (model, opt, ln, lr, t_plot)
                        and (not by_d or r.batch_size == batch)
                    ),
                    key=lambda r: (r.d, r.batch_size),
                )
                if not sel:
                    continue
                xs = [r.d if by_d else r.batch_size for r in sel]
                ax.errorbar(
                    xs,
                    [r.error_mean for r in sel],
                    yerr=[r.error_std for r in sel],
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=f"lr {lr:g}",
                )
            if by_d and (model, opt, ln) == ("matrix", "sgd", False):
                for lr in (0.1, 100.0):
                    ref = [
                        (d, REFERENCE_SGD_B64[(lr, d)]) for d in (10, 1000) if (lr, d) in REFERENCE_SGD_B64
                    ]
                    ax.plot(*zip(*ref), "k*", ms=7, label="reference" if lr == 0.1 else None)
            ax.set(xscale="log", title=f"{model}, {opt}{' + LN' if ln else ''}")
            ax.title.set_fontsize(8)
            if i == len(models) - 1:
                ax.set_xlabel("d" + (f" (batch {batch})" if by_d else "") if by_d else "batch size")
            if j == 0:
                ax.set_ylabel(f"error after T={t_plot}")
    axes[0][0].legend(fontsize=6)
    return save_figure(fig, out_dir, "optimizer_grid")


@register(
    "optimizer-grid",
    family="scaling",
    summary="lr x batch x T x LayerNorm x {SGD, Adam} x {matrix, learned, relu} memories; the seed's four claims as ratios",
    config=OptimizerGridConfig,
    plot=plot_optimizer_grid,
    full=lambda: OptimizerGridConfig(
        dims=REFERENCE_DIMS, num_samples=(1024, 10240, 102400), seeds=10, device="auto"
    ),
    small=lambda: OptimizerGridConfig(
        dims=(10,),
        lrs=(0.1, 10.0),
        batch_sizes=(16, 64),
        num_samples=(256, 1024),
        seeds=2,
    ),
)
def run_optimizer_grid(
    config: OptimizerGridConfig, out_dir: Path, *, log=print, progress: bool = True
) -> OptimizerGridResult:
    log(
        f"optimizer grid: N={config.num_inputs}, M={config.num_outputs}, alpha={config.alpha:g}; models "
        f"{list(config.models)}, {list(config.optimizers)}, LayerNorm {list(config.layer_norms)}, d {list(config.dims)}, "
        f"lr {list(config.lrs)}, batch {list(config.batch_sizes)}, T {list(config.num_samples)}, {config.seeds} seeds"
    )
    started = time.perf_counter()
    with torch_threads(config.threads):
        runs = run_grid(config, log=log, progress=progress)
    result = OptimizerGridResult.from_runs(runs, config.seeds, time.perf_counter() - started)
    for line in format_claims(result) + [""] + format_reference(result):
        log(line)
    return result


# --------------------------------------------------------------------------------------------
# merging the points of a `birth grid` run


def combine(results_files: Iterable[str | Path]) -> OptimizerGridResult:
    """One result from the "ok" lines of optimizer-grid points in `birth grid` results files
    (the latest line of a point wins; a setting measured twice keeps its latest value)."""
    runs: dict[tuple, GridRun] = {}
    seeds, seconds = set(), 0.0
    for path in results_files:
        rows = read_results(Path(path))
        if not rows:
            raise ValueError(f"{path}: no results")
        for row in rows:
            if row.get("status") != "ok" or not str(row.get("experiment", "")).endswith("optimizer-grid"):
                continue
            result = row["result"]
            seeds.add(result["seeds"])
            seconds += result["seconds"] or 0.0
            for run in result["runs"]:
                r = GridRun(**run)
                runs[(r.model, r.optimizer, r.layer_norm, r.d, r.lr, r.batch_size, r.num_samples)] = r
    if not runs:
        raise ValueError("no finished optimizer-grid point in the results")
    return OptimizerGridResult.from_runs(list(runs.values()), min(seeds), seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m birth.experiments.scaling.optimizer_grid",
        description="merge the points of an optimizer-grid `birth grid` run into one table and figure",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("combine", help="merge results.jsonl files")
    merge.add_argument("results", nargs="+", type=Path, help="results.jsonl of `birth grid`")
    merge.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write result.json and the figure (default: next to the first results file)",
    )
    args = parser.parse_args(argv)
    try:
        result = combine(args.results)
    except ValueError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.results[0].parent
    print(
        f"wrote {atomic_write_json(out / 'combined.json', {'experiment': 'optimizer-grid', 'result': result})}"
    )
    plot_optimizer_grid(result, out)
    for line in format_claims(result) + [""] + format_reference(result):
        print(line)
    print(result.headline())
    return 0


if __name__ == "__main__":
    sys.exit(main())
