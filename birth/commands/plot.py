"""`birth plot RUN_DIR [RUN_DIR ...]`: the learning-order figure (the paper's Fig. 3).

The memory-recall probes and the in-context accuracy against the training step, on one figure,
with a vertical mark where each probe first reaches the threshold (0.9). Several run directories
(e.g. seeds) are averaged: mean ± std bands, crossing marks at the mean crossing step.
Writes learning_order.png, learning_order.pdf and learning_order.json into --out
(default: RUN_DIR/plots for one run, the runs' common parent /plots for several). An earlier figure
is replaced only with --overwrite, except in one run's own RUN_DIR/plots (re-made, and said so).
Malformed lines of a metrics.jsonl are skipped, each named on stderr with its file and line number.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birth.base.curves import first_crossing
from birth.base.io import check_writable, refuse_replacing, save_figure
from birth.cli import parse_args
from tasks.markov_icl import KL, KL_BIGRAM
from tasks.triggered_bigram import ICL_ACC
from training.logger import report_skipped, scan_metrics

ICL_KEY = ICL_ACC
# colours of the paper's Fig. 3 order of appearance; W_OV is the 1-layer model's only probe
PROBE_COLORS = {"W_OV2": "tab:blue", "W_KQ2": "tab:orange", "W_KQ1": "tab:green", "W_OV": "tab:blue"}


@dataclass
class RunCurves:
    run_dir: Path
    steps: np.ndarray  # [S] eval steps
    curves: dict[str, np.ndarray]  # metric key -> [S]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories (with metrics.jsonl)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: RUN_DIR/plots, or COMMON_PARENT/plots for several runs)",
    )
    p.add_argument(
        "--threshold", type=float, default=0.9, help="probe level marked as 'learned' (default: 0.9)"
    )
    p.add_argument("--name", default="learning_order", help="file name stem (default: learning_order)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier figure in --out (a single run's default RUN_DIR/plots is re-made)",
    )


def read_run(run_dir: Path) -> RunCurves:
    """A run's evaluation rows; each malformed line is named on stderr (file and line number), and
    a file with no readable row is refused with the reason of its first line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    intact, skipped = scan_metrics(path)
    if not intact and skipped:
        first = skipped[0]
        if first.reason.startswith("not UTF-8 text"):
            raise ValueError(f"{path} is {first.reason}")
        raise ValueError(f"{path} holds no readable row (line {first.number}: {first.reason})")
    report_skipped(skipped)
    # an evaluation row: in-context accuracy (triggered-bigram) or the strategy distances (markov-icl)
    rows = [r for r in intact if ICL_KEY in r or KL_BIGRAM in r]
    if not rows:
        raise ValueError(f"{path} holds no evaluation rows")
    rows.sort(key=lambda r: r["step"])
    keys = [k for k in rows[0] if k.startswith("probes/")] + [ICL_KEY] * (ICL_KEY in rows[0])
    keys += [k for k in rows[0] if k.startswith(KL)]  # KL(strategy ‖ model), plotted on their own axis

    def value(row: dict, key: str) -> float:
        v = row.get(key)
        return float("nan") if v is None else float(v)

    return RunCurves(
        run_dir=Path(run_dir),
        steps=np.array([r["step"] for r in rows]),
        curves={k: np.array([value(r, k) for r in rows]) for k in keys},
    )


def align(runs: list[RunCurves]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Steps common to every run and, per metric, a [n_runs, S] array on those steps."""
    keys = list(runs[0].curves)
    for run in runs[1:]:
        if list(run.curves) != keys:
            raise ValueError(
                f"runs log different probes: {runs[0].run_dir} has {keys}, {run.run_dir} has {list(run.curves)} "
                "(1- and 2-layer runs cannot share a figure)"
            )
    steps = runs[0].steps
    for run in runs[1:]:
        steps = np.intersect1d(steps, run.steps)
    if len(steps) == 0:
        raise ValueError("the runs share no evaluation step; plot them separately")
    stacked = {}
    for key in keys:
        stacked[key] = np.stack([run.curves[key][np.isin(run.steps, steps)] for run in runs])
    return steps, stacked


def crossing_steps(steps: np.ndarray, runs_values: np.ndarray, threshold: float) -> list[int | None]:
    return [first_crossing(steps, values, threshold) for values in runs_values]


def default_out_dir(run_dirs: list[Path]) -> Path:
    if len(run_dirs) == 1:
        return run_dirs[0] / "plots"
    return Path(os.path.commonpath([str(p.resolve()) for p in run_dirs])) / "plots"


def plot_learning_order(steps: np.ndarray, stacked: dict[str, np.ndarray], threshold: float, title: str):
    """The figure (a matplotlib Figure, no pyplot state) and the crossing steps of every probe."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    crossings: dict[str, dict] = {}
    n_runs = next(iter(stacked.values())).shape[0]
    distances = {k: v for k, v in stacked.items() if k.startswith(KL)}
    if distances:
        _plot_distances(ax.twinx(), steps, distances)
    for key, values in stacked.items():
        if key in distances:
            continue
        is_probe = key.startswith("probes/")
        name = key.removeprefix("probes/") if is_probe else "in-context accuracy"
        color = PROBE_COLORS.get(name, "black") if is_probe else "black"
        mean = np.nanmean(values, axis=0)
        ax.plot(
            steps,
            mean,
            color=color,
            lw=2 if is_probe else 1.5,
            ls="-" if is_probe else "--",
            label=f"$R$({name})" if is_probe else name,
        )
        if n_runs > 1:
            std = np.nanstd(values, axis=0)
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        if not is_probe:
            continue
        per_run = crossing_steps(steps, values, threshold)
        reached = [s for s in per_run if s is not None]
        crossings[name] = {
            "per_run": per_run,
            "mean": float(np.mean(reached)) if reached else None,
            "std": float(np.std(reached)) if reached else None,
            "n_reached": len(reached),
        }
        if reached:
            # one mark per probe at the mean crossing step; its spread across runs as a band
            at = float(np.mean(reached))
            ax.axvline(at, color=color, ls=":", lw=1.5)
            if len(reached) > 1:
                ax.axvspan(min(reached), max(reached), color=color, alpha=0.08, lw=0)
            ax.annotate(
                f"{name} ≥ {threshold:g}",
                xy=(at, 0.02),
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=7,
                color=color,
                ha="right",
                va="bottom",
            )
    ax.axhline(threshold, color="grey", lw=0.6, ls="-", alpha=0.5)
    ax.set_xlabel("training step")
    ax.set_ylabel("memory recall / accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1)
    ax.set_title(title)
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, crossings


def _plot_distances(ax, steps: np.ndarray, distances: dict[str, np.ndarray]) -> None:
    """The mean KL of the model to each strategy (`tasks.markov_icl`) on a log axis."""
    for key, values in distances.items():
        ax.plot(steps, np.nanmean(values, axis=0), lw=1.2, ls="-.", label=f"KL to {key.removeprefix(KL)}")
    ax.set_yscale("log")
    ax.set_ylabel("KL(strategy ‖ model) (nats)")
    ax.legend(loc="upper right", fontsize=8)


def _crossing_text(name: str, c: dict, n_runs: int) -> str:
    if c["mean"] is None:
        return f"{name}: never reached"
    if n_runs == 1:
        return f"{name}: step {c['per_run'][0]}"
    missing = f", {n_runs - c['n_reached']} run(s) never" if c["n_reached"] < n_runs else ""
    return f"{name}: step {c['mean']:.0f} ± {c['std']:.0f}{missing}"


def run(argv: list[str], prog: str) -> int:
    return execute(parse_args(add_arguments, argv, prog, __doc__))


def execute(args: argparse.Namespace) -> int:
    if not 0 < args.threshold <= 1:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    if not args.name or "/" in args.name or os.sep in args.name:
        raise ValueError(f"--name must be a plain file name stem, got {args.name!r}")
    out_dir = args.out if args.out is not None else default_out_dir(args.run_dirs)
    runs = [read_run(d) for d in args.run_dirs]  # bad input fails here, before anything is written
    check_writable(out_dir, "--out")
    steps, stacked = align(runs)
    # a folder the user named (or several runs' common parent) keeps its files unless --overwrite;
    # one run's RUN_DIR/plots is the run's own
    refuse_replacing(
        out_dir,
        [f"{args.name}.{ext}" for ext in ("png", "pdf", "json")],
        overwrite=args.overwrite,
        derived=args.out is None and len(args.run_dirs) == 1,
    )
    n_runs = len(runs)
    title = (
        f"Learning order: {runs[0].run_dir.name}"
        if n_runs == 1
        else f"Learning order: mean ± std over {n_runs} runs"
    )
    fig, crossings = plot_learning_order(steps, stacked, args.threshold, title)

    data = {
        "runs": [str(r.run_dir) for r in runs],
        "threshold": args.threshold,
        "steps": [int(s) for s in steps],
        "crossings": crossings,
        "final": {k: _mean_or_none(v[:, -1]) for k, v in stacked.items()},
    }
    paths = save_figure(fig, out_dir, args.name, data, log=None)

    ordered = sorted(crossings.items(), key=lambda kv: math.inf if kv[1]["mean"] is None else kv[1]["mean"])
    print(
        f"learning order (first step >= {args.threshold:g}), {n_runs} run(s): "
        + "; ".join(_crossing_text(name, c, n_runs) for name, c in ordered)
    )
    print("wrote:")
    for path in paths:
        print(f"  {path}")
    return 0


def _mean_or_none(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None
