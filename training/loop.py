"""Training loop for the triggered-bigram transformer, with evaluation, probes and checkpoints.

Data: a fresh batch every step, drawn from a generator seeded by (seed, step), so a batch depends
only on its step and a resumed run sees exactly the batches an uninterrupted run would.
Evaluation: every `eval_every` steps (and at the end) on one fixed held-out batch.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from birth.base.io import OutputError, atomic_write_json, claim_output_dir, release_claim
from birth.base.seeds import step_seed
from birth.metrics import evaluate, first_crossing, gradient_norms, loss_mask
from birth.models.transformer import fast_logits, native, supports_fast_path, trainable_parameters
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import Batch, TriggeredBigram
from training.allocator import keep_freed_memory
from training.checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_latest_checkpoint,
    load_model_state,
    save_checkpoint,
)
from training.config import OptimConfig, TrainConfig
from training.logger import MetricsFile, WandbLogger, read_metrics
from training.schedule import prepare_schedule

THRESHOLD = 0.9  # a probe "has learned" its memory once it reaches this recall


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        if device != "cuda" and int(device[5:]) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s)")
    return torch.device(device)


def training_loss(model: nn.Module, batch: Batch, config: TrainConfig) -> torch.Tensor | None:
    """Cross-entropy on the selected targets (None when the batch has none)."""
    loss_on = config.optim.loss_on
    mask = loss_mask(batch, loss_on)
    if not mask.any():
        return None
    if config.run.fast_path and supports_fast_path(config.model):
        # the fast path evaluates the last layer at the selected queries only; other architectures
        # (several heads, LayerNorm, a ReLU MLP) train through the TransformerLens forward
        logits = fast_logits(model, batch.inputs, mask if loss_on == "outputs" else None)
        if loss_on != "outputs":
            logits = logits[mask]
    else:
        logits = model(batch.inputs)[mask]
    return F.cross_entropy(logits, batch.targets[mask])


def learning_order(rows: list[dict], threshold: float = THRESHOLD) -> dict[str, int | None]:
    """First step at which each recall probe reaches `threshold` (None if never); the W_F probe is
    a divergence (lower is better) and has no such step."""
    from probes.recall import FF_PROBE

    keys = [k for k in (rows[0] if rows else {}) if k.startswith("probes/") and k != f"probes/{FF_PROBE}"]
    steps = [r["step"] for r in rows]
    return {
        k.removeprefix("probes/"): first_crossing(steps, [r.get(k) for r in rows], threshold) for k in keys
    }


def format_order(order: dict[str, int | None]) -> str:
    reached = sorted((s, k) for k, s in order.items() if s is not None)
    text = " → ".join(f"{k} ({s})" for s, k in reached)
    missing = [k for k, s in order.items() if s is None]
    if missing:
        text += ("; " if text else "") + "not reached: " + ", ".join(missing)
    return text or "no probes"


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


class _StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:  # signal handler: only sets the flag
        self.signum = signum


@contextmanager
def _stop_on_signals(flag: _StopFlag) -> Iterator[None]:
    """SIGINT/SIGTERM set a flag; the loop then checkpoints and returns (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def make_optimizer(params: list[nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)


def _same_run(a: dict, b: dict) -> bool:
    """Two run configs describe the same run; `steps` may differ (a resume may extend a run)."""

    def without_steps(c: dict) -> dict:
        return {**c, "optim": {**c.get("optim", {}), "steps": None}}

    return without_steps(a) == without_steps(b)


def prepare_run_dir(run_dir: Path, config: TrainConfig) -> list[Path]:
    """Claim a fresh run directory and write its config; refuse one that already holds files.

    The claim is atomic across processes (`birth.base.io.claim_output_dir`): of two sweep agents given
    the same --out, exactly one starts. Returns the directories this call created (the run
    directory and any missing parents such as `runs/`, innermost first), so that a start-up failure
    removes only what it created."""
    run_dir = Path(run_dir)
    created = []
    missing = run_dir
    while not missing.exists():
        created.append(missing)
        missing = missing.parent
    try:
        claim_output_dir(run_dir, option="--out")
    except OutputError:
        if run_dir.is_dir():  # not empty, or claimed this instant by another process
            raise OutputError(
                f"run directory {run_dir} already exists and is not empty; "
                f"use --resume {run_dir} to continue it or choose another --out"
            ) from None
        raise
    atomic_write_json(run_dir / "config.json", config.to_dict())
    release_claim(run_dir)
    return created


def _remove_new_run(run_dir: Path, created: list[Path]) -> None:
    """Undo a run that failed before its first step: a directory it created goes, and so do the
    parents it created while they are empty (another run may have started in one meanwhile); a run
    directory that existed (it was empty when claimed, so everything in it is this run's) is
    emptied but kept."""
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in created[1:]:
            try:
                parent.rmdir()  # only if empty
            except OSError:
                break
        return
    for child in run_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


class OutOfMemory(ValueError):
    """The run's sizes do not fit in memory (one line naming the sizes and the bytes asked for)."""


def _bytes_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _requested(message: str) -> str | None:
    """The allocation torch's message reports ("you tried to allocate 4398046511104 bytes" on CPU,
    "Tried to allocate 2.00 GiB" on CUDA)."""
    m = re.search(r"allocate (\d+) bytes", message)
    if m:
        return _bytes_text(int(m.group(1)))
    m = re.search(r"allocate ([\d.]+ [KMGTP]i?B)", message)
    return m.group(1) if m else None


def _available(device: torch.device) -> str | None:
    try:
        if device.type == "cuda":
            return f"{_bytes_text(torch.cuda.mem_get_info(device)[1])} on {device}"
        return f"{_bytes_text(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))} of RAM"
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None


# torch's CPU allocator says "not enough memory" or "can't allocate memory", CUDA's "out of memory"
_OOM_TEXT = re.compile(r"not enough memory|can't allocate memory|out of memory", re.IGNORECASE)


def _as_out_of_memory(
    err: BaseException, config: TrainConfig, device: torch.device, where: str
) -> OutOfMemory | None:
    """A one-line OutOfMemory for torch's and Python's memory errors (None for other errors)."""
    text = str(err)
    oom = isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and _OOM_TEXT.search(text) is not None
    )
    if not oom:
        return None
    m, t, o = config.model, config.task, config.optim
    sizes = (
        f"--d-model {m.d_model}"
        if where == "building the model"
        else (f"--d-model {m.d_model}, --seq-len {t.seq_len}, --batch-size {o.batch_size}")
    )
    asked, have = _requested(text), _available(device)
    needed = f": torch asked for {asked} in one allocation" if asked else ""
    machine = f" (this machine has {have})" if have else ""
    return OutOfMemory(f"out of memory {where} with {sizes}{needed}{machine}; choose smaller sizes")


def environment(device: torch.device) -> dict:
    """What, besides the config, changes a run's numbers in the last digits: torch's CPU thread
    count (the order of floating-point reductions), the device and the torch version."""
    return {
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


_ENV_KEYS = ("torch_threads", "device", "torch")


def _record_environment(run_dir: Path, device: torch.device, start_step: int | None) -> str | None:
    """Write RUN/environment.json (a resume appends to its "resumes"); return a warning when this
    process's threads, device or torch version differ from those the run started with."""
    path = run_dir / "environment.json"
    now = environment(device)
    if start_step is None:
        atomic_write_json(path, {**now, "resumes": []})
        return None
    try:
        record = json.loads(path.read_text())
        started = {k: record[k] for k in _ENV_KEYS}
    except (OSError, ValueError, KeyError, TypeError):
        record, started = {**now, "resumes": [], "note": "recorded at the first resume"}, None
    record.setdefault("resumes", []).append({"step": start_step, **now})
    atomic_write_json(path, record)
    if started is None:
        return None
    differ = [f"{k} {now[k]} (it started with {started[k]})" for k in _ENV_KEYS if started[k] != now[k]]
    if not differ:
        return None
    return (
        f"warning: resuming {run_dir} with {', '.join(differ)}: its curve may differ in the last digits "
        "from an uninterrupted run (docs/usage.md, Reliability)"
    )


def read_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.json)")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    return TrainConfig.from_dict(obj, source=str(path))


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
) -> RunResult:
    """Train (or resume) one run in `run_dir`. `on_step(step)` is called after each update.

    A fresh run that fails before its first update (an error, Ctrl-C, memory) leaves nothing behind:
    the directory it created is removed. A run killed before its first checkpoint (SIGKILL) keeps
    its config.json, and `resume` restarts it from step 0 with that config."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()  # freed activations are reused instead of page-faulted anew each step
    stats = load_stats()
    config.validate(stats.vocab_size)

    start_step = 0
    ckpt, ckpt_path = None, None
    created: list[Path] | None = None  # fresh run: the directories this call created
    if resume:
        saved = read_run_config(run_dir)
        if not _same_run(saved.to_dict(), config.to_dict()):
            raise ValueError(f"--resume: the config differs from {run_dir / 'config.json'}")
        if list_checkpoints(run_dir):
            ckpt_path, ckpt = load_latest_checkpoint(run_dir, map_location=dev)
            if not _same_run(ckpt["config"], saved.to_dict()):
                raise CheckpointError(f"{ckpt_path} was written by a different run config")
            start_step = int(ckpt["step"])
            if config.optim.steps < start_step:
                raise ValueError(f"--steps {config.optim.steps} is below the checkpoint's step {start_step}")
        else:
            log(
                f"{run_dir} has no checkpoint (it stopped before its first one): "
                "restarting it from step 0 with its config.json"
            )
    else:
        created = prepare_run_dir(run_dir, config)

    run, steps = config.run, config.optim.steps
    flag = _StopFlag()
    status, step, last_row = "completed", start_step, {}
    train_loss: float | None = ckpt.get("train_loss") if ckpt is not None else None
    last_saved = start_step if ckpt is not None else None
    bar = metrics = wb = None
    n_updates, phase = 0, "building the model"
    try:
        task = TriggeredBigram(config.task, stats, device=dev)
        model = config.build_model(stats.vocab_size, device=dev)
        # --init-at-target writes its memories now (a checkpoint below overrides them); --schedule
        # toggles requires_grad per step, so it binds every trainable matrix before the optimizer
        schedule = prepare_schedule(model, config, task)
        params = trainable_parameters(model)
        optimizer = make_optimizer(params, config.optim)
        phase = "at the first step"
        if ckpt is not None:
            load_model_state(native(model), ckpt["model"], ckpt_path)
            try:
                optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError, RuntimeError) as err:
                raise CheckpointError(f"{ckpt_path}: optimizer state does not match: {err}") from None
        if resume:
            # only now that the checkpoint (if any) loaded: record a possibly extended number of steps
            atomic_write_json(run_dir / "config.json", config.to_dict())
        warning = _record_environment(run_dir, dev, start_step if resume else None)
        if warning:
            print(warning, file=sys.stderr)

        probe_triggers = task.fixed_triggers if config.task.trigger_mode == "fixed" else None
        eval_batch = task.sample(config.run.eval_batch_size, task.generator(config.run.eval_seed))
        metrics = MetricsFile(run_dir / "metrics.jsonl", resume_step=start_step if resume else None)
        wandb_id_file = run_dir / "wandb_id.txt"
        wb = WandbLogger(
            wandb_mode,
            run_dir,
            config.to_dict(),
            name=run_dir.name,
            resume_id=wandb_id_file.read_text().strip() if resume and wandb_id_file.is_file() else None,
        )
        if wb.run_id:
            wandb_id_file.write_text(wb.run_id)

        def save(step: int) -> Path:
            path = checkpoint_path(run_dir, step)
            save_checkpoint(
                path,
                config=config.to_dict(),
                step=step,
                model_state=native(model).state_dict(),
                optimizer_state=optimizer.state_dict(),
                train_loss=train_loss,
            )
            return path

        def log_row(row: dict) -> None:
            metrics.write(row)
            wb.log(row)

        def do_eval(step: int, train_loss: float | None, write: bool = True) -> dict:
            model.eval()
            row = {
                "step": step,
                **evaluate(
                    model,
                    eval_batch,
                    loss_on=config.optim.loss_on,
                    fast_path=config.run.fast_path,
                    probe_triggers=probe_triggers,
                    attention_probes=run.attention_probes,
                    matrices=schedule.matrices,
                    bigram=stats.bigram_probs,  # the W_F probe, when the last layer has one
                ),
            }
            if train_loss is not None:
                row["train/loss"] = train_loss
            if write:
                log_row(row)
            if run.heatmap_every and step % run.heatmap_every == 0 and wb.run is not None:
                _log_heatmaps(wb, model, task, eval_batch, step, run_dir)
            model.train()
            return row

        t_start = time.perf_counter()
        with _stop_on_signals(flag):
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=steps, initial=start_step, desc="train", dynamic_ncols=True)
            model.train()
            for step in range(start_step, steps):
                pending = None  # an evaluation row waiting for the gradient norms of this step
                if step % run.eval_every == 0:
                    # written after this step's backward, with the gradient norms at the evaluated
                    # parameters (the gradient of the batch of this step: a resumed run has it too)
                    last_row = pending = do_eval(step, train_loss, write=False)
                    if bar is not None:
                        bar.set_postfix_str(_postfix(last_row))
                batch = task.sample(config.optim.batch_size, task.generator(step_seed(run.seed, step)))
                learning = schedule.apply(step)  # False: every scheduled matrix is frozen at this step
                loss = training_loss(model, batch, config)
                if loss is not None and not torch.isfinite(loss):
                    status = "diverged"
                    where = (
                        f"last good checkpoint: {checkpoint_path(run_dir, last_saved)}"
                        if (last_saved is not None)
                        else "no checkpoint was written yet"
                    )
                    log(f"loss became {loss.item()} at step {step}; stopping ({where})")
                    if pending is not None:
                        log_row(pending)
                    break
                if loss is not None and learning:  # None: no target to learn from in this batch
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if pending is not None:
                        pending.update(gradient_norms(schedule.matrices))
                    optimizer.step()
                    train_loss = loss.item()
                if pending is not None:
                    log_row(pending)
                n_updates += 1
                phase = f"at step {step + 1}"
                if bar is not None:
                    bar.update(1)
                done = step + 1
                if done % run.checkpoint_every == 0 and done < steps:
                    save(done)
                    last_saved = done
                if on_step is not None:
                    on_step(done)
                if flag.signum is not None:
                    status = "interrupted"
                    step = done
                    break
            else:
                step = steps
            if status != "diverged":
                if status == "completed":
                    last_row = do_eval(step, train_loss)
                if last_saved != step:
                    save(step)
                    last_saved = step
        elapsed = time.perf_counter() - t_start
    except BaseException as err:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
        if created is not None and n_updates == 0:
            if wb is not None:
                wb.finish()  # W&B's offline files live in the run directory
            _remove_new_run(run_dir, created)
        oom = _as_out_of_memory(err, config, dev, phase) if isinstance(err, Exception) else None
        if oom is not None:
            raise oom from None
        raise
    if bar is not None:
        bar.close()
    metrics.close()

    rows = read_metrics(run_dir / "metrics.jsonl")
    order = learning_order(rows)
    result = RunResult(
        status=status,
        step=step,
        run_dir=run_dir,
        final=last_row,
        order=order,
        seconds_per_step=elapsed / n_updates if n_updates else None,
    )
    summary = {
        "status": status,
        "step": step,
        **{f"final/{k}": v for k, v in last_row.items() if k != "step"},
        **{f"order/{k}": v for k, v in order.items()},
        "seconds_per_step": result.seconds_per_step,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    wb.summary(summary)
    wb.finish()
    if status == "interrupted":
        log(f"interrupted at step {step}; checkpoint written. Continue with: birth train --resume {run_dir}")
    return result


def _postfix(row: dict) -> str:
    parts = [f"icl {row.get('eval/icl_acc', float('nan')):.3f}"]
    for k, v in row.items():
        if k.startswith("probes/"):
            parts.append(f"{k.removeprefix('probes/')} {v:.2f}")
    return " ".join(parts)


def _log_heatmaps(wb: WandbLogger, model, task, batch, step: int, run_dir: Path) -> None:
    """Attention heatmaps of the first held-out sequence, as W&B images."""
    from probes.attention import save_attention_heatmaps  # matplotlib: imported only when used

    try:
        paths = save_attention_heatmaps(model, task.stats, batch, run_dir / "heatmaps", step=step)
    except Exception as err:  # noqa: BLE001 - a figure must never stop training
        print(f"warning: attention heatmap failed: {err}", file=sys.stderr)
        return
    wb.log_images({f"attention/layer{layer}": path for layer, path in enumerate(paths, start=1)}, step)


def print_summary(result: RunResult, log: Callable[[str], None] = print) -> None:
    f = result.final
    speed = "no step trained" if result.seconds_per_step is None else f"{result.seconds_per_step:.3f} s/step"
    log(f"run {result.run_dir}: {result.status} at step {result.step} ({speed})")
    if f:
        log(
            f"  in-context accuracy (counter >= 2): {f.get('eval/icl_acc', float('nan')):.4f}   "
            f"first-occurrence accuracy: {f.get('eval/first_acc', float('nan')):.4f}   "
            f"bigram loss: {f.get('eval/bigram_loss', float('nan')):.4f}"
        )
        probes = {k.removeprefix("probes/"): v for k, v in f.items() if k.startswith("probes/")}
        if probes:
            log("  probes: " + "   ".join(f"{k} {v:.3f}" for k, v in probes.items()))
    log(f"  learning order (first step >= {THRESHOLD}): {format_order(result.order)}")
