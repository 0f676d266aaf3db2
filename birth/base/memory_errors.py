"""One translator of memory errors: a size that cannot be allocated becomes one line naming the
option, the size asked and what the machine has, for training, every experiment and grid points.

torch's CPU allocator says "not enough memory" or "can't allocate memory" (with "you tried to
allocate N bytes"), CUDA's "out of memory" ("Tried to allocate 2.00 GiB"); Python and numpy raise
MemoryError. A size too large to even describe (a tensor dimension past 2^63, numpy's "array is too
big") is the same mistake and gets the same line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterator
from typing import Any


class OutOfMemory(ValueError):
    """Sizes that do not fit in memory (one line naming the sizes and the bytes asked for)."""


_OOM_TEXT = re.compile(r"not enough memory|can't allocate memory|out of memory", re.IGNORECASE)
# sizes past what an allocator can even be asked for
_TOO_LARGE_TEXT = re.compile(
    r"array is too big|too large to convert to C|negative dimension|Maximum allowed dimension exceeded|"
    r"numel: integer multiplication overflow|Storage size calculation overflowed",
    re.IGNORECASE,
)


def bytes_text(n: float) -> str:
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
        return bytes_text(int(m.group(1)))
    m = re.search(r"allocate ([\d.]+ [KMGTP]i?B)", message)
    return m.group(1) if m else None


def _torch() -> Any:
    """torch if some code imported it (a torch error can only come from there); this module itself
    does not import it, so that the commands importing it start fast."""
    return sys.modules.get("torch")


def _available(device: Any) -> str | None:
    torch = _torch()
    try:
        if str(device).startswith("cuda") or (
            device == "auto" and torch is not None and torch.cuda.is_available()
        ):
            device = torch.device("cuda" if device == "auto" else device)
            return f"{bytes_text(torch.cuda.mem_get_info(device)[1])} on {device}"
        return f"{bytes_text(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))} of RAM"
    except (ValueError, OSError, RuntimeError, AttributeError, TypeError):
        return None


def is_out_of_memory(err: BaseException) -> bool:
    """A memory error of Python, numpy or torch, or a size too large to allocate at all."""
    torch = _torch()
    if isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.OutOfMemoryError)):
        return True
    text = str(err)
    if isinstance(err, RuntimeError) and _OOM_TEXT.search(text):
        return True
    return isinstance(err, (RuntimeError, ValueError, OverflowError)) and bool(_TOO_LARGE_TEXT.search(text))


def as_out_of_memory(err: BaseException, sizes: str, where: str, device: Any = None) -> OutOfMemory | None:
    """A one-line OutOfMemory for a memory error (None for any other error): `where` it happened
    ("building the model", "running d-and-T"), the `sizes` that asked for it ("--d-model 4096"),
    what torch asked for and what the machine has."""
    if isinstance(err, OutOfMemory):
        return err
    if not is_out_of_memory(err):
        return None
    asked = _requested(str(err))
    have = _available(device)
    if asked:
        needed = f": torch asked for {asked} in one allocation"
    elif not isinstance(err, MemoryError) and _TOO_LARGE_TEXT.search(str(err)):
        needed = ": the size is too large to allocate at all"
    else:
        needed = ""
    machine = f" (this machine has {have})" if have else ""
    return OutOfMemory(f"out of memory {where} with {sizes}{needed}{machine}; choose smaller sizes")


def _size_fields(config: Any, prefix: str = "") -> Iterator[tuple[str, int]]:
    """(flag, integer) for every integer field of a config (nested dataclasses flattened, tuples
    of integers by their largest value); seeds are not sizes."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "seed" in f.name:
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _size_fields(value, prefix)
            continue
        values = value if isinstance(value, (list, tuple)) else (value,)
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if ints:
            yield f"{prefix}--{f.name.replace('_', '-')}", max(ints)


def largest_sizes(config: Any) -> str:
    """The option(s) holding a config's largest size: the likeliest cause of a memory error
    ("--d-curves 10000000000"). A config with no integer field is named by its type."""
    found = list(_size_fields(config)) if dataclasses.is_dataclass(config) else []
    if not found:
        return f"the sizes of {type(config).__name__}"
    top = max(value for _, value in found)
    return ", ".join(f"{flag} {value}" for flag, value in found if value == top)
