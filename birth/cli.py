"""The `birth` command: one subcommand per module of `birth.commands`, imported only when it runs.

Each subcommand module defines `run(argv: list[str], prog: str) -> int`. Importing lazily keeps
`birth --help` fast (transformer_lens alone takes seconds to import). Errors the user can fix are
one line on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import re
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import tyro
import yaml

from birth.base.config_io import load_yaml_file
from birth.base.io import to_jsonable
from birth.experiments.registry import command_help, commands

EXPERIMENT_COMMAND = "birth.commands.experiment"  # runs the experiments of its families

# name -> (module, one-line help); one experiment command per group of families (`registry.commands`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "birth.commands.train",
        "train a transformer on a registered task (--task) and watch its memories form",
    ),
    "inspect": ("birth.commands.inspect", "attention maps and induction scores of a checkpoint, per head"),
    "plot": ("birth.commands.plot", "learning-order figure (probes and accuracy vs step) of runs"),
    **{name: (EXPERIMENT_COMMAND, command_help(name)) for name in commands()},
    "experiments": (EXPERIMENT_COMMAND, "list every registered experiment, by family"),
    "grid": ("birth.commands.grid", "run a grid of experiments or training runs through submitit"),
    "prepare-data": ("birth.commands.prepare_data", "rebuild the Shakespeare statistics from a text"),
    "dashboard": ("birth.commands.dashboard", "the W&B learning-order workspace of a W&B project"),
}


class CLIError(ValueError):
    """A user-facing error: printed as one line, exit status 2."""


T = TypeVar("T")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BOX = "╭╮╰╯│─"


def _one_line(text: str) -> str:
    """The message of tyro's error box as one line (the box's first section, borders removed)."""
    lines = [_ANSI.sub("", line) for line in text.splitlines()]
    body = []
    for line in lines[1:] if lines and lines[0].lstrip().startswith("╭") else lines:
        inner = line.strip().strip("│").strip()
        if not inner or set(inner) <= set(_BOX) or inner.startswith("╰"):
            if body:
                break
            continue
        body.append(inner)
    message = " ".join(body) or "invalid arguments"
    # a section's own validation names its flag already: drop tyro's "Error parsing config.optim:"
    return re.sub(r"^Error parsing [\w.]+: (?=--)", "", message)


def parse_dataclass(cls: type[T], default: T, args: Sequence[str], prog: str, description: str) -> T:
    """Parse `args` into a `cls` dataclass starting from `default`, with tyro: one flag per field
    (nested sections flattened), its type, choices, default and help comment in `--help`.
    A bad value becomes a CLIError with tyro's message on one line."""
    kind, start = _retyped(cls, default)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            parsed = tyro.cli(
                kind,
                default=start,
                args=list(args),
                prog=prog,
                description=description,
                config=(tyro.conf.OmitArgPrefixes,) if _leaf_names_unique(kind) else (),
            )
    except SystemExit as stop:
        if stop.code in (0, None):
            raise
        raise CLIError(_with_flag_hint(_one_line(buffer.getvalue()), list(args))) from None
    return _restored(parsed)


def _unannotated(hint: Any) -> Any:
    """The type of `Annotated[type, ...]`, or `hint` itself."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint


_RETYPED = "_birth_retyped"  # marks the subclasses `_retyped` makes


def _retyped(cls: type[T], default: T) -> tuple[type[T], T]:
    """(`cls`, `default`) with every nested section annotated as the type of its value in `default`.

    tyro reads the flags from the annotations: a section holding another config than its
    annotation names (a training config's task section holding the markov-icl task's config, where
    the annotation names the default task's) would become a subcommand whose flags do not parse.
    Such a class is replaced by a subclass that re-annotates the field (`_restored` undoes it);
    `cls` and `default` themselves when every section is what its annotation says."""
    hints = typing.get_type_hints(cls, include_extras=True)
    values: dict[str, Any] = {}
    changed: list[tuple[str, Any, dataclasses.Field]] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        value = values[f.name] = getattr(default, f.name)
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            continue
        kind, values[f.name] = _retyped(type(value), value)
        hint = hints[f.name]
        extras = hint.__metadata__ if typing.get_origin(hint) is typing.Annotated else ()
        if kind is not _unannotated(hint):
            annotation = typing.Annotated[(kind, *extras)] if extras else kind
            changed.append(
                (f.name, annotation, dataclasses.field(default_factory=lambda v=values[f.name]: v))
            )
    if not changed:
        return cls, default
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    sub = dataclasses.make_dataclass(cls.__name__, changed, bases=(cls,), frozen=params.frozen)
    sub.__doc__ = cls.__doc__
    setattr(sub, _RETYPED, True)
    return sub, sub(**values)


def _restored(value: T) -> T:
    """`value` with every object of a `_retyped` subclass rebuilt as its original class."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    kind = type(value)
    fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
    restored = {name: _restored(v) for name, v in fields.items()}
    if kind.__dict__.get(_RETYPED):
        return kind.__mro__[1](**restored)
    if any(restored[name] is not fields[name] for name in fields):
        return dataclasses.replace(value, **restored)
    return value


def _leaf_names_unique(cls: type) -> bool:
    """Whether the fields of `cls`, its nested sections flattened, have distinct names: then the
    flags drop their section prefixes (`--lr`); a config holding two training configs (one per arm
    of a study) keeps them (`--config.bigram.optim.lr`, `--config.markov.optim.lr`)."""
    names: list[str] = []

    def walk(kind: Any) -> None:
        kind = _unannotated(kind)
        if not dataclasses.is_dataclass(kind):
            return
        for name, hint in typing.get_type_hints(kind, include_extras=True).items():
            inner = _unannotated(hint)
            if dataclasses.is_dataclass(inner):
                walk(inner)
            else:
                names.append(name)

    walk(cls)
    return len(names) == len(set(names))


def _with_flag_hint(message: str, args: list[str]) -> str:
    """tyro reports `--fast-path maybe` as "Unrecognized options: maybe": name the flag that took no
    value (a bool flag is `--fast-path` / `--no-fast-path`)."""
    if not message.startswith("Unrecognized options:"):
        return message
    for token in message.removeprefix("Unrecognized options:").split():
        if token.startswith("-") or token not in args:
            continue
        i = args.index(token)
        if i > 0 and args[i - 1].startswith("--") and "=" not in args[i - 1]:
            flag = args[i - 1]
            base = flag.removeprefix("--no-") if flag.startswith("--no-") else flag.removeprefix("--")
            return f"{flag} takes no value (got {token!r}): write --{base} or --no-{base}"
    return message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage and exits; we want one line
        raise CLIError(message)


def parse_args(
    add_arguments: Callable[[argparse.ArgumentParser], None], argv: Sequence[str], prog: str, doc: str | None
) -> argparse.Namespace:
    """argparse for the commands that are not a config (inspect, plot, prepare-data, grid)."""
    parser = _Parser(prog=prog, description=(doc or "").split("\n\n")[0])
    add_arguments(parser)
    return parser.parse_args(list(argv))


def print_config(obj: Any) -> None:
    """YAML of a config (a dataclass or a nested dict), as `--config FILE.yaml` reads it back."""
    print(yaml.safe_dump(to_jsonable(obj), sort_keys=False), end="")


def read_yaml(path: str, option: str = "--config") -> Any:
    """A YAML file given to `option` (an empty file is an empty mapping); a file that cannot be read
    is one CLIError naming the option and the file with the reason (not UTF-8, not YAML, missing)."""
    try:
        data = load_yaml_file(path, option)
    except ValueError as err:
        raise CLIError(str(err)) from None
    return {} if data is None else data


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="birth",
        description="Transformers as associative memories: train, probe, inspect and reproduce "
        "'Birth of a Transformer', the scaling laws of associative memories and their gradient dynamics.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS:
        print(
            f"birth: error: unknown command {argv[0]!r}; choose from {', '.join(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        return 2
    name, rest = argv[0], argv[1:]
    prog = f"birth {name}"
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
        return int(module.run(rest, prog) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError) as err:
        # one clear line, no traceback, for bad input the user can fix (ValueError covers
        # CLIError, config, checkpoint, data and output-directory errors)
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused (a full disk, a permission, a vanished path)
        where = f"{err.filename}: " if err.filename else ""
        print(f"{prog}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            f"{prog}: error: out of memory (try a smaller --d-model, --batch-size or --seq-len)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
