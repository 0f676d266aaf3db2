"""A run directory: claimed by one run, checked on resume, undone when a run fails at start-up.

RUN_DIR/config.json        the run's config (`TrainConfig.to_dict`)
RUN_DIR/environment.json   torch threads, device, versions; each resume appended
RUN_DIR/metrics.jsonl      one row per evaluation (`training.logger.MetricsFile`)
RUN_DIR/checkpoints/       step_XXXXXX.pt (`training.checkpoint`)
RUN_DIR/summary.json       status, final metrics, learning order (`write_summary`)
"""

from __future__ import annotations

import json
import platform
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from birth.base.io import OutputError, atomic_write_json, claim_output_dir, read_user_text, release_claim
from training.checkpoint import CheckpointError, list_checkpoints, load_latest_checkpoint
from training.config import TrainConfig

CONFIG = "config.json"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
WANDB_ID = "wandb_id.txt"


def same_run(a: dict, b: dict) -> bool:
    """Two run configs describe the same run; `steps` may differ (a resume may extend a run)."""

    def without_steps(c: dict) -> dict:
        return {**c, "optim": {**c.get("optim", {}), "steps": None}}

    return without_steps(a) == without_steps(b)


def read_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.json)")
    try:
        obj = json.loads(read_user_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    return TrainConfig.from_dict(obj, source=str(path))


RUN_PREFIX = "seed"  # `birth train --seeds 0-7 --out OUT` writes OUT/seed0, ..., OUT/seed7 (a stack)


def _is_stack_run(run_dir: Path) -> bool:
    return re.fullmatch(rf"{RUN_PREFIX}\d+", run_dir.name) is not None


def stack_runs(out: Path) -> list[Path] | None:
    """The run directories of a stacked output directory (OUT/seedN with a config.json, in seed
    order), or None when `out` is not one (a run directory, or no runs in it)."""
    out = Path(out)
    if (out / CONFIG).is_file() or not out.is_dir():
        return None
    runs = [d for d in out.iterdir() if _is_stack_run(d) and (d / CONFIG).is_file()]
    return sorted(runs, key=lambda d: int(d.name.removeprefix(RUN_PREFIX))) or None


def stack_dir(run_dirs: list[Path] | tuple[Path, ...]) -> Path | None:
    """OUT when `run_dirs` are the OUT/seedN of one stack (what resumes them: `birth train --resume
    OUT`), else None (each run resumes alone)."""
    out = Path(run_dirs[0]).parent
    return out if all(Path(d).parent == out and _is_stack_run(Path(d)) for d in run_dirs) else None


def prepare_run_dir(run_dir: Path, config: TrainConfig, resume_dir: Path | None = None) -> list[Path]:
    """Claim a fresh run directory and write its config; refuse one that already holds files,
    naming `--resume resume_dir` (default: the run directory itself) as the way to continue it.

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
                f"use --resume {resume_dir or run_dir} to continue it or choose another --out"
            ) from None
        raise
    atomic_write_json(run_dir / CONFIG, config.to_dict())
    release_claim(run_dir)
    return created


def remove_new_run(run_dir: Path, created: list[Path]) -> None:
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


@dataclass
class ResumePoint:
    """Where a resumed run continues: its latest checkpoint (None: it stopped before the first)."""

    step: int
    checkpoint: dict[str, Any] | None
    path: Path | None


def resume_point(
    run_dir: Path, config: TrainConfig, device: torch.device, log: Callable[[str], None]
) -> ResumePoint:
    """Check that `config` continues the run in `run_dir` (only `steps` may differ) and load its
    latest checkpoint; a run killed before its first checkpoint restarts from step 0."""
    saved = read_run_config(run_dir)
    if not same_run(saved.to_dict(), config.to_dict()):
        raise ValueError(f"--resume: the config differs from {run_dir / CONFIG}")
    if not list_checkpoints(run_dir):
        log(
            f"{run_dir} has no checkpoint (it stopped before its first one): "
            "restarting it from step 0 with its config.json"
        )
        return ResumePoint(0, None, None)
    path, ckpt = load_latest_checkpoint(run_dir, map_location=device)
    try:  # a checkpoint of a run config written before the config named its task reads as today's
        written = TrainConfig.from_dict(ckpt["config"], source=str(path)).to_dict()
    except (TypeError, ValueError):
        written = ckpt["config"]
    if not same_run(written, saved.to_dict()):
        raise CheckpointError(f"{path} was written by a different run config")
    step = int(ckpt["step"])
    if config.optim.steps < step:
        raise ValueError(f"--steps {config.optim.steps} is below the checkpoint's step {step}")
    return ResumePoint(step, ckpt, path)


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


def record_environment(run_dir: Path, device: torch.device, start_step: int | None) -> str | None:
    """Write RUN/environment.json (a resume appends to its "resumes"); return a warning when this
    process's threads, device or torch version differ from those the run started with."""
    path = run_dir / ENVIRONMENT
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


def write_summary(
    run_dir: Path,
    status: str,
    step: int,
    final: dict[str, Any],
    order: dict[str, int | None],
    seconds_per_step: float | None,
) -> dict[str, Any]:
    """RUN/summary.json: the status, the last evaluation (`final/KEY`), the learning order
    (`order/PROBE`) and the time per step. Returns what it wrote."""
    summary = {
        "status": status,
        "step": step,
        **{f"final/{k}": v for k, v in final.items() if k != "step"},
        **{f"order/{k}": v for k, v in order.items()},
        "seconds_per_step": seconds_per_step,
    }
    atomic_write_json(run_dir / SUMMARY, summary)
    return summary
