"""`birth capacity`: recall vs number of stored associations and capacity n*(d) of linear and
non-linear associative memories (birth/hopfield.py), against the theory d, d/log d, exp(c d).

Writes capacity.json, capacity.png/pdf (recall curves) and capacity_summary.png/pdf (n*(d) with
theory curves, and the cost side: parameters and multiply-adds per query at capacity) into --out
(default results/capacity). Defaults are CPU-sized (about a minute); --full is larger.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from birth.hopfield import (
    MEMORIES, RecallSetup, binary_entropy, capacity_from_recall, cost_per_query, recall_curves,
    size_grid, theory_capacity,
)

POLYNOMIAL = ("linear", "hopfield", "hopfield-auto")  # theory n* ∝ d or d / log d
OUTPUT_FILES = ("capacity.json", "capacity.png", "capacity.pdf", "capacity_summary.png", "capacity_summary.pdf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memories", default=",".join(MEMORIES), help=f"comma-separated subset of {','.join(MEMORIES)}")
    parser.add_argument("--out", type=Path, default=Path("results/capacity"))
    parser.add_argument("--overwrite", action="store_true", help="replace files of an earlier run")
    parser.add_argument("--full", action="store_true", help="more trials and queries, larger d and n")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None, help="queried associations per trial")
    parser.add_argument("--delta", type=float, default=0.1, help="fraction of flipped bits in binary queries")
    parser.add_argument("--beta", type=float, default=0.25, help="softmax inverse temperature")
    parser.add_argument("--eta", type=float, default=0.5, help="ReLU threshold")
    parser.add_argument("--outputs", type=int, default=2, help="number of classes M of the class memories")
    parser.add_argument("--threshold", type=float, default=0.99, help="recall defining the capacity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")


def grids(memory: str, full: bool) -> tuple[list[int], list[int]]:
    """(dims, sizes) for a memory: polynomial ones need large d, exponential ones large n."""
    if memory in POLYNOMIAL:
        dims = [32, 64, 128, 256, 512] + ([1024] if full else [])
        return dims, size_grid(2048 if full else 1024)
    dims = [8, 12, 16, 20, 24, 28] + ([32, 36] if full else [])
    return dims, size_grid(65536 if full else 8192)


def fit_growth(memory: str, dims: list[int], capacities: list[int], max_size: int) -> dict | None:
    """Exponent of the growth: log-log slope (polynomial memories) or rate c in exp(c d).

    Censored points (n* = 0, or n* = the largest n tried) are left out.
    """
    keep = [(d, n) for d, n in zip(dims, capacities) if 0 < n < max_size]
    if len(keep) < 2:
        return None
    d, n = np.array(keep, dtype=float).T
    x = np.log(d) if memory in POLYNOMIAL else d
    slope, intercept = np.polyfit(x, np.log(n), 1)
    return {"slope": float(slope), "intercept": float(intercept), "points": len(keep)}


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memories = [m.strip() for m in args.memories.split(",") if m.strip()]
    unknown = [m for m in memories if m not in MEMORIES]
    if unknown or not memories:
        raise ValueError(f"unknown memories {unknown}; choose among {', '.join(MEMORIES)}")
    if not 0 < args.threshold <= 1:
        raise ValueError(f"--threshold must lie in (0, 1], got {args.threshold}")
    if not 0 <= args.delta < 0.5:
        raise ValueError(f"--delta must lie in [0, 0.5), got {args.delta}")
    if args.beta <= 0 or args.outputs < 2:
        raise ValueError("--beta must be > 0 and --outputs >= 2")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available")
    trials = args.trials if args.trials is not None else (32 if args.full else 8)
    queries = args.queries if args.queries is not None else (1024 if args.full else 256)
    if trials < 2 or queries < 1:
        raise ValueError("--trials must be >= 2 (for the bootstrap) and --queries >= 1")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} exists and is not a directory")
    existing = [f for f in OUTPUT_FILES if (args.out / f).exists()]
    if existing and not args.overwrite:
        raise ValueError(f"{args.out} already holds {', '.join(existing)}; pass --overwrite or choose another --out")

    started = time.perf_counter()
    print(f"capacity: recall >= {args.threshold} of exactly retrieved associations; {trials} trials x "
          f"{queries} queries; binary queries with delta={args.delta} flipped bits; softmax beta={args.beta}; "
          f"relu eta={args.eta}; class memories with M={args.outputs}")
    gen = torch.Generator().manual_seed(args.seed)
    records = {}
    for memory in memories:
        dims, sizes = grids(memory, args.full)
        setup = RecallSetup(memory, dims, sizes, num_trials=trials, num_queries=queries,
                            num_outputs=args.outputs, delta=args.delta, beta=args.beta, eta=args.eta, seed=args.seed)
        curves = recall_curves(setup, device=args.device, progress=not args.no_progress, threshold=args.threshold)
        recall = curves["recall"]
        capacities = capacity_from_recall(recall.nanmean(0), sizes, args.threshold)
        fit = fit_growth(memory, dims, capacities, sizes[-1])
        # bootstrap over trials: recompute capacities and the fit from resampled trials
        boots = []
        for _ in range(200):
            pick = torch.randint(0, trials, (trials,), generator=gen)
            b = fit_growth(memory, dims, capacity_from_recall(recall[pick].nanmean(0), sizes, args.threshold), sizes[-1])
            if b is not None:
                boots.append(b["slope"])
        if fit is not None and boots:
            fit["ci_low"], fit["ci_high"] = (float(v) for v in np.quantile(boots, [0.025, 0.975]))
        form = theory_capacity(memory, dims[0], args.delta, args.eta)[0]
        if memory == "linear":
            theory_exponent, what = 1.0, "log-log slope"
        elif memory in POLYNOMIAL:  # local log-log slope of d / log d over the grid
            theory_exponent = float(np.polyfit(np.log(dims), np.log([d / math.log(d) for d in dims]), 1)[0])
            what = "log-log slope"
        elif memory == "relu":
            # no cross-talk term above η means exact recall: n P(e·e' > η) small, P ≈ (1 − η²)^(d/2)
            theory_exponent, what = -0.5 * math.log(1 - args.eta ** 2), "rate c in exp(c d) (theory: a lower bound)"
        else:
            theory_exponent, what = math.log(2) - binary_entropy(args.delta), "rate c in exp(c d)"
        # auto-associative cost: the number of sign updates run at n = n*(d)
        at_capacity = [sizes.index(n) if n in sizes else 0 for n in capacities]
        costs = [cost_per_query(memory, d, max(n, 1), args.outputs, int(curves["iterations"][a, at_capacity[a]]))
                 for a, (d, n) in enumerate(zip(dims, capacities))]
        print(f"  {memory:13s} n*(d) = " + ", ".join(f"{d}:{n}{'+' if n >= sizes[-1] else ''}" for d, n in zip(dims, capacities)))
        if fit is not None:
            ci = f"[{fit.get('ci_low', float('nan')):+.3f}, {fit.get('ci_high', float('nan')):+.3f}]"
            print(f"  {'':13s} {what}: {fit['slope']:+.3f}  95% CI {ci}  theory {theory_exponent:+.3f} ({form})")
        print(f"  {'':13s} at d={dims[-1]}: {costs[-1]['parameters']:.0f} parameters, "
              f"{costs[-1]['flops']:.0f} flops per query for n*={capacities[-1]}")
        records[memory] = {
            "dims": dims, "sizes": sizes, "capacity": capacities, "theory_form": form,
            "theory_exponent": theory_exponent, "fit": fit, "costs": costs,
            "mean_recall": [[None if math.isnan(v) else v for v in row] for row in recall.nanmean(0).tolist()],
        }

    # recall curves
    cols = min(3, len(memories))
    rows = math.ceil(len(memories) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.4 * rows), squeeze=False)
    for ax, memory in zip(axes.flat, memories):
        rec = records[memory]
        for d, row in zip(rec["dims"], rec["mean_recall"]):
            ax.plot(rec["sizes"], [np.nan if v is None else v for v in row], label=f"d={d}")
        ax.axhline(args.threshold, color="k", lw=0.8, ls=":")
        ax.set(xscale="log", xlabel="stored associations n", ylabel="recall", title=memory, ylim=(0, 1.02))
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(memories):]:
        ax.axis("off")
    fig.tight_layout()

    # capacity vs d with theory, and cost at capacity
    summary, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for memory in memories:
        rec = records[memory]
        line, = left.plot(rec["dims"], [max(n, 0.5) for n in rec["capacity"]], "o-", label=memory)
        theory = [theory_capacity(memory, d, args.delta, args.eta)[1] for d in rec["dims"]]
        ok = [(t, n) for t, n in zip(theory, rec["capacity"]) if 0 < n < rec["sizes"][-1]]
        if ok:  # theory curve up to a constant, matched in log to the measured points
            scale = math.exp(np.mean([math.log(n / t) for t, n in ok]))
            left.plot(rec["dims"], [scale * t for t in theory], "--", color=line.get_color(), lw=1,
                      label=f"∝ {rec['theory_form']}")
        right.plot([max(n, 1) for n in rec["capacity"]], [c["parameters"] for c in rec["costs"]], "o-",
                   color=line.get_color(), label=memory)
    left.set(xscale="log", yscale="log", xlabel="d", ylabel=f"capacity n* (recall >= {args.threshold})")
    left.legend(fontsize=6, ncol=2)
    right.set(xscale="log", yscale="log", xlabel="capacity n*", ylabel="parameters stored",
              title="cost side: parameters at capacity")
    right.legend(fontsize=7)
    summary.tight_layout()

    args.out.mkdir(parents=True, exist_ok=True)
    seconds = round(time.perf_counter() - started, 2)
    meta = {"trials": trials, "queries": queries, "delta": args.delta, "beta": args.beta, "eta": args.eta,
            "outputs": args.outputs, "threshold": args.threshold, "seed": args.seed, "full": args.full,
            "seconds": seconds}
    (args.out / "capacity.json").write_text(json.dumps({"settings": meta, "memories": records}, indent=1))
    for stem, figure in (("capacity", fig), ("capacity_summary", summary)):
        for ext in ("png", "pdf"):
            figure.savefig(args.out / f"{stem}.{ext}", dpi=130)
        plt.close(figure)
    print(f"capacity: wrote {', '.join(str(args.out / f) for f in OUTPUT_FILES)} ({seconds:.1f} s)")
    return 0
