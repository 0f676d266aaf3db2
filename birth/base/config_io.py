"""Configs from JSON/YAML: nested frozen dataclasses rebuilt with their types checked.

JSON and YAML carry no types: an edited config can hold "40" for an int, 32.0 for an int, null or
"fast" for a float. `config_from_dict` refuses those with a message naming the field, and refuses
unknown names, instead of passing them on to fail deep inside a run.

A config whose field types depend on its values reads and writes itself: a dataclass with a
classmethod `from_dict(obj, source)` and a method `to_dict()` (TrainConfig: its `task` section is the
config of the task its `task_name` key names) is rebuilt by `from_dict` wherever it appears, at the
top or as a field, and `birth.base.io.to_jsonable` writes it with `to_dict()`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from birth.base.io import read_user_text

T = TypeVar("T")


def config_from_dict(cls: type[T], obj: Any, where: str = "config") -> T:
    """`cls(**obj)` with every value checked against the field's type (nested dataclasses too);
    missing fields keep their defaults. Raises ValueError naming the field. A class that reads
    itself (`reads_itself`) is rebuilt by its own `from_dict`."""
    if reads_itself(cls):
        return cls.from_dict(obj, where or "config")
    at = f"{where}: " if where else ""
    if not isinstance(obj, dict):
        raise ValueError(f"{at}expected a mapping, got {type(obj).__name__}")
    hints = typing.get_type_hints(cls, include_extras=False)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(obj) - set(fields), key=str)  # YAML keys may be numbers or null
    if unknown:
        raise ValueError(f"{at}unknown key {unknown[0]!r} (known: {', '.join(fields)})")
    kwargs = {name: coerce(value, hints[name], _key(where, name)) for name, value in obj.items()}
    return cls(**kwargs)


def reads_itself(cls: type) -> bool:
    """Whether config class `cls` reads itself with a classmethod `from_dict(obj, source)` (its
    field types depend on its values, so the field-by-field reading cannot rebuild it)."""
    return dataclasses.is_dataclass(cls) and callable(getattr(cls, "from_dict", None))


def _key(where: str, name: Any) -> str:
    """The path of key `name` of the mapping at `where` ("" for the top of a file)."""
    return f"{where}.{name}" if where else str(name)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` (from YAML) as the type `hint` of a config field, or a ValueError naming `where`.

    bool, int, float (an int is accepted; a string is not: "40" in an edited config.json is an
    error, and `load_yaml` reads 1e-3 as the number it is), str, Literal, tuples (from lists),
    mappings, Path, nested dataclasses, and unions with None.
    """

    def wrong(expected: str) -> ValueError:
        return ValueError(f"{where} must be {expected}, got {value!r}")

    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, where)
            except ValueError as err:
                errors.append(str(err).removeprefix(f"{where} must be ").rsplit(", got", 1)[0])
        raise wrong(" or ".join(errors + (["null"] if type(None) in options else [])))
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise wrong(f"one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise wrong("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise wrong(f"a list of {len(args)} values")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise wrong("a path (string)")
        return Path(value)
    if hint is type(None):
        if value is not None:
            raise wrong("null")
        return None
    if origin is dict:  # a mapping passed on as given (e.g. a scheduler's own parameters)
        key_hint, value_hint = typing.get_args(hint) or (str, Any)
        if not isinstance(value, dict):
            raise wrong("a mapping")
        return {coerce(k, key_hint, where): coerce(v, value_hint, _key(where, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, where)
    raise ValueError(f"{where}: fields of type {hint} cannot be set from a file")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string (its floats need a dot); read it as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML (a config file or a grid spec) with numbers such as 1e-3 read as floats."""
    return yaml.load(text, Loader=_Loader)


def load_yaml_file(path: str | os.PathLike, option: str | None = None) -> Any:
    """A YAML file the user handed in (a `--config`, a grid spec), parsed; an empty file is None.

    Every failure is one ValueError naming the option and the file with the reason in words: not
    found, a directory, not UTF-8 text (the byte and its offset), not valid YAML (line and column).
    """
    label = f"{option} {path}" if option else str(path)
    text = read_user_text(path, option)
    try:
        return load_yaml(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = err.problem or err.context or type(err).__name__
        raise ValueError(f"{label} is not valid YAML ({where}{problem})") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{label} is not valid YAML ({str(err).splitlines()[0]})") from None
    except (ValueError, TypeError, RecursionError) as err:  # a scalar the constructors reject
        first = (str(err).splitlines() or [""])[0]
        raise ValueError(f"{label} is not valid YAML ({type(err).__name__}: {first})") from None
