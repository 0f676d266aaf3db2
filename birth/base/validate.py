"""Validation of config fields: one message format, naming the command-line flag.

Every config dataclass checks itself in `__post_init__` (`Validated`: the bounds live with the
fields, as `Annotated[int, Int(1)]`, and the choices are the fields' `Literal`s), so a bad value fails at
construction, from Python or the command line alike: `--lr must be a finite number in (0, inf),
got nan`. Floats refuse nan and inf unless a bound says otherwise; bools are not integers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal


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


# --- constraints that live with the fields ----------------------------------------------------------
#
#     @dataclass(frozen=True)
#     class Config(Validated):
#         lr: Annotated[float, Float(0.0, open_low=True)] = 0.03  # learning rate
#         mode: Literal["a", "b"] = "a"                           # choices: checked from the Literal
#
# `validate_fields` reads the annotations: a `Literal` is checked against its choices, a `bool`
# refuses 1 and "yes", and every `Constraint` in `Annotated[...]` checks its bound. A config's
# cross-field rules stay in its own `__post_init__`, after `super().__post_init__()`.


class Constraint:
    """A bound on a field's value, attached with `typing.Annotated`."""

    def check(self, name: str, value: Any) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Constraint):
    """An integer in [low, high]."""

    low: int = 1
    high: int | None = None

    def check(self, name: str, value: Any) -> None:
        check_int(name, value, self.low, self.high)


@dataclass(frozen=True)
class Float(Constraint):
    """A finite number in [low, high], open at either end on request."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def check(self, name: str, value: Any) -> None:
        check_float(name, value, self.low, self.high, open_low=self.open_low, open_high=self.open_high)


@dataclass(frozen=True)
class OrNone(Constraint):
    """None, or a value `inner` accepts."""

    inner: Constraint

    def check(self, name: str, value: Any) -> None:
        if value is not None:
            self.inner.check(name, value)


@dataclass(frozen=True)
class Ints(Constraint):
    """A non-empty list of integers >= low."""

    low: int = 1
    distinct: bool = False

    def check(self, name: str, value: Any) -> None:
        check_ints(name, value, self.low, distinct=self.distinct)


@dataclass(frozen=True)
class Floats(Constraint):
    """A list of finite numbers in [low, high] (non-empty unless `allow_empty`)."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    distinct: bool = False
    allow_empty: bool = False

    def check(self, name: str, value: Any) -> None:
        check_floats(
            name,
            value,
            self.low,
            self.high,
            open_low=self.open_low,
            open_high=self.open_high,
            distinct=self.distinct,
            allow_empty=self.allow_empty,
        )


@dataclass(frozen=True)
class Choices(Constraint):
    """A non-empty list of values from the `Literal` the field's items are annotated with."""

    choices: tuple[Any, ...]
    distinct: bool = True

    def check(self, name: str, value: Any) -> None:
        check_choices(name, value, self.choices, distinct=self.distinct)


@functools.cache
def _field_rules(cls: type) -> tuple[tuple[str, tuple[Any, ...] | None, bool, tuple[Constraint, ...]], ...]:
    """Per init field of dataclass `cls`: (name, Literal choices or None, is bool, constraints)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    rules = []
    for f in dataclasses.fields(cls):
        hint, constraints = hints[f.name], ()
        if typing.get_origin(hint) is typing.Annotated:
            hint, *meta = typing.get_args(hint)
            constraints = tuple(m for m in meta if isinstance(m, Constraint))
        choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else None
        rules.append((f.name, choices, hint is bool, constraints))
    return tuple(rules)


def validate_fields(config: Any) -> None:
    """Check every field of the dataclass instance `config` against its annotation (see above);
    the first bad value raises ValueError naming its flag."""
    for name, choices, is_bool, constraints in _field_rules(type(config)):
        value = getattr(config, name)
        if choices is not None:
            check_choice(name, value, choices)
        if is_bool and not isinstance(value, bool):
            raise ValueError(f"{flag(name)} must be true or false, got {value!r}")
        for constraint in constraints:
            constraint.check(name, value)


class Validated:
    """Base of config dataclasses: `__post_init__` runs `validate_fields`."""

    def __post_init__(self) -> None:
        validate_fields(self)
