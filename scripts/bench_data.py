"""Benchmark: the vectorized triggered-bigram sampler against a plain per-token reference.

Times one 512 x 257 batch (T = 256, K = 5 fixed triggers, uniform outputs) on one CPU thread and
prints the best-of-N time of each sampler and their ratio. The reference is what simple code would
do: a Python loop over sequences and positions with one `numpy.random.Generator.choice` per token.

    python scripts/bench_data.py [--batch 512] [--seq-len 256] [--repeats 5] [--ref-repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python scripts/bench_data.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.shakespeare import load_stats  # noqa: E402
from tasks.triggered_bigram import TaskConfig, TriggeredBigram  # noqa: E402


def reference_sample(
    unigram: np.ndarray,
    bigram: np.ndarray,
    triggers: np.ndarray,
    batch_size: int,
    seq_len: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Same task semantics, written the simple way: one `rng.choice` per token.

    Returns tokens [B, T+1] and the occurrence counter [B, T].
    """
    n = len(unigram)
    k = len(triggers)
    tokens = np.zeros((batch_size, seq_len + 1), dtype=np.int64)
    counter = np.zeros((batch_size, seq_len), dtype=np.int64)
    for b in range(batch_size):
        outputs = {int(q): int(rng.choice(n)) for q in triggers}  # o_k uniform over the vocabulary
        seen = {int(q): 0 for q in triggers}
        z = int(rng.choice(n, p=unigram))  # z_1 ~ unigram
        tokens[b, 0] = z
        for t in range(seq_len):
            if k and z in outputs:
                seen[z] += 1
                counter[b, t] = seen[z]
                z = outputs[z]
            else:
                z = int(rng.choice(n, p=bigram[z]))
            tokens[b, t + 1] = z
    return tokens, counter


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5, help="repeats of the vectorized sampler")
    p.add_argument("--ref-repeats", type=int, default=2, help="repeats of the reference sampler")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    stats = load_stats()
    config = TaskConfig(seq_len=args.seq_len, n_triggers=5, trigger_mode="fixed", output_mode="uniform")
    sampler = TriggeredBigram(config, stats)
    gen = sampler.generator(0)
    sampler.sample(args.batch, gen)  # warm-up

    unigram = stats.unigram_probs.numpy()
    bigram = stats.bigram_probs.numpy()
    triggers = sampler.fixed_triggers.numpy()
    rng = np.random.default_rng(0)

    t_fast = best_time(lambda: sampler.sample(args.batch, gen), args.repeats)
    t_ref = best_time(
        lambda: reference_sample(unigram, bigram, triggers, args.batch, args.seq_len, rng),
        args.ref_repeats,
    )
    shape = f"{args.batch} x {args.seq_len + 1}"
    print(f"batch {shape}, K=5 fixed triggers, uniform outputs, 1 thread (torch {torch.__version__})")
    print(f"vectorized sampler (best of {args.repeats}): {t_fast * 1e3:9.2f} ms")
    print(f"per-token reference (best of {args.ref_repeats}): {t_ref * 1e3:9.2f} ms")
    ratio = t_ref / t_fast
    print(f"speed-up: {ratio:.0f}x ({'meets' if ratio >= 100 else 'MISSES'} the 100x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
