"""Steps per second of K stacked runs (`training.stacked`) against the same K runs one after another.

    python scripts/bench_runs.py            # K in 1, 4, 16; every config; a few minutes on a quiet CPU
    python scripts/bench_runs.py --quick    # fewer steps and repeats, the quick preset at K <= 4
    python scripts/bench_runs.py --device cuda

For each config and K it trains K runs (seeds 0..K-1) three ways, interleaved, `--repeats` times:
one after another with the one trainer (`train`), stacked with the default step (`use_batched`)
and stacked with the batched step forced. Timed: the training steps alone, from the end of each
run's (or the stack's) first step to the end of its last (`on_step`). Not timed: model building,
the evaluations (each run evaluates only within its first step and after its last) and the first
step's one-time setup. Sequential time is the sum over the K runs of their time per step; stacked
time is the stack's time per step. It prints the median over the repeats of each ratio,
sequential time / stacked time (> 1: stacking is faster), measured in this one process, and the
machine's load (`uptime`), since only ratios taken side by side mean anything on a shared
machine. K = 1 is the trainer itself (ratio 1 up to noise). Results go in
docs/tuning.md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from birth.base.runtime import resolve_device
from training.config import FULL, QUICK, TrainConfig
from training.stacked import train_stacked, use_batched
from training.trainer import train

# evaluations run at the first step and after the last (untimed): a small held-out batch keeps them short
NO_EVAL = dict(eval_every=10**9, checkpoint_every=10**9, attention_probes=False, eval_batch_size=32)
CONFIGS: dict[str, TrainConfig] = {
    # the studies' small() size, where per-op overhead dominates
    "small d=64 T=32 B=32": QUICK.replace(d_model=64, seq_len=32, batch_size=32, **NO_EVAL),
    "quick preset": QUICK.replace(**NO_EVAL),
    "full model d=64 T=32 B=32": FULL.replace(d_model=64, seq_len=32, batch_size=32, **NO_EVAL),
}
STEPS = {"small d=64 T=32 B=32": 40, "quick preset": 12, "full model d=64 T=32 B=32": 20}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


class StepClock:
    """`on_step` of a run or stack: the time of the end of each step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def __call__(self, steps_done: int) -> None:
        self.ends.append(time.perf_counter())

    def per_step(self) -> float:
        """Seconds per step from the end of the first step to the end of the last."""
        if len(self.ends) < 2:
            raise ValueError("timing needs at least 2 steps")
        return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)


def ratio_text(ratio: float, unit: str) -> str:
    """A ratio as printed; "-" where there is none (K = 1 has no forced batched step)."""
    return "-" if math.isnan(ratio) else f"{ratio:.2f}{unit}"


def step_time(configs: list[TrainConfig], root: Path, device: str, how: str) -> float:
    """Wall seconds per step of all `configs` together: sequential (sum over the runs), or stacked."""
    out = Path(tempfile.mkdtemp(dir=root))
    dirs = [out / f"seed{c.run.seed}" for c in configs]
    if how == "sequential":
        total = 0.0
        for config, run_dir in zip(configs, dirs):
            clock = StepClock()
            train(config, run_dir, progress=False, device=device, log=lambda _: None, on_step=clock)
            total += clock.per_step()
        return total
    batched = None if how == "stacked" else True
    clock = StepClock()
    train_stacked(
        configs, dirs, progress=False, device=device, log=lambda _: None, batched=batched, on_step=clock
    )
    return clock.per_step()


def bench(name: str, config: TrainConfig, k: int, steps: int, repeats: int, device: str, root: Path) -> dict:
    configs = [config.replace(seed=s, steps=steps) for s in range(k)]
    ways = ["sequential", "stacked"] + (["batched"] if k > 1 else [])
    times: dict[str, list[float]] = {way: [] for way in ways}
    for r in range(repeats):
        for way in ways if r % 2 == 0 else reversed(ways):  # interleaved, alternating order
            times[way].append(step_time(configs, root, device, way))
    seq = times["sequential"]
    ratio = {way: statistics.median(s / t for s, t in zip(seq, times[way])) for way in ways[1:]}
    return {
        "config": name,
        "K": k,
        "sequential run-steps/s": k / statistics.median(seq),
        "default step": "batched" if use_batched(configs, resolve_device(device)) else "run by run",
        "ratio (default)": ratio["stacked"],
        "ratio (batched)": ratio.get("batched", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer steps and repeats, the quick preset at K <= 4"
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--ks", default="1,4,16", help="numbers of runs K")
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats (default 5; --quick 3)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    ks = [int(k) for k in args.ks.split(",")]
    device = str(resolve_device(args.device))
    print(f"device {device}, torch {torch.__version__}, {args.threads} thread(s), {repeats} repeat(s)")
    print(f"before: {uptime()}")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # one untimed run of each config and way first: lazy imports and first-call setup
        for config in CONFIGS.values():
            for way in ("sequential", "batched"):
                step_time([config.replace(seed=s, steps=3) for s in range(2)], Path(tmp), device, way)
        for name, config in CONFIGS.items():
            steps = max(4, STEPS[name] // (2 if args.quick else 1))
            for k in ks:
                if args.quick and name == "quick preset" and k > 4:
                    continue  # the quick preset at K = 16 takes minutes on a CPU
                row = bench(name, config, k, steps, repeats, device, Path(tmp))
                rows.append(row)
                print(
                    f"{row['config']:28s} K={k:<3d} sequential {row['sequential run-steps/s']:7.1f} "
                    f"run-steps/s; stacked/sequential speed: default ({row['default step']}) "
                    f"{row['ratio (default)']:.2f}x, batched {ratio_text(row['ratio (batched)'], 'x')}",
                    flush=True,
                )
    print(f"after: {uptime()}  ({time.perf_counter() - started:.0f} s)")
    print(
        "\n| config | K | sequential run-steps/s | default step | stacked ÷ sequential (default) "
        "| (batched forced) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['K']} | {r['sequential run-steps/s']:.1f} | {r['default step']} | "
            f"{r['ratio (default)']:.2f}× | {ratio_text(r['ratio (batched)'], '×')} |"
        )


if __name__ == "__main__":
    main()
