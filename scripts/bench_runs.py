"""Steps per second of K stacked runs (`training.stacked`) against the same K runs one after another.

    python scripts/bench_runs.py            # K in 1, 4, 16; every config; a few minutes on a quiet CPU
    python scripts/bench_runs.py --quick    # fewer steps and repeats (about 2 minutes)
    python scripts/bench_runs.py --device cuda

For each config and K it trains K runs (seeds 0..K-1) three ways, interleaved, `--repeats` times:
one after another with the one trainer (`train`), stacked with the default step (`use_batched`)
and stacked with the batched step forced; each time is the step loop's (`RunResult.seconds_per_step`:
its evaluations at the first and last step included, model building and run directories not). It
prints the median over the repeats of each ratio, sequential time / stacked time (> 1: stacking is
faster), measured in this one process, and the machine's load (`uptime`), since only ratios taken
side by side mean anything on a shared machine. K = 1 is the trainer itself (ratio 1 by
construction). Results go in docs/tuning.md.
"""

from __future__ import annotations

import argparse
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

NO_EVAL = dict(eval_every=10**9, checkpoint_every=10**9, attention_probes=False)
CONFIGS: dict[str, TrainConfig] = {
    # the studies' small() size, where per-op overhead dominates
    "small d=64 T=32 B=32": QUICK.replace(d_model=64, seq_len=32, batch_size=32, **NO_EVAL),
    "quick preset": QUICK.replace(**NO_EVAL),
    "full model d=64 T=32 B=32": FULL.replace(d_model=64, seq_len=32, batch_size=32, **NO_EVAL),
}
STEPS = {"small d=64 T=32 B=32": 30, "quick preset": 8, "full model d=64 T=32 B=32": 20}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def step_time(configs: list[TrainConfig], root: Path, device: str, how: str) -> float:
    """Wall seconds per step of all `configs` together: sequential (sum over the runs), or stacked."""
    out = Path(tempfile.mkdtemp(dir=root))
    dirs = [out / f"seed{c.run.seed}" for c in configs]
    if how == "sequential":
        results = [
            train(c, d, progress=False, device=device, log=lambda _: None) for c, d in zip(configs, dirs)
        ]
        return sum(r.seconds_per_step for r in results)
    batched = None if how == "stacked" else True
    results = train_stacked(configs, dirs, progress=False, device=device, log=lambda _: None, batched=batched)
    return results[0].seconds_per_step


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
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (about 2 minutes)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--ks", default="1,4,16", help="numbers of runs K")
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats (default 3; --quick 1)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
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
                step_time([config.replace(seed=s, steps=2) for s in range(2)], Path(tmp), device, way)
        for name, config in CONFIGS.items():
            steps = max(3, STEPS[name] // (3 if args.quick else 1))
            for k in ks:
                if args.quick and name == "quick preset" and k > 4:
                    continue  # the quick preset at K = 16 takes minutes on a CPU
                row = bench(name, config, k, steps, repeats, device, Path(tmp))
                rows.append(row)
                print(
                    f"{row['config']:28s} K={k:<3d} sequential {row['sequential run-steps/s']:7.1f} run-steps/s; "
                    f"stacked/sequential speed: default ({row['default step']}) {row['ratio (default)']:.2f}x, "
                    f"batched {row['ratio (batched)']:.2f}x",
                    flush=True,
                )
    print(f"after: {uptime()}  ({time.perf_counter() - started:.0f} s)")
    print(
        "\n| config | K | sequential run-steps/s | default step | stacked ÷ sequential (default) | (batched) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['K']} | {r['sequential run-steps/s']:.1f} | {r['default step']} | "
            f"{r['ratio (default)']:.2f}× | {r['ratio (batched)']:.2f}× |"
        )


if __name__ == "__main__":
    main()
