"""Parts that plug into the trainer's step loop (`training.trainer.train(callbacks=...)`).

The loop calls, in order: `on_model` once the model is built (before the schedule binds its
matrices and the optimizer is made), `on_start` once the run can step, `on_evaluate` right after
each evaluation, `on_row` for each evaluation row as it is written, `on_step` after each step, `on_end` when the loop ends
(completed, interrupted or diverged; not on an error). The run's own parts are callbacks too:
the metrics file, W&B, checkpoints and the progress bar.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from birth.models.transformer import native
from tasks.protocol import Task, TokenBatch
from tasks.triggered_bigram import TriggeredBigram
from training.checkpoint import checkpoint_path, save_checkpoint
from training.config import TrainConfig
from training.evaluation import PROBES
from training.logger import MetricsFile, WandbLogger
from training.run_dir import METRICS, WANDB_ID


@dataclass
class TrainingRun:
    """What the callbacks see of a run: set up before `on_start`, `step` and `train_loss` kept
    current by the loop (`step`: the number of steps done)."""

    config: TrainConfig
    run_dir: Path
    task: Task
    model: nn.Module
    device: torch.device
    resumed: bool
    start_step: int
    optimizer: torch.optim.Optimizer | None = None
    eval_batch: TokenBatch | None = None
    step: int = 0
    train_loss: float | None = None
    last_saved: int | None = None  # step of the last checkpoint written (or loaded)
    extras: dict[str, Any] = field(default_factory=dict)


class Callback:
    """A part of the run; every hook does nothing unless overridden."""

    def on_model(self, model: nn.Module) -> None:
        pass

    def on_start(self, run: TrainingRun) -> None:
        pass

    def on_evaluate(self, run: TrainingRun, step: int) -> None:
        """The model (in eval mode) has just been evaluated at `step`."""

    def on_row(self, run: TrainingRun, row: dict[str, float]) -> None:
        pass

    def on_step(self, run: TrainingRun, updated: bool) -> None:
        pass

    def on_end(self, run: TrainingRun, status: str) -> None:
        pass

    def close(self) -> None:
        """Release what the part holds (files, W&B); also called when the run fails."""


class MetricsLog(Callback):
    """RUN/metrics.jsonl: every evaluation row (a resume first drops the rows from its step on)."""

    def __init__(self) -> None:
        self.file: MetricsFile | None = None

    def on_start(self, run: TrainingRun) -> None:
        self.file = MetricsFile(run.run_dir / METRICS, resume_step=run.start_step if run.resumed else None)

    def on_row(self, run: TrainingRun, row: dict[str, float]) -> None:
        self.file.write(row)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def heatmap_images(paths: list[Path]) -> dict[str, Path]:
    """W&B image keys of `probes.attention.save_attention_heatmaps`' PNGs: attention_layer1_step000010.png
    -> attention/layer1, attention_layer2_head0_step000010.png -> attention/layer2_head0 (the keys the
    dashboard's heatmap panel shows)."""
    return {
        "attention/" + re.sub(r"_step\d+$", "", path.stem).removeprefix("attention_"): path for path in paths
    }


class Wandb(Callback):
    """Weights & Biases: the rows, attention heatmaps every `--heatmap-every` steps, the summary.
    A resumed run continues its W&B run (RUN/wandb_id.txt)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.logger: WandbLogger | None = None

    def on_start(self, run: TrainingRun) -> None:
        id_file = run.run_dir / WANDB_ID
        self.logger = WandbLogger(
            self.mode,
            run.run_dir,
            run.config.to_dict(),
            name=run.run_dir.name,
            resume_id=id_file.read_text().strip() if run.resumed and id_file.is_file() else None,
        )
        if self.logger.run_id:
            id_file.write_text(self.logger.run_id)

    def on_row(self, run: TrainingRun, row: dict[str, float]) -> None:
        self.logger.log(row)

    def on_evaluate(self, run: TrainingRun, step: int) -> None:
        """Attention heatmaps of the first held-out sequence, as W&B images `attention/layer{L}`
        (`attention/layer{L}_head{H}` with several heads), for any task: the task's ideal induction
        keys circled (`probes.attention.induction_targets`); a triggered-bigram task's figures also
        mark its triggers and decode its characters, other tasks' label the token ids."""
        every = run.config.run.heatmap_every
        if not every or step % every or self.logger.run is None:
            return
        from probes.attention import save_attention_heatmaps  # matplotlib: imported only when used

        stats = run.task.stats if isinstance(run.task, TriggeredBigram) else None
        try:
            paths = save_attention_heatmaps(
                run.model, stats, run.eval_batch, run.run_dir / "heatmaps", step=step, task=run.task
            )
        except Exception as err:  # noqa: BLE001 - a figure must never stop training
            print(f"warning: attention heatmap failed: {err}", file=sys.stderr)
            return
        self.logger.log_images(heatmap_images(paths), step)

    def summary(self, summary: dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.summary(summary)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.finish()  # W&B's offline files live in the run directory
            self.logger = None


class Checkpoints(Callback):
    """RUN/checkpoints/step_XXXXXX.pt every `--checkpoint-every` steps and at the end."""

    def save(self, run: TrainingRun) -> Path:
        path = checkpoint_path(run.run_dir, run.step)
        save_checkpoint(
            path,
            config=run.config.to_dict(),
            step=run.step,
            model_state=native(run.model).state_dict(),
            optimizer_state=run.optimizer.state_dict(),
            train_loss=run.train_loss,
        )
        run.last_saved = run.step
        return path

    def on_step(self, run: TrainingRun, updated: bool) -> None:
        if run.step % run.config.run.checkpoint_every == 0 and run.step < run.config.optim.steps:
            self.save(run)

    def on_end(self, run: TrainingRun, status: str) -> None:
        if status != "diverged" and run.last_saved != run.step:
            self.save(run)


class ProgressBar(Callback):
    """A tqdm bar with the task's main metric and the probes of the last evaluation."""

    def __init__(self) -> None:
        self.bar = None

    def on_start(self, run: TrainingRun) -> None:
        from tqdm.auto import tqdm  # tqdm.auto probes for a notebook: only when a bar is wanted

        self.bar = tqdm(
            total=run.config.optim.steps, initial=run.start_step, desc="train", dynamic_ncols=True
        )

    def on_row(self, run: TrainingRun, row: dict[str, float]) -> None:
        main = next(iter(run.task.headline))
        parts = [f"{main.removeprefix('eval/')} {row.get(main, float('nan')):.3f}"]
        parts += [f"{k.removeprefix(PROBES)} {v:.2f}" for k, v in row.items() if k.startswith(PROBES)]
        self.bar.set_postfix_str(" ".join(parts))

    def on_step(self, run: TrainingRun, updated: bool) -> None:
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class OnStep(Callback):
    """Calls `function(step)` after each step (the number of steps done)."""

    def __init__(self, function: Callable[[int], None]) -> None:
        self.function = function

    def on_step(self, run: TrainingRun, updated: bool) -> None:
        self.function(run.step)
