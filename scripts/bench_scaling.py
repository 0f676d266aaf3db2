"""Benchmark: the scheme comparison of `birth scaling schemes` (figure 3 of the issue), plain loop vs module.

Both sides use the same embeddings (one standard-normal draw per trial at d_max, truncated across d,
drawn by the same seeded generator) and compute the same exact errors; the script checks that the
errors agree before printing the times and the ratio.

The reference is what a direct implementation does: a Python loop over trials, over d and over the
three schemes, building the d × d matrix W = Σ_x q(x) u_{f*(x)} e_xᵀ at each d and multiplying
u_yᵀ W e_x for all (x, y). The module groups stored tokens by output and accumulates coordinate
blocks across d (see birth/memories/scaling_laws.py), so it never forms W.

    python scripts/bench_scaling.py                # the figure: 100 trials, N = 1000, 20 values of d
    python scripts/bench_scaling.py --trials 10    # quicker (fixed costs weigh more: a lower ratio)

Timings on a shared machine vary with its load (the reference's large d × d products suffer most
from competing processes); `--threads 1` gives steadier numbers.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from birth.memories.scaling_laws import draw_embeddings, memory_errors, q_threshold
from tasks.zipf import ZipfAssociations


def scheme_weights(probs: torch.Tensor, dims: list[int], top_fraction: float) -> list[torch.Tensor]:
    """q = 1, q = p (d-independent) and q = 1{x <= P(d)}, P(d) = d · top_fraction (T = ∞)."""
    flat = torch.stack([torch.ones_like(probs), probs])[None, :, None, :]
    tops = [max(1, int(d * top_fraction)) for d in dims]
    threshold = q_threshold(probs, tops)[None, None]  # (1, 1, D, N)
    return [flat, threshold]


def reference_errors(
    task: ZipfAssociations, dims: list[int], num_trials: int, seed: int, top_fraction: float
) -> np.ndarray:
    """Plain loops: trial × d × scheme, W (d × d) rebuilt and multiplied each time."""
    probs, targets = task.probs(), task.targets()
    errors = np.zeros((num_trials, 3, len(dims)))
    for trial in range(num_trials):
        emb = draw_embeddings([trial], task.num_inputs, task.num_outputs, dims, seed=seed)
        for k, d in enumerate(dims):
            inputs, outputs = emb.at(k)
            inputs, outputs = inputs[0], outputs[0]
            top = max(1, int(d * top_fraction))
            schemes = [
                torch.ones_like(probs),
                probs,
                (torch.arange(task.num_inputs) < top).to(probs.dtype),
            ]
            for s, q in enumerate(schemes):
                memory = torch.zeros(d, d, dtype=inputs.dtype)
                memory += outputs[targets].T @ (q[:, None] * inputs)
                scores = outputs @ memory @ inputs.T  # (M, N)
                correct = scores.gather(0, targets[None])[0]
                others = scores.scatter(0, targets[None], float("-inf")).amax(0)
                errors[trial, s, k] = float((probs * (correct <= others)).sum())
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="the figure's trial count (default 100)")
    parser.add_argument("--num-inputs", type=int, default=1000)
    parser.add_argument("--num-dims", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="module timing: best of this many runs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for both sides")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    task = ZipfAssociations(args.num_inputs, 5, 2.0)
    dims = sorted(set(np.round(np.logspace(1, 3, args.num_dims)).astype(int).tolist()))
    top_fraction = 1 / 8
    print(
        f"figure-3 computation: N={task.num_inputs}, M=5, alpha=2, {len(dims)} values of d in "
        f"[{dims[0]}, {dims[-1]}], {args.trials} trials, 3 schemes, float64, "
        f"{torch.get_num_threads()} threads"
    )

    start = time.perf_counter()
    reference = reference_errors(task, dims, args.trials, args.seed, top_fraction)
    reference_s = time.perf_counter() - start

    module_s = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = memory_errors(
            scheme_weights(task.probs(), dims, top_fraction),
            task.targets(),
            task.probs(),
            dims,
            num_trials=args.trials,
            seed=args.seed,
            num_outputs=task.num_outputs,
        )["error"].numpy()
        module_s = min(module_s, time.perf_counter() - start)

    max_diff = float(np.abs(result - reference).max())
    print(f"reference loop: {reference_s:8.3f} s  ({reference_s / args.trials:.3f} s per trial)")
    print(f"module        : {module_s:8.3f} s  ({module_s / args.trials:.4f} s per trial)")
    print(f"speed-up      : {reference_s / module_s:8.1f}x   (max |error difference| = {max_diff:.2e})")
    if max_diff > 1e-9:
        print("WARNING: module and reference errors differ")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
