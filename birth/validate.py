"""Validation of config fields: one message format, naming the command-line flag.

Every config dataclass checks itself in `__post_init__` with these, so a bad value fails at
construction, from Python or the command line alike: `--lr must be a finite number in (0, inf),
got nan`. Floats refuse nan and inf unless a bound says otherwise; bools are not integers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def flag(name: str) -> str:
    """`lr` or `--lr` -> `--lr`; `batch_size` -> `--batch-size`."""
    return name if name.startswith("-") else "--" + name.replace("_", "-")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value: Any, low: int = 1, high: int | None = None) -> None:
    """An integer in [low, high]."""
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{flag(name)} must be an integer {bound}, got {value!r}")


def check_float(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """A finite number in [low, high] (open at either end on request); nan and inf refused."""
    ok = _is_finite(value)
    ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        left = "(" if open_low or low == -math.inf else "["
        right = ")" if open_high or high == math.inf else "]"
        raise ValueError(
            f"{flag(name)} must be a finite number in {left}{low:g}, {high:g}{right}, got {value!r}"
        )


def _check_sequence(name: str, values: Any, what: str, distinct: bool, allow_empty: bool = False) -> None:
    if not isinstance(values, (tuple, list)) or not (values or allow_empty):
        raise ValueError(f"{flag(name)} must be a non-empty list of {what}, got {values!r}")
    if distinct and len(set(values)) != len(values):
        raise ValueError(f"{flag(name)} must list distinct values, got {values!r}")


def check_ints(name: str, values: Any, low: int = 1, *, distinct: bool = False) -> None:
    """A non-empty list of integers >= low."""
    _check_sequence(name, values, f"integers >= {low}", distinct)
    for v in values:
        check_int(name, v, low)


def check_floats(
    name: str,
    values: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
    distinct: bool = False,
    allow_empty: bool = False,
) -> None:
    """A list of finite numbers in the interval (non-empty unless `allow_empty`)."""
    _check_sequence(name, values, "numbers", distinct, allow_empty)
    for v in values:
        check_float(name, v, low, high, open_low=open_low, open_high=open_high)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
        raise ValueError(f"{flag(name)} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_choices(name: str, values: Any, choices: Sequence[Any], *, distinct: bool = True) -> None:
    """A non-empty list of values from `choices` (distinct by default)."""
    _check_sequence(name, values, f"values from {', '.join(map(str, choices))}", distinct)
    for v in values:
        check_choice(name, v, choices)
