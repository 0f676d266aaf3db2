"""`birth grid SPEC.yaml`: run a grid of experiments or training runs through submitit.

The spec, its points and the runner are `birth.experiments.grid` (docs/grid.md); this command reads
the options, validates the spec, and lists its points (`--dry-run`) or runs them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from birth.base.config_io import load_yaml_file
from birth.cli import parse_args
from birth.experiments.grid import (
    CLUSTERS,
    GridSpec,
    base_of,
    count_points,
    finished_keys,
    parse_spec,
    point_key,
    read_results,
    run_grid,
)

MAX_POINTS = 10_000  # a larger grid is refused unless --max-points raises the limit
PROGRESS_FROM = 1_000  # grids of this many points show a progress bar while they are validated


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="grid spec (YAML): see docs/grid.md and scripts/grids/")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the spec's `out`)")
    parser.add_argument("--cluster", choices=CLUSTERS, default=None, help="override executor.cluster")
    parser.add_argument(
        "--parallel", type=int, default=None, help="override executor.parallel (jobs at once)"
    )
    parser.add_argument("--dry-run", action="store_true", help="validate the spec, list the points and exit")
    parser.add_argument(
        "--max-points",
        type=int,
        default=MAX_POINTS,
        help=f"refuse a grid of more points than this (default: {MAX_POINTS:,})",
    )


def read_spec(args: argparse.Namespace) -> GridSpec:
    """The spec of `args`, refused when its points outnumber --max-points (counted before any is
    built); a large grid's validation shows its progress (on stdout: stderr is for the error)."""
    raw = load_yaml_file(args.spec)
    total = count_points(raw)
    if total > args.max_points:
        raise ValueError(
            f"{args.spec}: the grid has {total:,} points, more than --max-points {args.max_points:,}; "
            "pass a larger --max-points to run it"
        )
    bar = None
    if total >= PROGRESS_FROM:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="validating points", file=sys.stdout, dynamic_ncols=True)
    try:
        return parse_spec(
            raw,
            source=str(args.spec),
            stem=args.spec.stem,
            out=args.out,
            cluster=args.cluster,
            parallel=args.parallel,
            on_point=None if bar is None else lambda: bar.update(1),
        )
    finally:
        if bar is not None:
            bar.close()


def run_args(args: argparse.Namespace) -> int:
    if args.parallel is not None and args.parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {args.parallel}")
    if args.max_points < 1:
        raise ValueError(f"--max-points must be >= 1, got {args.max_points}")
    spec = read_spec(args)
    if args.dry_run:
        done = finished_keys(read_results(spec.results))
        for p in spec.points:
            state = "done" if point_key(spec.experiment, base_of(spec), p.overrides) in done else "to run"
            print(f"{state:6}  {spec.out / p.name}")
        print(f"{len(spec.points)} points ({spec.experiment}); results in {spec.results}")
        return 0
    report = run_grid(spec)
    print(
        f"grid done: {len(report.ok)} ok, {len(report.failed)} failed, {report.skipped} skipped "
        f"(already done); results in {spec.results}"
    )
    for name, error in report.failed:
        print(f"  failed: {name}: {error}")
    return report.exit_code


def run(argv: Sequence[str] | argparse.Namespace, prog: str = "birth grid") -> int:
    """Entry point of `birth grid` (birth.cli calls `run(argv, prog)`)."""
    if isinstance(argv, argparse.Namespace):
        return run_args(argv)
    return run_args(parse_args(add_arguments, list(argv), prog, __doc__))


def main(argv: Sequence[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
