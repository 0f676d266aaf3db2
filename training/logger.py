"""Metrics to `metrics.jsonl` in the run directory and, optionally, to Weights & Biases.

W&B is best effort: offline by default (files under RUN_DIR/wandb, synced later with
`wandb sync`), and any W&B failure is reported once while training goes on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from birth.base.io import atomic_write, atomic_write_text
from birth.base.runtime import WANDB_MODES

BAD_SUFFIX = ".bad"  # metrics.jsonl.bad: the unreadable lines a resume kept aside
SHOWN_SKIPPED = 20  # skipped lines reported one by one; past this, one line counts the rest


@dataclass(frozen=True)
class SkippedLine:
    """A line of a metrics file that is not an intact row: where it is, why, and its bytes."""

    path: Path
    number: int  # 1-based line number
    reason: str  # in words: "not JSON (...)", "not UTF-8 text (byte 0xff at offset 12)", ...
    raw: bytes


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _row_or_reason(raw: bytes, offset: int) -> dict | str:
    """An intact row (a JSON object with an integer step), or why the line is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {offset + err.start})"
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        return f"not JSON ({err.msg} at column {err.colno})"
    except RecursionError:
        return "not JSON (nested too deeply)"
    if not isinstance(row, dict):
        return f"not a row (a JSON {type(row).__name__}, not an object)"
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        return f"not a row (its step is {step!r}, not an integer)"
    return row


def scan_metrics(path: Path) -> tuple[list[dict], list[SkippedLine]]:
    """The intact rows of a metrics file and the lines that are not (a line cut by a crash, an
    edit, bytes that are not text), each with its line number and the reason. No file: no rows."""
    path = Path(path)
    if not path.is_file():
        return [], []
    rows: list[dict] = []
    skipped: list[SkippedLine] = []
    offset = 0
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if raw.strip():
            found = _row_or_reason(raw, offset)
            if isinstance(found, dict):
                rows.append(found)
            else:
                skipped.append(SkippedLine(path, number, found, raw))
        offset += len(raw) + 1
    return rows, skipped


def report_skipped(skipped: list[SkippedLine], warn: Callable[[str], None] = _stderr) -> None:
    """One warning per skipped line, with its file and line number (the first SHOWN_SKIPPED of
    them; then one line for the rest)."""
    for line in skipped[:SHOWN_SKIPPED]:
        warn(f"warning: {line.path}:{line.number}: line skipped, {line.reason}")
    rest = skipped[SHOWN_SKIPPED:]
    if rest:
        warn(
            f"warning: {rest[0].path}: {len(rest)} more lines skipped "
            f"(lines {rest[0].number} to {rest[-1].number})"
        )


def read_metrics(path: Path, warn: Callable[[str], None] | None = _stderr) -> list[dict]:
    """The intact rows of a metrics file; every skipped line is reported through `warn`."""
    rows, skipped = scan_metrics(path)
    if warn is not None:
        report_skipped(skipped, warn)
    return rows


class MetricsFile:
    """Append-only JSONL. On resume, rows at or after the resume step are dropped first (the resumed
    run writes them again); every other intact row is kept, and unreadable lines are moved to
    METRICS.jsonl.bad, named in a warning: the file never loses an intact row it had."""

    def __init__(
        self, path: Path, resume_step: int | None = None, warn: Callable[[str], None] = _stderr
    ) -> None:
        self.path = Path(path)
        if resume_step is not None:
            rows, skipped = scan_metrics(self.path)
            kept = [r for r in rows if r["step"] < resume_step]
            if skipped:
                self._keep_aside(skipped, warn)
            if skipped or len(kept) < len(rows):
                atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._f = open(self.path, "a")

    def _keep_aside(self, skipped: list[SkippedLine], warn: Callable[[str], None]) -> None:
        bad = self.path.with_name(self.path.name + BAD_SUFFIX)
        before = bad.read_bytes() if bad.is_file() else b""
        atomic_write(bad, lambda f: f.write(before + b"".join(line.raw + b"\n" for line in skipped)))
        numbers = ", ".join(str(line.number) for line in skipped[:SHOWN_SKIPPED])
        more = f" and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
        warn(
            f"warning: {self.path}: {len(skipped)} unreadable line(s) (line {numbers}{more}: "
            f"{skipped[0].reason}) moved to {bad}; every intact row is kept"
        )

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
