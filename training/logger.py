"""Metrics to `metrics.jsonl` in the run directory and, optionally, to Weights & Biases.

W&B is best effort: offline by default (files under RUN_DIR/wandb, synced later with
`wandb sync`), and any W&B failure is reported once while training goes on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from birth.base.io import atomic_write_text

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
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
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
        self.run_dir = Path(run_dir)
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

    def log_images(self, images: dict[str, Path], step: int) -> None:
        """Several images in one history row (one row per eval, not one per image)."""
        if self.run is None:
            return
        try:
            row: dict[str, Any] = {key: self._wandb.Image(str(path)) for key, path in images.items()}
            self.run.log({**row, "step": step})
        except Exception as err:  # noqa: BLE001
            self._fail(err)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(values)
        except Exception as err:  # noqa: BLE001
            self._fail(err)

    def log_probe_chart(self, rows: list[dict[str, Any]] | None = None) -> None:
        """One custom line-series chart ("charts/probes") with every recall probe against the step.

        W&B's default panels draw one chart per key; this puts the three memories on one plot so the
        learning order reads at a glance. `rows` default to the run's whole metrics.jsonl, so a
        resumed run charts its full history, not only what this process logged.
        """
        if self.run is None:
            return
        try:
            rows = read_metrics(self.run_dir / "metrics.jsonl") if rows is None else rows
            keys = [k for k in (rows[0] if rows else {}) if k.startswith("probes/")]
            rows = [r for r in rows if "step" in r and all(r.get(k) is not None for k in keys)]
            if not keys or not rows:
                return
            chart = self._wandb.plot.line_series(
                xs=[r["step"] for r in rows],
                ys=[[r[k] for r in rows] for k in keys],
                keys=[k.removeprefix("probes/") for k in keys],
                title="Memory-recall probes",
                xname="step",
            )
            self.run.log({"charts/probes": chart, "step": rows[-1]["step"]})
        except Exception as err:  # noqa: BLE001
            self._fail(err)

    def finish(self) -> None:
        if self.run is None:
            return
        run = self.run  # kept: a failed chart disables logging but the run must still close
        self.log_probe_chart()
        try:
            run.finish()
        except Exception as err:  # noqa: BLE001
            self._fail(err)
