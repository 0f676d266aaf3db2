"""Training loop for the triggered-bigram transformer, with evaluation, probes and checkpoints.

Data: a fresh batch every step, drawn from a generator seeded by (seed, step), so a batch depends
only on its step and a resumed run sees exactly the batches an uninterrupted run would.
Evaluation: every `eval_every` steps (and at the end) on one fixed held-out batch.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from birth.io import atomic_write_json
from birth.metrics import evaluate, first_crossing, loss_mask
from birth.model import fast_logits, native, trainable_parameters
from birth.seeds import step_seed
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import Batch, TriggeredBigram
from training.allocator import keep_freed_memory
from training.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from training.config import OptimConfig, TrainConfig
from training.logger import MetricsFile, WandbLogger, read_metrics

THRESHOLD = 0.9  # a probe "has learned" its memory once it reaches this recall


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but CUDA is not available")
    return torch.device(device)


def training_loss(model: nn.Module, batch: Batch, config: TrainConfig) -> torch.Tensor | None:
    """Cross-entropy on the selected targets (None when the batch has none)."""
    loss_on = config.optim.loss_on
    mask = loss_mask(batch, loss_on)
    if not mask.any():
        return None
    if config.run.fast_path:
        # the fast path evaluates the last layer at the selected queries only
        logits = fast_logits(model, batch.inputs, mask if loss_on == "outputs" else None)
        if loss_on != "outputs":
            logits = logits[mask]
    else:
        logits = model(batch.inputs)[mask]
    return F.cross_entropy(logits, batch.targets[mask])


def learning_order(rows: list[dict], threshold: float = THRESHOLD) -> dict[str, int | None]:
    """First step at which each probe reaches `threshold` (None if never)."""
    keys = [k for k in (rows[0] if rows else {}) if k.startswith("probes/")]
    steps = [r["step"] for r in rows]
    return {k.removeprefix("probes/"): first_crossing(steps, [r.get(k) for r in rows], threshold) for k in keys}


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
    seconds_per_step: float = float("nan")

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


def prepare_run_dir(run_dir: Path, config: TrainConfig) -> None:
    """Create a fresh run directory; refuse one that already holds files."""
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(
            f"run directory {run_dir} already exists and is not empty; "
            f"use --resume {run_dir} to continue it or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.to_dict())


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
    """Train (or resume) one run in `run_dir`. `on_step(step)` is called after each update."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()  # freed activations are reused instead of page-faulted anew each step
    stats = load_stats()
    config.validate(stats.vocab_size)

    start_step = 0
    ckpt = None
    if resume:
        saved = read_run_config(run_dir)
        if not _same_run(saved.to_dict(), config.to_dict()):
            raise ValueError(f"--resume: the config differs from {run_dir / 'config.json'}")
        ckpt_path = latest_checkpoint(run_dir)
        ckpt = load_checkpoint(ckpt_path, map_location=dev)
        if not _same_run(ckpt["config"], saved.to_dict()):
            raise CheckpointError(f"{ckpt_path} was written by a different run config")
        start_step = int(ckpt["step"])
        if config.optim.steps < start_step:
            raise ValueError(f"--steps {config.optim.steps} is below the checkpoint's step {start_step}")
    else:
        prepare_run_dir(run_dir, config)

    task = TriggeredBigram(config.task, stats, device=dev)
    model = config.build_model(stats.vocab_size, device=dev)
    params = trainable_parameters(model)
    optimizer = make_optimizer(params, config.optim)
    if ckpt is not None:
        load_model_state(native(model), ckpt["model"], ckpt_path)
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{ckpt_path}: optimizer state does not match: {err}") from None
        # only now that the checkpoint loaded: record a possibly extended number of steps
        atomic_write_json(run_dir / "config.json", config.to_dict())

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

    def do_eval(step: int, train_loss: float | None) -> dict:
        model.eval()
        row = {
            "step": step,
            **evaluate(
                model,
                eval_batch,
                loss_on=config.optim.loss_on,
                fast_path=config.run.fast_path,
                probe_triggers=probe_triggers,
            ),
        }
        if train_loss is not None:
            row["train/loss"] = train_loss
        metrics.write(row)
        wb.log(row)
        if run.heatmap_every and step % run.heatmap_every == 0 and wb.run is not None:
            _log_heatmaps(wb, model, task, eval_batch, step, run_dir)
        model.train()
        return row

    run, steps = config.run, config.optim.steps
    flag = _StopFlag()
    status, step, last_row = "completed", start_step, {}
    train_loss: float | None = ckpt.get("train_loss") if ckpt is not None else None
    last_saved = start_step if resume else None
    bar = None
    t_start, n_updates = time.perf_counter(), 0
    try:
        with _stop_on_signals(flag):
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=steps, initial=start_step, desc="train", dynamic_ncols=True)
            model.train()
            for step in range(start_step, steps):
                if step % run.eval_every == 0:
                    last_row = do_eval(step, train_loss)
                    if bar is not None:
                        bar.set_postfix_str(_postfix(last_row))
                batch = task.sample(config.optim.batch_size, task.generator(step_seed(run.seed, step)))
                loss = training_loss(model, batch, config)
                if loss is not None and not torch.isfinite(loss):
                    status = "diverged"
                    where = f"last good checkpoint: {checkpoint_path(run_dir, last_saved)}" if (
                        last_saved is not None
                    ) else "no checkpoint was written yet"
                    log(f"loss became {loss.item()} at step {step}; stopping ({where})")
                    break
                if loss is not None:  # None: no target to learn from in this batch
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    train_loss = loss.item()
                n_updates += 1
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
    finally:
        if bar is not None:
            bar.close()
        metrics.close()

    elapsed = time.perf_counter() - t_start
    rows = read_metrics(run_dir / "metrics.jsonl")
    order = learning_order(rows)
    result = RunResult(
        status=status,
        step=step,
        run_dir=run_dir,
        final=last_row,
        order=order,
        seconds_per_step=elapsed / n_updates if n_updates else float("nan"),
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
    log(f"run {result.run_dir}: {result.status} at step {result.step} "
        f"({result.seconds_per_step:.3f} s/step)")
    if f:
        log(f"  in-context accuracy (counter >= 2): {f.get('eval/icl_acc', float('nan')):.4f}   "
            f"first-occurrence accuracy: {f.get('eval/first_acc', float('nan')):.4f}   "
            f"bigram loss: {f.get('eval/bigram_loss', float('nan')):.4f}")
        probes = {k.removeprefix("probes/"): v for k, v in f.items() if k.startswith("probes/")}
        if probes:
            log("  probes: " + "   ".join(f"{k} {v:.3f}" for k, v in probes.items()))
    log(f"  learning order (first step >= {THRESHOLD}): {format_order(result.order)}")
