"""Benchmark: a training step against its floor and against plain eager PyTorch, in one run.

    python scripts/bench_train.py                 # the quick and paper presets
    python scripts/bench_train.py --quick         # the quick preset only (about a minute)
    python scripts/bench_train.py --compile       # also the compiled step (torch.compile, CPU inductor)

Per preset, on the same weights and batches:
- FLOPs of one step (forward + backward) by `torch.utils.flop_counter.FlopCounterMode`, for the
  fast path and for the eager step;
- the fp32 matmul peak measured here at the step's shapes (the best of its largest products) and
  the floor = fast-path FLOPs / peak;
- the seconds of a step (sample + forward + backward + optimizer update), best of `--repeats`,
  for `eager` (the plain reference forward `birth.models.reference`: every linear applied,
  explicit causal softmax, logits at every position, loss on the selected targets) and `fast`
  (`training.trainer.training_loss`, what `birth train` runs), measured interleaved so that both
  see the same machine load, with freed memory kept (`training.allocator`, as `birth train`);
  `eager (default allocator)` is measured first, before that setting applies to the process;
- the ratios: fast to its floor, eager to fast (wall time, and CPU time of the process, which a
  loaded machine moves less); and for the quick preset the whole run
  (`steps` x (step + evaluation / eval_every)) against `steps` x floor.

The load average is printed at the start and the end: on a loaded machine absolute times (and,
less so, ratios) move; `--threads 1` is the stable setting there (OpenMP threads that wait on
each other are slowed far more than one thread by other processes).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from birth.base.seeds import step_seed
from birth.models.transformer import ReferenceTransformer, fast_logits, trainable_parameters
from training.allocator import keep_freed_memory
from training.config import PRESETS, TrainConfig
from training.evaluation import evaluate, standard_groups
from training.trainer import make_optimizer, training_loss


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def matmul_peak(shapes: list[tuple[int, int, int, int]], repeats: int = 3) -> float:
    """Best fp32 GFLOP/s of torch.bmm over `shapes` (batch, m, k, n): the matmul rate here."""
    best = 0.0
    for b, m, k, n in shapes:
        x, y = torch.randn(b, m, k), torch.randn(b, k, n)
        torch.bmm(x, y)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.bmm(x, y)
            best = max(best, 2 * b * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


class Bench:
    """One preset: its model, task, optimizer and the two steps to time."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.task = config.build_task()
        self.model = config.build_model(self.task.vocab_size)
        self.reference = ReferenceTransformer.from_bridge(self.model)  # same parameters
        self.optimizer = make_optimizer(trainable_parameters(self.model), config.optim)

    def batch(self, step: int):
        o = self.config.optim
        return self.task.sample(o.batch_size, self.task.generator(step_seed(self.config.run.seed, step)))

    def eager_loss(self, batch) -> torch.Tensor:
        mask = self.task.loss_mask(batch, self.config.optim.loss_on)
        return F.cross_entropy(self.reference(batch.inputs)[mask], batch.targets[mask])

    def fast_loss(self, batch) -> torch.Tensor:
        return training_loss(self.model, batch, self.config, self.task)

    def compiled_loss(self, batch) -> torch.Tensor:
        return training_loss(self.model, batch, self.config, self.task, compiled=True)

    def step(self, loss_fn: Callable, step: int) -> float:
        return self.timed_step(loss_fn, step)[0]

    def timed_step(self, loss_fn: Callable, step: int) -> tuple[float, float]:
        """(wall, CPU) seconds of one step: sample, forward, backward, optimizer update."""
        t0, c0 = time.perf_counter(), time.process_time()
        loss = loss_fn(self.batch(step))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - t0, time.process_time() - c0

    def flops(self, loss_fn: Callable) -> float:
        with FlopCounterMode(display=False) as counter:
            loss_fn(self.batch(0)).backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    def evaluation_seconds(self) -> float:
        run = self.config.run
        batch = self.task.sample(run.eval_batch_size, self.task.generator(run.eval_seed))
        groups = standard_groups(self.task, loss_on=self.config.optim.loss_on, attention=run.attention_probes)
        evaluate(self.model, batch, groups)  # warm-up
        t0 = time.perf_counter()
        evaluate(self.model, batch, groups)
        return time.perf_counter() - t0

    def shapes(self) -> list[tuple[int, int, int, int]]:
        """The step's largest products, at the mean query count q: a block of the first layer's
        pattern times its values ([group, T/4, T] x [T, d]), the second layer's scores and values
        ([group, q + N, d] x [d, T]) and the query map ([group·q, d] x [d, d])."""
        batch = self.batch(0)
        B, T = batch.inputs.shape
        d, N = self.config.model.d_model, self.task.vocab_size
        q = max(1, int(self.task.loss_mask(batch, self.config.optim.loss_on).sum(dim=1).float().mean()))
        group = min(B, 32)
        return [(group, max(1, T // 4), T, d), (group, q + N, d, T), (1, group * q, d, d)]


def run_preset(name: str, repeats: int, compiled: bool, eager_default: float) -> None:
    config = PRESETS[name]
    bench = Bench(config)
    o, m, t = config.optim, config.model, config.task
    print(f"\npreset {name}: d={m.d_model} T={t.seq_len} batch={o.batch_size}, {o.steps} steps")
    fast_flops, eager_flops = bench.flops(bench.fast_loss), bench.flops(bench.eager_loss)
    peak = matmul_peak(bench.shapes())
    floor = fast_flops / (peak * 1e9)
    print(
        f"  FLOPs per step (FlopCounterMode): fast {fast_flops / 1e9:.2f} GFLOP, eager {eager_flops / 1e9:.2f} "
        f"GFLOP; fp32 matmul peak at the step's shapes {peak:.1f} GFLOP/s -> floor {floor * 1e3:.1f} ms"
    )
    variants = {"eager": bench.eager_loss, "fast": bench.fast_loss}
    if compiled:
        t0 = time.perf_counter()
        bench.step(bench.compiled_loss, 0)
        print(f"  compile (first compiled step): {time.perf_counter() - t0:.1f} s")
        variants["fast, compiled"] = bench.compiled_loss
    best = dict.fromkeys(variants, float("inf"))
    best_cpu = dict.fromkeys(variants, float("inf"))
    for loss_fn in variants.values():
        bench.step(loss_fn, 0)  # warm-up
    for r in range(repeats):  # interleaved: every variant sees the same load
        for variant, loss_fn in variants.items():
            wall, cpu = bench.timed_step(loss_fn, r + 1)
            best[variant], best_cpu[variant] = min(best[variant], wall), min(best_cpu[variant], cpu)
    eager, eager_cpu = best["eager"], best_cpu["eager"]
    print(f"  {'eager (default allocator)':26s} {eager_default * 1e3:9.1f} ms/step")
    for variant, seconds in best.items():
        print(
            f"  {variant:26s} {seconds * 1e3:9.1f} ms/step   {seconds / floor:5.2f}x floor   "
            f"{eager / seconds:5.2f}x faster than eager, {eager_default / seconds:5.2f}x than eager "
            f"(default allocator); CPU {best_cpu[variant] * 1e3:.1f} ms/step, "
            f"{eager_cpu / best_cpu[variant]:.2f}x eager's"
        )
    if name == "quick":
        evaluation = bench.evaluation_seconds()
        per_step = (
            min(best["fast"], best.get("fast, compiled", float("inf"))) + evaluation / config.run.eval_every
        )
        print(
            f"  evaluation {evaluation * 1e3:.1f} ms (every {config.run.eval_every} steps); whole run "
            f"{o.steps} x {per_step * 1e3:.1f} ms = {o.steps * per_step:.0f} s = "
            f"{per_step / floor:.2f}x {o.steps} x floor"
        )
    with torch.no_grad():
        batch = bench.task.sample(8, 0)
        diff = (fast_logits(bench.model, batch.inputs) - bench.reference(batch.inputs)).abs().max()
    print(f"  max |fast - eager| logit difference: {diff.item():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick preset only (about a minute)")
    parser.add_argument("--presets", nargs="+", default=["quick", "paper"], choices=sorted(PRESETS))
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed steps per variant (default 5, 2 paper)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = ["quick"] if args.quick else args.presets
    print(f"{torch.get_num_threads()} threads, {load()}")
    # the eager step with the default allocator first (what plain code gets), then `birth train`'s
    # setting, which applies to the rest of the process
    eager_default = {}
    for name in presets:
        bench = Bench(PRESETS[name])
        eager_default[name] = min(bench.step(bench.eager_loss, r) for r in range(2))
    if not keep_freed_memory():
        print("(keep_freed_memory is not available here: the allocator is unchanged)")
    for name in presets:
        repeats = args.repeats or (2 if name == "paper" else 5)
        run_preset(name, repeats, args.compile, eager_default[name])
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
