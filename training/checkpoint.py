"""Checkpoints: written atomically (temp file + rename), read with `weights_only=True`.

A checkpoint holds plain data only (tensors, numbers, strings, dicts, lists): the run config,
the step, the model and optimizer state dicts. Loading never executes pickled code.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from birth.base.io import atomic_write

FORMAT_VERSION = 1
_CKPT = re.compile(r"step_(\d{6,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupted or does not match the run."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(
    path: Path,
    *,
    config: dict,
    step: int,
    model_state: dict,
    optimizer_state: dict,
    train_loss: float | None = None,
) -> None:
    atomic_torch_save(
        {
            "format_version": FORMAT_VERSION,
            "config": config,
            "step": step,
            "model": model_state,
            "optimizer": optimizer_state,
            "train_loss": train_loss,  # last training loss, so a resumed run logs the same rows
        },
        path,
    )


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": the error below (or none) says all that matters
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means an unreadable file
        reason = _short_reason(err)
        raise CheckpointError(f"checkpoint {path} is corrupted or not a checkpoint: {reason}") from None
    required = {"format_version", "config", "step", "model", "optimizer"}
    if not isinstance(ckpt, dict) or not required <= set(ckpt):
        raise CheckpointError(f"checkpoint {path} lacks the fields {sorted(required)}")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {ckpt['format_version']}, expected {FORMAT_VERSION}"
        )
    return ckpt


# Lines of torch's weights-only refusal that are advice, not the reason: loading with
# `weights_only=False` would run the pickled code, so it is never repeated to the user.
_ADVICE = re.compile(
    r"weights.only|Weights only load failed|check the documentation|add_safe_globals|"
    r"safe_globals|trusted source|^\(\d\)",
    re.IGNORECASE,
)


def _short_reason(err: Exception) -> str:
    """One line saying why torch could not load a file: the unpickler's reason ("unsupported GLOBAL
    posix.system"), never torch's advice to load with `weights_only=False`."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    refused = any("Weights only load failed" in line or "WeightsUnpickler" in line for line in lines)
    reasons = []
    for line in lines:
        line = line.removeprefix("WeightsUnpickler error:").strip()
        if line and not _ADVICE.search(line):
            reasons.append(line)
    reason = reasons[0] if reasons else type(err).__name__
    return f"unsafe or unreadable content refused ({reason})" if refused else reason


def load_latest_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict]:
    """The latest checkpoint of a run and its path. A corrupted one (a write cut short by a crash or
    a full disk) or one holding pickled code is never skipped silently: the error gives the reason,
    as `birth inspect` does (the unpickler's, for code), and names the last intact checkpoint."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoint in {Path(run_dir) / 'checkpoints'}")
    latest = found[-1][1]
    try:
        return latest, load_checkpoint(latest, map_location)
    except CheckpointError as err:
        why = str(err)
        for _, earlier in reversed(found[:-1]):
            try:
                load_checkpoint(earlier, "cpu")
            except CheckpointError:
                continue
            raise CheckpointError(
                f"{why}; the last intact checkpoint is {earlier.name} "
                "(remove the corrupted file to resume from it)"
            ) from None
        raise CheckpointError(
            f"{why}; no earlier checkpoint is intact (remove the checkpoints to restart the run from step 0)"
        ) from None


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _CKPT.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path:
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoint in {Path(run_dir) / 'checkpoints'}")
    return found[-1][1]


def load_model_state(model: torch.nn.Module, state: dict, path: Path | str = "checkpoint") -> None:
    """Load a state dict strictly, turning shape/key mismatches into one clear error."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not match the model: {first}") from None


def load_trained_model(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any, int]:
    """The model a training checkpoint holds, rebuilt from its config and in eval mode, with that
    config (a `training.config.TrainConfig`) and the step. Every failure is one CheckpointError."""
    # imported here: the model builder imports transformer_lens, which checkpoints alone need not
    from birth.models.transformer import native
    from training.config import TrainConfig

    ckpt = load_checkpoint(path, map_location=device)
    try:
        config = TrainConfig.from_dict(ckpt["config"], source=str(path))
        task = config.build_task()  # the vocabulary is the task's
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} holds an invalid run config: {err}") from None
    model = config.build_model(task.vocab_size, device=device)
    load_model_state(native(model), ckpt["model"], path)
    model.eval()
    return model, config, int(ckpt["step"])


def load_run_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained model of a run directory (its latest checkpoint) or of one checkpoint file."""
    path = Path(path)
    return load_trained_model(latest_checkpoint(path) if path.is_dir() else path, device)[0]
