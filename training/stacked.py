"""Stacked training: K runs of one architecture trained side by side in one process.

    results = train_stacked([config.replace(seed=s) for s in range(8)], [out / f"seed{s}" for s in range(8)])

Each run is a run of the one trainer (`training.trainer`): its own directory, model, optimizer,
schedule, task, batches (drawn from its own seed), evaluations, checkpoints, metrics file and
summary, written by the same parts as a separate run's; a stacked run resumes run by run from each
run's checkpoint. The runs may differ in anything but the model's shape (seed, learning rate,
schedule, task settings, steps); `stack_key` says which configs stack.

What is shared is the step: the runs' batches are drawn together (`tasks.protocol.sample_many`:
each exactly what its own generator gives), and with the batched forward
(`birth.models.stacked.StackedForward`, `torch.func.vmap` over the K parameter sets) the K losses
come from one forward and one backward, at the selected queries only for two-layer fast-path
models trained on their outputs (as a single run's step) and at every position otherwise; each
run's optimizer then steps its own parameters. Its numbers equal the separate runs' to float
rounding (`tests/integration/test_stacked.py` states the tolerance). Without it (`batched=False`)
each run takes its own step in turn: the numbers are exactly a separate run's. `batched=None`
chooses: batched on an accelerator and on a CPU with several threads; on one CPU thread, for runs
on the fast path of at most `BATCHED_MAX_TOKENS` tokens per batch (the reference forward of the
other architectures is no faster batched there); larger batches are compute-bound on a CPU, where the batched step gains nothing
and its larger tensors can make it slower (docs/tuning.md has the measurements). A single run is
trained by `training.trainer.train` itself.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from birth.base.runtime import resolve_device
from birth.base.seeds import check_seed
from birth.models.fast import supports_fast_path
from birth.models.stacked import StackedForward
from tasks.protocol import TokenBatch, sample_many
from training.allocator import keep_freed_memory
from training.config import TrainConfig
from training.run_dir import RUN_PREFIX, prepare_run_dir, remove_new_run, resume_point, stack_dir, stack_runs
from training.trainer import (
    RunResult,
    _finish,
    _Loop,
    _open_run,
    _out_of_memory,
    _parts,
    _StepState,
    _stop_on_signals,
    _StopFlag,
    train,
)

SEEDS = "--seeds"
MAX_RUNS = 4096  # runs in one stack, whatever the memory says
BATCHED_MAX_TOKENS = 4096  # CPU: batch_size x seq_len per run up to which the step is batched
SELECTED_MIN_TOKENS = 2048  # batch_size x seq_len from which the batched step forms selected queries only
STACK_INDEX = "stack_index"  # TrainingRun.extras: the run's place in the stack
_BYTES = 4  # float32


def parse_seeds(text: str, option: str = SEEDS) -> tuple[int, ...]:
    """ "0-7" (a range, both ends included), "0,3,5" (a list) or a mix ("0-3,8") as seeds; ValueError
    naming `option` for an empty, negative, malformed or repeated seed or more than MAX_RUNS."""
    items = [part.strip() for part in str(text).split(",")]
    if not any(items):
        raise ValueError(f"{option} is empty: give a range of seeds (0-7) or a list (0,3,5)")
    seeds: list[int] = []
    for item in items:
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
        if match is None:
            raise ValueError(f"{option}: {item!r} is not a seed >= 0 or a range FIRST-LAST (e.g. 0-7)")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise ValueError(f"{option}: the range {item!r} ends before it starts")
        if len(seeds) + last - first + 1 > MAX_RUNS:
            raise ValueError(f"{option}: at most {MAX_RUNS} runs in one process, got more in {text!r}")
        for seed in range(first, last + 1):
            check_seed(seed, option)
            seeds.append(seed)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1}) if len(set(seeds)) < len(seeds) else []
    if repeated:
        raise ValueError(f"{option}: seed {repeated[0]} is given twice")
    return tuple(seeds)


def stack_key(config: TrainConfig) -> tuple:
    """Configs with equal keys train in one stack: the same model shape and batch shape (the
    architecture, T, the task and its vocabulary, the batch size) and forward (`--fast-path`), and
    no `--clamp` (its hooks sit on one model)."""
    return (
        config.task_name,
        repr(config.model),
        config.task.seq_len,
        config.optim.batch_size,
        config.run.fast_path,
        config.optim.clamp,
    )


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def run_bytes(config: TrainConfig, vocab_size: int) -> int:
    """A rough upper estimate of one run's memory in a stack: its parameters with their gradients
    and optimizer state, and the activations of a training step (every position, every layer)."""
    m, t, o = config.model, config.task, config.optim
    d, T, B, L, N = m.d_model, t.seq_len, o.batch_size, m.n_layers, vocab_size
    width = m.mlp_width * d if m.mlp == "relu" else d
    params = L * (4 * d * d + (2 * d * width if m.mlp != "none" else 0)) + 2 * N * d + T * d
    activations = B * T * (L * (12 * d + 3 * m.n_heads * T + (2 * width if m.mlp != "none" else 0)) + 4 * N)
    return _BYTES * (4 * params + activations)


def check_stack_memory(configs: Sequence[TrainConfig], vocab_size: int, device: torch.device) -> None:
    """ValueError naming --seeds when the runs would not fit in the device's available memory."""
    available = _available_bytes(device)
    needed = sum(run_bytes(c, vocab_size) for c in configs)
    if available is not None and needed > available:
        raise ValueError(
            f"{SEEDS}: {len(configs)} runs of this size need about {needed / 2**30:.1f} GiB, "
            f"{available / 2**30:.1f} GiB is available on {device}; give fewer seeds"
        )


def use_batched(configs: Sequence[TrainConfig], device: torch.device) -> bool:
    """The default step of a stack (`train_stacked`'s `batched=None`)."""
    c = configs[0]
    if len(configs) < 2 or c.optim.clamp:
        return False
    if device.type != "cpu" or torch.get_num_threads() > 1:
        # the batched step's larger ops keep several CPU threads busy where a small run's leave
        # them idle (docs/tuning.md: faster batched at every size measured on 2 threads)
        return True
    # one thread: batched only where it gains, small batches on the fast path
    return supports_fast_path(c.model) and c.optim.batch_size * c.task.seq_len <= BATCHED_MAX_TOKENS


def train_stacked(
    configs: Sequence[TrainConfig],
    run_dirs: Sequence[Path],
    *,
    resume: bool = False,
    device: str = "auto",
    wandb_mode: str = "off",
    progress: bool = True,
    log: Callable[[str], None] = print,
    batched: bool | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[RunResult]:
    """Train (or resume) the runs `configs` into `run_dirs` side by side (one `stack_key`).

    `batched`: one forward and backward for all runs (True), each run's own step in turn (False),
    or the default (`use_batched`). `on_step(n)`: called after each step of the stack, n the number
    of steps done (as `train`'s for one run). A start-up failure removes the directories this call created,
    as `train` does for one run; Ctrl-C stops every run at the same step, each checkpointed."""
    if len(configs) != len(run_dirs) or not configs:
        raise ValueError("train_stacked takes one run directory per config, and at least one")
    if len({stack_key(c) for c in configs}) > 1:
        raise ValueError("stacked runs must share the model, sequence length, batch size and task")
    if len(configs) == 1:
        return [
            train(configs[0], run_dirs[0], resume=resume, device=device, wandb_mode=wandb_mode,
                  progress=progress, on_step=on_step, log=log)
        ]  # fmt: skip
    run_dirs = [Path(d) for d in run_dirs]
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    for config in configs:
        config.validate()
    points = (
        [resume_point(d, c, dev, log) for d, c in zip(run_dirs, configs)] if resume else [None] * len(configs)
    )
    created: list[list[Path] | None] = []
    parts = [_parts(c, wandb_mode, progress and i == 0, None, ()) for i, c in enumerate(configs)]
    loops: list[_Loop] = []
    flag = _StopFlag()
    try:
        for config, run_dir, point, run_parts in zip(configs, run_dirs, points, parts):
            created.append(None if resume else prepare_run_dir(run_dir, config, stack_dir(run_dirs)))
            loops.append(
                _open_run(config, run_dir, dev, point, resume=resume, parts=run_parts, callbacks=(),
                          groups=None, log=log)
            )  # fmt: skip
        for i, loop in enumerate(loops):
            loop.run.extras[STACK_INDEX] = i  # its model's place in the StackedForward
        step_batched = use_batched(configs, dev) if batched is None else batched
        forward = StackedForward([loop.run.model for loop in loops]) if step_batched else None
        t_start = time.perf_counter()
        with _stop_on_signals(flag):
            _run_steps(loops, forward, flag, on_step)
        elapsed = time.perf_counter() - t_start
    except BaseException as err:
        for run_parts in parts:
            for part in run_parts:
                part.close()
        for i, run_dir in enumerate(run_dirs[: len(created)]):
            if created[i] is not None and (i >= len(loops) or loops[i].n_updates == 0):
                remove_new_run(run_dir, created[i])
        phase = f"at step {max(loop.run.step for loop in loops)}" if loops else "building the models"
        oom = _out_of_memory(err, configs[0], phase, dev)
        if oom is not None:
            raise oom from None
        raise
    return [_finish(loop, run_parts, elapsed, log) for loop, run_parts in zip(loops, parts)]


def _run_steps(
    loops: Sequence[_Loop],
    forward: StackedForward | None,
    flag: _StopFlag,
    on_step: Callable[[int], None] | None = None,
) -> None:
    """Step every run from its own start (runs resumed from different checkpoints join when the
    stack reaches their step) to its own end; a diverged run leaves the stack."""
    for loop in loops:
        loop.run.model.train()
    live = list(loops)
    first = min(loop.run.start_step for loop in loops)
    last = max(loop.run.config.optim.steps for loop in loops)
    for step in range(first, last):
        due = [loop for loop in live if loop.run.step == step < loop.run.config.optim.steps]
        if due:
            stopped = _batched_step(due, step, forward) if forward is not None else _each_step(due, step)
            for loop in stopped:
                loop.status = "diverged"
                loop.run.step = step
                live.remove(loop)
            if on_step is not None:
                on_step(step + 1)
        if flag.signum is not None:
            for loop in live:
                if loop.run.step < loop.run.config.optim.steps:
                    loop.status = "interrupted"
            break
    for loop in loops:
        loop.end()


def _each_step(due: Sequence[_Loop], step: int) -> list[_Loop]:
    """Each run's own step, in turn (exactly a separate run's); returns the runs that diverged."""
    return [loop for loop in due if not loop.step(step)]


def _draw_batches(due: Sequence[_Loop], step: int) -> list[TokenBatch]:
    """The batch of `step` of each run, each exactly what its own generator gives; the runs whose
    tasks have one config draw theirs together (`tasks.protocol.sample_many`)."""
    by_task: dict[str, list[int]] = {}
    for i, loop in enumerate(due):
        by_task.setdefault(repr((loop.run.config.task_name, loop.run.config.task)), []).append(i)
    batches: list[TokenBatch | None] = [None] * len(due)
    for members in by_task.values():
        first = due[members[0]].run
        drawn = sample_many(
            first.task, first.config.optim.batch_size, [due[i].batch_generator(step) for i in members]
        )
        for i, batch in zip(members, drawn):
            batches[i] = batch
    return batches


def _loss_sums(
    forward: StackedForward, due: Sequence[_Loop], states: Sequence[_StepState]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the cross-entropies over each run's `--loss-on` targets [k], their number [k]).

    With the loss on the outputs of two-layer fast-path models and batches of at least
    `SELECTED_MIN_TOKENS` tokens, the logits come at the selected queries only
    (`StackedForward.at_queries`), as a single run's do; otherwise at every position, weighted by
    the runs' masks: on smaller batches the queries' sorting, grouping and padding cost more than
    the FLOPs they save (docs/tuning.md)."""
    tokens = torch.stack([s.batch.inputs for s in states])
    targets = torch.stack([s.batch.targets for s in states])
    masks = torch.stack(
        [loop.run.task.loss_mask(s.batch, loop.run.config.optim.loss_on) for loop, s in zip(due, states)]
    )
    runs = [loop.run.extras[STACK_INDEX] for loop in due]
    counts = masks.sum(dim=(1, 2)).to(torch.float32)
    if not bool(counts.any()):
        return counts, counts
    _, B, T = tokens.shape
    on_outputs = all(loop.run.config.optim.loss_on == "outputs" for loop in due)
    if forward.selects_queries and on_outputs and B * T >= SELECTED_MIN_TOKENS:
        sums = counts.new_zeros(len(due))
        for group in forward.at_queries(tokens, masks, runs):
            group_targets = targets.gather(1, group.sequences.unsqueeze(-1).expand(-1, -1, T))
            cross_entropy = F.cross_entropy(
                group.logits.flatten(0, 2), group_targets.gather(2, group.order).flatten(), reduction="none"
            )
            sums = sums + (cross_entropy.view(group.valid.shape) * group.valid).sum(dim=(1, 2))
        return sums, counts
    logits = forward(tokens, runs)
    cross_entropy = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), reduction="none")
    return (cross_entropy.view(masks.shape) * masks).sum(dim=(1, 2)), counts


def _batched_step(due: Sequence[_Loop], step: int, forward: StackedForward) -> list[_Loop]:
    """One forward and backward for the runs `due`, then each run's optimizer; returns the runs that
    diverged. A run's loss is the mean cross-entropy over its `--loss-on` targets, as alone."""
    states: list[_StepState] = [loop.begin(step, batch) for loop, batch in zip(due, _draw_batches(due, step))]
    sums, counts = _loss_sums(forward, due, states)
    losses = sums / counts.clamp(min=1.0)
    values, has_target = losses.tolist(), (counts > 0).tolist()
    diverged, updated = [], []
    for i, (loop, state) in enumerate(zip(due, states)):
        if has_target[i] and not math.isfinite(values[i]):
            loop.stop_diverged(step, values[i], state)
            diverged.append(i)
        elif has_target[i] and state.learning:
            updated.append(i)
    if updated:
        for i in updated:
            due[i].run.optimizer.zero_grad(set_to_none=True)
        losses[updated].sum().backward()
    for i, (loop, state) in enumerate(zip(due, states)):
        if i not in diverged:
            loop.conclude(step, state, values[i] if i in updated else None)
    return [due[i] for i in diverged]


__all__ = [
    "BATCHED_MAX_TOKENS",
    "MAX_RUNS",
    "RUN_PREFIX",
    "SEEDS",
    "SELECTED_MIN_TOKENS",
    "check_stack_memory",
    "parse_seeds",
    "run_bytes",
    "stack_key",
    "stack_runs",
    "train_stacked",
    "use_batched",
]
