"""Where and how computations run: the device and the number of CPU threads."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Literal, get_args

import torch

# Where a config's computation runs (auto: CUDA when present). `birth train --device` also takes
# cuda:N (a string checked by `resolve_device`); configs take one of these.
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[Device, ...] = get_args(Device)
# W&B logging: off, offline (files in the run directory) or online.
WandbMode = Literal["off", "offline", "online"]
WANDB_MODES: tuple[WandbMode, ...] = get_args(WandbMode)


def resolve_device(device: str) -> torch.device:
    """auto (CUDA when present), cpu, cuda or cuda:N; checked when a run starts, not when its
    config is built (a config may be written on one machine and run on another)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", str(device)):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        if device != "cuda" and int(device[5:]) >= torch.cuda.device_count():
            raise ValueError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return torch.device(device)


@contextlib.contextmanager
def torch_threads(threads: int | None, default: int | None = None) -> Iterator[None]:
    """Run with `threads` CPU threads (None: `default`; a None default leaves torch's), restored
    afterwards. Results can differ in the last digits with the thread count (reductions are
    split differently), so runs record it."""
    before = torch.get_num_threads()
    wanted = default if threads is None else threads
    if wanted is not None:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)
