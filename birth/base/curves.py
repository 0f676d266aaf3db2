"""Curves of a run's metrics: where they cross a level, and their mean over runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def first_crossing(steps: Sequence[int], values: Iterable[float | None], threshold: float) -> int | None:
    """First step whose value is >= `threshold` (None if never; missing or NaN values never count)."""
    for step, value in zip(steps, values):
        if value is not None and not math.isnan(value) and value >= threshold:
            return int(step)
    return None


def first_crossing_below(
    steps: Sequence[int], values: Iterable[float | None], threshold: float
) -> int | None:
    """First step whose value is <= `threshold` (a loss reaching its floor); None if never."""
    return first_crossing(steps, (None if v is None else -v for v in values), -threshold)


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and population standard deviation of the values that exist (None and NaN skipped)."""
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return float("nan"), float("nan")
    return statistics.fmean(clean), statistics.pstdev(clean) if len(clean) > 1 else 0.0
