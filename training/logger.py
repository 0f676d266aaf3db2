"""Metrics to `metrics.jsonl` in the run directory and, optionally, to Weights & Biases.

W&B is best effort: offline by default (files under RUN_DIR/wandb, synced later with
`wandb sync`), and any W&B failure is reported once while training goes on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

WANDB_MODES = ("off", "offline", "online")


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: keep everything before it
    return rows


class MetricsFile:
    """Append-only JSONL; on resume, rows at or after the resume step are dropped first."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is not None:
            kept = [r for r in read_metrics(self.path) if r.get("step", -1) < resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        self._f = open(self.path, "a")

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class WandbLogger:
    """Thin guard around a wandb run: never raises, reports the first failure on stderr."""

    def __init__(
        self,
        mode: str,
        run_dir: Path,
        config: dict,
        name: str | None = None,
        project: str = "birth",
        resume_id: str | None = None,
    ) -> None:
        if mode not in WANDB_MODES:
            raise ValueError(f"--wandb must be one of {WANDB_MODES}, got {mode!r}")
        self.run = None
        self.failed = False
        self.mode = mode
        if mode == "off":
            return
        try:
            import wandb

            self._wandb = wandb
            self.run = wandb.init(
                project=project,
                name=name,
                dir=str(run_dir),
                config=config,
                mode=mode,
                id=resume_id,
                resume="allow" if resume_id else None,
                reinit="finish_previous",
            )
            # one chart with the three recall probes against the step
            wandb.define_metric("step")
            wandb.define_metric("*", step_metric="step")
        except Exception as err:  # noqa: BLE001 - W&B must never stop training
            self._fail(err)

    @property
    def run_id(self) -> str | None:
        return getattr(self.run, "id", None)

    def _fail(self, err: BaseException) -> None:
        if not self.failed:
            print(f"warning: W&B logging failed, training continues: {err}", file=sys.stderr)
        self.failed = True
        self.run = None

    def log(self, row: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.log(row)
        except Exception as err:  # noqa: BLE001
            self._fail(err)

    def log_image(self, key: str, path: Path, step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log({key: self._wandb.Image(str(path)), "step": step})
        except Exception as err:  # noqa: BLE001
            self._fail(err)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(values)
        except Exception as err:  # noqa: BLE001
            self._fail(err)

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as err:  # noqa: BLE001
            self._fail(err)
