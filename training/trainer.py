"""The transformer trainer: one run of any registered task, its parts plugged in as callbacks.

Data: a fresh batch every step, drawn from a generator seeded by (seed, step), so a batch depends
only on its step and a resumed run sees exactly the batches an uninterrupted run would.
Evaluation: every `eval_every` steps (and at the end) on one fixed held-out batch, as metric
groups (`training.evaluation`). The run directory (`training.run_dir`) is claimed, checked on
resume and undone on a failed start apart from the step loop (`_step_loop`).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from birth.base.io import atomic_write_json
from birth.base.memory_errors import OutOfMemory, as_out_of_memory
from birth.base.runtime import resolve_device
from birth.base.seeds import step_seed
from birth.models.transformer import (
    fast_cross_entropy,
    fast_logits,
    native,
    supports_fast_path,
    trainable_parameters,
)
from tasks.protocol import Task, TokenBatch
from training.allocator import keep_freed_memory
from training.callbacks import Callback, Checkpoints, MetricsLog, OnStep, ProgressBar, TrainingRun, Wandb
from training.checkpoint import CheckpointError, checkpoint_path, load_model_state
from training.clamps import install_clamps
from training.compilation import StepCompilation
from training.config import OptimConfig, TrainConfig
from training.evaluation import (
    PROBES,
    STEP,
    THRESHOLD,
    TRAIN_LOSS,
    MetricGroup,
    evaluate,
    format_order,
    learning_order,
    standard_groups,
)
from training.logger import read_metrics
from training.matrices import gradient_norms
from training.run_dir import (
    CONFIG,
    METRICS,
    ResumePoint,
    prepare_run_dir,
    read_run_config,
    record_environment,
    remove_new_run,
    resume_point,
    write_summary,
)
from training.schedule import Schedule, prepare_schedule, set_lr

__all__ = [
    "OutOfMemory",
    "RunResult",
    "make_optimizer",
    "prepare_run_dir",
    "print_summary",
    "read_run_config",
    "train",
    "training_loss",
]


@dataclass
class RunResult:
    status: str  # completed | interrupted | diverged
    step: int
    run_dir: Path
    final: dict[str, float] = field(default_factory=dict)
    order: dict[str, int | None] = field(default_factory=dict)
    seconds_per_step: float | None = None  # None when this process made no update (a finished run resumed)

    @property
    def exit_code(self) -> int:
        return {"completed": 0, "interrupted": 130, "diverged": 1}[self.status]


def training_loss(
    model: nn.Module,
    batch: TokenBatch,
    config: TrainConfig,
    task: Task | None = None,
    *,
    compiled: bool = False,
) -> torch.Tensor | None:
    """Cross-entropy on the targets `--loss-on` selects (`Task.loss_mask`; None when the batch has
    none). `task`: the run's task (default: built from the config); `compiled`: the fast path's
    compiled step where it has one (`training.compilation`)."""
    loss_on = config.optim.loss_on
    mask = (task or config.build_task(batch.tokens.device)).loss_mask(batch, loss_on)
    if not mask.any():
        return None
    if config.run.fast_path and supports_fast_path(config.model):
        # the fast path evaluates the last layer at the selected queries only; other architectures
        # (several heads, LayerNorm, a ReLU MLP) train through the TransformerLens forward
        if loss_on == "outputs":
            return fast_cross_entropy(model, batch.inputs, mask, batch.targets, compiled=compiled)
        logits = fast_logits(model, batch.inputs, compiled=compiled)[mask]
    else:
        logits = model(batch.inputs)[mask]
    return F.cross_entropy(logits, batch.targets[mask])


def make_optimizer(params: list[nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)


class _StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:  # signal handler: only sets the flag
        self.signum = signum


@contextmanager
def _stop_on_signals(flag: _StopFlag) -> Iterator[None]:
    """SIGINT/SIGTERM set a flag; the loop then checkpoints and returns (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _oom_sizes(config: TrainConfig, where: str) -> str:
    m, t, o = config.model, config.task, config.optim
    if where == "building the model":
        return f"--d-model {m.d_model}"
    return f"--d-model {m.d_model}, --seq-len {t.seq_len}, --batch-size {o.batch_size}"


def _out_of_memory(
    err: BaseException, config: TrainConfig, where: str, dev: torch.device
) -> OutOfMemory | None:
    """`err` as the one-line OutOfMemory naming the sizes to lower (None: it is no out-of-memory)."""
    return as_out_of_memory(err, _oom_sizes(config, where), where, dev)


@dataclass
class _StepState:
    """A step between its two halves (`_Loop.begin`, `_Loop.conclude`)."""

    batch: TokenBatch
    learning: bool  # whether any matrix trains at this step
    pending: dict | None  # the evaluation row of this step, written once the gradients are known


@dataclass
class _Loop:
    """The step loop of one run: its parts, its metric groups and where it stands."""

    run: TrainingRun
    schedule: Schedule
    groups: Sequence[MetricGroup]
    callbacks: Sequence[Callback]
    log: Callable[[str], None]
    status: str = "completed"
    last_row: dict = field(default_factory=dict)
    n_updates: int = 0
    compilation: StepCompilation = field(init=False)

    def __post_init__(self) -> None:
        self.compilation = StepCompilation.for_run(self.run.config)

    def evaluate(self, step: int) -> dict:
        run = self.run
        run.model.eval()
        row = {
            STEP: step,
            **evaluate(run.model, run.eval_batch, self.groups, fast_path=run.config.run.fast_path),
        }
        if run.train_loss is not None:
            row[TRAIN_LOSS] = run.train_loss
        for callback in self.callbacks:
            callback.on_evaluate(run, step)
        run.model.train()
        return row

    def write(self, row: dict) -> None:
        for callback in self.callbacks:
            callback.on_row(self.run, row)

    def batch_generator(self, step: int) -> torch.Generator:
        """The generator the batch of `step` is drawn from (seeded by the run's seed and `step`)."""
        return self.run.task.generator(step_seed(self.run.config.run.seed, step))

    def begin(self, step: int, batch: TokenBatch | None = None) -> _StepState:
        """The first half of a step: an evaluation when due, the batch of `step` (drawn here unless
        given: `training.stacked` draws those of a stack together), the schedule."""
        run, config = self.run, self.run.config
        pending = None  # an evaluation row waiting for the gradient norms of this step
        if step % config.run.eval_every == 0:
            # written after this step's backward, with the gradient norms at the evaluated
            # parameters (the gradient of the batch of this step: a resumed run has it too)
            self.last_row = pending = self.evaluate(step)
        if batch is None:
            batch = run.task.sample(config.optim.batch_size, self.batch_generator(step))
        learning = self.schedule.apply(step)  # False: every scheduled matrix is frozen at this step
        o = config.optim
        set_lr(run.optimizer, o.lr, step, o.steps, o.lr_decay)
        return _StepState(batch, learning, pending)

    def stop_diverged(self, step: int, loss: float, state: _StepState) -> None:
        run = self.run
        where = (
            f"last good checkpoint: {checkpoint_path(run.run_dir, run.last_saved)}"
            if run.last_saved is not None
            else "no checkpoint was written yet"
        )
        self.log(f"loss became {loss} at step {step}; stopping ({where})")
        if state.pending is not None:
            self.write(state.pending)

    def conclude(self, step: int, state: _StepState, loss: float | None) -> None:
        """The second half of a step, its gradients computed (`loss` None: no update)."""
        run = self.run
        if loss is not None:
            if state.pending is not None:
                state.pending.update(gradient_norms(self.schedule.matrices))
            run.optimizer.step()
            run.train_loss = loss
        if state.pending is not None:
            self.write(state.pending)
        self.n_updates += 1
        run.step = step + 1
        for callback in self.callbacks:
            callback.on_step(run, loss is not None)

    def step(self, step: int) -> bool:
        """One step (an evaluation first when due); False when the loss diverged."""
        run = self.run
        state = self.begin(step)
        started = time.perf_counter()
        compiled = self.compilation.use(step)
        loss = training_loss(run.model, state.batch, run.config, run.task, compiled=compiled)
        if loss is not None and not torch.isfinite(loss):
            self.stop_diverged(step, loss.item(), state)
            return False
        updated = loss is not None and state.learning  # None: no target to learn from in this batch
        if updated:
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.compilation.record(time.perf_counter() - started)
        self.conclude(step, state, loss.item() if updated else None)
        return True

    def run_steps(self, flag: _StopFlag) -> None:
        run, steps = self.run, self.run.config.optim.steps
        run.model.train()
        for step in range(run.start_step, steps):
            if not self.step(step):
                self.status = "diverged"
                run.step = step
                break
            if flag.signum is not None:
                self.status = "interrupted"
                break
        self.end()

    def end(self) -> None:
        """After the last step: the final evaluation of a completed run, then the parts' `on_end`."""
        if self.status == "completed":
            self.last_row = self.evaluate(self.run.step)
            self.write(self.last_row)
        for callback in self.callbacks:
            callback.on_end(self.run, self.status)


def _build(
    config: TrainConfig,
    task: Task,
    device: torch.device,
    point: ResumePoint | None,
    callbacks: Sequence[Callback],
) -> tuple[nn.Module, Schedule, torch.optim.Optimizer]:
    """The model, its schedule and optimizer, restored from the checkpoint of `point` if any."""
    model = config.build_model(task.vocab_size, device=device)
    for callback in callbacks:
        callback.on_model(model)
    # --clamp: its matrices written and frozen before the schedule binds the trainable ones; its
    # pattern hooks stay on the model for the run (`training.clamps`)
    install_clamps(model, task, config.optim.clamp, config.optim.target_scale)
    # --init-at-target writes its memories now (a checkpoint below overrides them); --schedule
    # toggles requires_grad per step, so it binds every trainable matrix before the optimizer
    o = config.optim
    schedule = prepare_schedule(model, o.schedule, o.init_at_target, o.target_scale, task)
    optimizer = make_optimizer(trainable_parameters(model), o)
    if point is not None and point.checkpoint is not None:
        load_model_state(native(model), point.checkpoint["model"], point.path)
        try:
            optimizer.load_state_dict(point.checkpoint["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{point.path}: optimizer state does not match: {err}") from None
    return model, schedule, optimizer


def _parts(config: TrainConfig, wandb_mode: str, progress: bool, on_step, extra: Sequence[Callback]):
    parts: list[Callback] = [MetricsLog(), Wandb(wandb_mode), Checkpoints()]
    if progress:
        parts.append(ProgressBar())
    if on_step is not None:
        parts.append(OnStep(on_step))
    return parts + list(extra)


def _open_run(
    config: TrainConfig,
    run_dir: Path,
    dev: torch.device,
    point: ResumePoint | None,
    *,
    resume: bool,
    parts: Sequence[Callback],
    callbacks: Sequence[Callback],
    groups: Callable[[Task, nn.Module], Sequence[MetricGroup]] | None,
    log: Callable[[str], None],
) -> _Loop:
    """A run ready to step: its task, model, optimizer and held-out batch, its environment recorded,
    its parts started (`train`; `training.stacked` opens several side by side)."""
    task = config.build_task(dev)
    model, schedule, optimizer = _build(config, task, dev, point, list(callbacks))
    if resume:
        # only now that the checkpoint (if any) loaded: record a possibly extended number of steps
        atomic_write_json(run_dir / CONFIG, config.to_dict())
    warning = record_environment(run_dir, dev, point.step if point is not None else None)
    if warning:
        print(warning, file=sys.stderr)
    start = point.step if point is not None else 0
    ckpt = point.checkpoint if point is not None else None
    run = TrainingRun(
        config,
        run_dir,
        task,
        model,
        dev,
        resumed=resume,
        start_step=start,
        optimizer=optimizer,
        eval_batch=task.sample(config.run.eval_batch_size, task.generator(config.run.eval_seed)),
        step=start,
        train_loss=ckpt.get("train_loss") if ckpt is not None else None,
        last_saved=start if ckpt is not None else None,
    )
    chosen = groups(task, model) if groups is not None else _default_groups(config, task, schedule)
    loop = _Loop(run, schedule, chosen, parts, log)
    for part in parts:
        part.on_start(run)
    return loop


def train(
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    device: str = "auto",
    wandb_mode: str = "off",
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Callback] = (),
    groups: Callable[[Task, nn.Module], Sequence[MetricGroup]] | None = None,
) -> RunResult:
    """Train (or resume) one run in `run_dir`. `on_step(step)` is called after each update.

    `callbacks`: parts added after the run's own (`training.callbacks`). `groups(task, model)`:
    the metric groups of each evaluation (default: `standard_groups` as `--attention-probes` says,
    with the trained matrices' norms).

    A fresh run that fails before its first update (an error, Ctrl-C, memory) leaves nothing behind:
    the directory it created is removed. A run killed before its first checkpoint (SIGKILL) keeps
    its config.json, and `resume` restarts it from step 0 with that config."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()  # freed activations are reused instead of page-faulted anew each step
    config.validate()
    point = resume_point(run_dir, config, dev, log) if resume else None
    created = None if resume else prepare_run_dir(run_dir, config)  # the directories this call created
    parts = _parts(config, wandb_mode, progress, on_step, callbacks)
    loop, phase = None, "building the model"
    flag = _StopFlag()
    try:
        loop = _open_run(
            config,
            run_dir,
            dev,
            point,
            resume=resume,
            parts=parts,
            callbacks=callbacks,
            groups=groups,
            log=log,
        )
        phase = "at the first step"
        t_start = time.perf_counter()
        with _stop_on_signals(flag):
            loop.run_steps(flag)
        elapsed = time.perf_counter() - t_start
    except BaseException as err:
        for part in parts:
            part.close()
        if created is not None and (loop is None or loop.n_updates == 0):
            remove_new_run(run_dir, created)
        if loop is not None and loop.n_updates:
            phase = f"at step {loop.run.step}"
        oom = _out_of_memory(err, config, phase, dev)
        if oom is not None:
            raise oom from None
        raise
    return _finish(loop, parts, elapsed, log)


def _default_groups(config: TrainConfig, task: Task, schedule: Schedule) -> list[MetricGroup]:
    return standard_groups(
        task, loss_on=config.optim.loss_on, attention=config.run.attention_probes, matrices=schedule.matrices
    )


def _finish(loop: _Loop, parts: Sequence[Callback], elapsed: float, log: Callable[[str], None]) -> RunResult:
    """Close the run's parts and write its summary."""
    run = loop.run
    wandb = next(part for part in parts if isinstance(part, Wandb))
    for part in parts:
        if part is not wandb:
            part.close()
    order = learning_order(read_metrics(run.run_dir / METRICS))
    result = RunResult(
        status=loop.status,
        step=run.step,
        run_dir=run.run_dir,
        final=loop.last_row,
        order=order,
        seconds_per_step=elapsed / loop.n_updates if loop.n_updates else None,
    )
    summary = write_summary(run.run_dir, loop.status, run.step, loop.last_row, order, result.seconds_per_step)
    wandb.summary(summary)
    wandb.close()
    if loop.status == "interrupted":
        log(
            f"interrupted at step {run.step}; checkpoint written. Continue with: birth train --resume {run.run_dir}"
        )
    return result


def print_summary(result: RunResult, log: Callable[[str], None] = print) -> None:
    """The run's status, its task's headline metrics, the probes and the learning order."""
    f = result.final
    task = read_run_config(result.run_dir).build_task()
    speed = "no step trained" if result.seconds_per_step is None else f"{result.seconds_per_step:.3f} s/step"
    log(f"run {result.run_dir}: {result.status} at step {result.step} ({speed})")
    if f:
        log(
            "  "
            + "   ".join(f"{label}: {f.get(key, float('nan')):.4f}" for key, label in task.headline.items())
        )
        probes = {k.removeprefix(PROBES): v for k, v in f.items() if k.startswith(PROBES)}
        if probes:
            log("  probes: " + "   ".join(f"{k} {v:.3f}" for k, v in probes.items()))
    log(f"  learning order (first step >= {THRESHOLD}): {format_order(result.order)}")
