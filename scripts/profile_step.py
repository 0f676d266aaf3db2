"""Profile: where a training step's time goes, per op and per kind of work (`torch.profiler`).

    python scripts/profile_step.py [--preset quick|paper] [--steps 3] [--ops 25]

Runs the step `birth train` runs (sample, fast-path forward, backward, optimizer update, with freed
memory kept) and, every `eval_every` steps' worth, one held-out evaluation; each phase is a
`record_function` range. Prints the self time of the top ops, then a table of kinds of work as
fractions of the profiled wall time: matmuls, softmax and mask, gathers and scatters, allocation
and copies, other element-wise ops, and the time no op accounts for (Python and dispatch).
Fractions are what to read: absolute milliseconds depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from birth.base.seeds import step_seed
from birth.models.transformer import trainable_parameters
from training.allocator import keep_freed_memory
from training.config import PRESETS
from training.evaluation import evaluate, standard_groups
from training.trainer import make_optimizer, training_loss

KINDS = {
    "matmul": ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "_scaled_dot_product", "dot"),
    "softmax and mask": ("softmax", "masked_fill", "gt", "lt", "ge", "triu", "tril", "where", "nll_loss"),
    "gather and scatter": ("index", "embedding", "gather", "scatter", "argsort", "sort", "nonzero", "take"),
    "allocation and copies": ("fill_", "zero", "empty", "copy_", "cat", "clone", "contiguous", "stack"),
}
PHASES = ("sample", "forward", "backward", "optimizer", "evaluation")


def kind_of(op: str) -> str:
    name = op.removeprefix("aten::")
    for kind, prefixes in KINDS.items():
        if any(name.startswith(p) or name.startswith("_" + p) for p in prefixes):
            return kind
    return "other element-wise"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ops", type=int, default=25)
    args = parser.parse_args()
    keep_freed_memory()
    config = PRESETS[args.preset]
    task = config.build_task()
    model = config.build_model(task.vocab_size)
    optimizer = make_optimizer(trainable_parameters(model), config.optim)
    eval_batch = task.sample(config.run.eval_batch_size, task.generator(config.run.eval_seed))
    groups = standard_groups(task, loss_on=config.optim.loss_on, attention=config.run.attention_probes)

    def step(s: int) -> None:
        with record_function("sample"):
            batch = task.sample(config.optim.batch_size, task.generator(step_seed(config.run.seed, s)))
        with record_function("forward"):
            loss = training_loss(model, batch, config, task)
        with record_function("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()

    def evaluation() -> None:
        with record_function("evaluation"):
            model.eval()
            evaluate(model, eval_batch, groups, fast_path=config.run.fast_path)
            model.train()

    step(0)
    evaluation()  # warm-up
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(1, args.steps + 1):
            step(s)
        evaluation()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    print(
        f"preset {args.preset}: {args.steps} steps + 1 evaluation (one per {config.run.eval_every} steps "
        f"in a run), {torch.get_num_threads()} threads"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.ops, max_name_column_width=44))
    phase = {e.key: e.cpu_time_total / 1e6 for e in events if e.key in PHASES}
    by_kind: dict[str, float] = defaultdict(float)
    for e in events:
        if e.key.startswith("aten::"):
            by_kind[kind_of(e.key)] += e.self_cpu_time_total / 1e6
    # the evaluation runs once per eval_every steps: scale it to a per-step share
    per_step = {p: phase.get(p, 0.0) / args.steps for p in PHASES[:-1]}
    per_step["evaluation"] = phase.get("evaluation", 0.0) / config.run.eval_every
    total = sum(per_step.values())
    print("\nper training step (evaluation amortized over eval_every steps), fraction of the step:")
    for p, seconds in per_step.items():
        print(f"  {p:22s} {seconds / total:6.1%}")
    ops_total = sum(by_kind.values())
    print(f"\nprofiled wall {wall:.2f} s; by kind of op, fraction of the wall time:")
    for kind in [*KINDS, "other element-wise"]:
        print(f"  {kind:22s} {by_kind[kind] / wall:6.1%}")
    print(f"  {'no op (Python, dispatch)':22s} {max(0.0, wall - ops_total) / wall:6.1%}")


if __name__ == "__main__":
    main()
