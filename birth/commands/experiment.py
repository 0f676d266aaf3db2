"""`birth reproduce|scaling|capacity|dynamics NAME`: run a registered experiment.

Every experiment is a config dataclass, a `run` and a `plot` in `birth.experiments`; this command
exposes the config's fields as flags (`birth reproduce layers --help` lists them with types,
choices, defaults and help), runs it into `--out` (default results/<family>/<name>) and prints the
headline. `--full` starts from the papers' sizes instead of the CPU-sized defaults. Which families
each command runs is `birth.experiments.registry.commands()`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import tyro

from birth.base.config_io import config_from_dict
from birth.base.io import check_writable
from birth.cli import CLIError, parse_dataclass, print_config, read_yaml
from birth.experiments.registry import (
    FAMILIES,
    FAMILY_ABOUT,
    Experiment,
    commands,
    get,
    names,
    run_experiment,
)

ALL = "all"  # the NAME that runs every experiment of the command


class Option(NamedTuple):
    """An option every experiment command has, beside the config's own fields."""

    field: str  # the field of the command dataclass
    type: Any
    default: Any
    help: str
    flag: str  # as written on the command line (and in the common-options help)


OPTIONS = (
    Option(
        "full", bool, False, "start from the papers' sizes (GPU-sized) instead of the CPU defaults", "--full"
    ),
    Option(
        "out",
        Path | None,
        None,
        "output directory (default: results/<family>/<name>; never overwritten silently)",
        "--out DIR",
    ),
    Option(
        "overwrite",
        bool,
        False,
        "write into a non-empty --out (its files and runs/ are replaced)",
        "--overwrite",
    ),
    Option("progress", bool, True, "progress bars (on unless --no-progress)", "--no-progress"),
    Option("print_config", bool, False, "print the resolved config as YAML and exit", "--print-config"),
    Option(
        "config_file",
        Path | None,
        None,
        "start from a YAML config (as --print-config writes it)",
        "--config FILE",
    ),
)


def _command_class(config_type: type, default_config: Any) -> type:
    """A dataclass of the config plus the options every experiment command has."""
    fields: list[tuple[str, Any, Any]] = [("config", config_type, dataclasses.field(default=default_config))]
    for option in OPTIONS:
        name = option.flag.split()[0].removeprefix("--").removeprefix("no-")
        # tyro names a flag after its field; `config_file` is --config (the config itself is flattened)
        arg = tyro.conf.arg(help=option.help, name=name if name != option.field.replace("_", "-") else None)
        fields.append((option.field, Annotated[option.type, arg], option.default))
    return dataclasses.make_dataclass(f"{config_type.__name__}Command", fields, frozen=True)


def options_help() -> str:
    """The common options, as `birth reproduce --help` lists them."""
    width = max(len(option.flag) for option in OPTIONS)
    return "common options:\n" + "\n".join(f"  {o.flag:<{width}}  {o.help}" for o in OPTIONS)


def _list(found: list[str], title: str) -> str:
    width = max(map(len, found), default=0)
    lines = [title] + [f"  {n:<{width}}  {get(n).summary}" for n in found]
    return "\n".join(lines)


def _config_from_yaml(exp: Experiment, path: str) -> Any:
    try:
        return config_from_dict(exp.config, read_yaml(path))
    except (TypeError, ValueError) as err:
        raise CLIError(f"--config {path}: {err}") from None


def run_named(name: str, argv: list[str], prog: str) -> int:
    exp = get(name)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--full", action="store_true")
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    default = _config_from_yaml(exp, known.config) if known.config else exp.default_config(full=known.full)
    cls = _command_class(exp.config, default)
    cmd = parse_dataclass(cls, cls(), argv, prog, exp.summary)
    if cmd.print_config:
        print_config(cmd.config)
        return 0
    # an unusable --out fails now, not after the computation
    check_writable(cmd.out or exp.default_out_dir(), "--out")
    run_experiment(name, cmd.config, cmd.out, overwrite=cmd.overwrite, progress=cmd.progress)
    return 0


def argv_has_out(argv: list[str]) -> bool:
    return any(a == "--out" or a.startswith("--out=") for a in argv)


def _list_every_family(argv: list[str], prog: str) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: {prog}\n\nlist every registered experiment, by family")
        return 0
    if argv:
        raise CLIError(f"unrecognized arguments: {' '.join(argv)} (`{prog}` takes none)")
    for family in FAMILIES:
        found = names(family)
        if found:
            print(_list(found, f"{family} ({FAMILY_ABOUT[family]}):"))
    return 0


def run(argv: list[str], prog: str) -> int:
    command = prog.split()[-1]
    if command == "experiments":
        return _list_every_family(argv, prog)
    available = names(*commands()[command])
    if len(available) == 1 and (not argv or argv[0].startswith("-")):
        return run_named(available[0], argv, prog)  # one experiment: no NAME needed
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} NAME [options]   ({prog} NAME --help lists NAME's options)\n")
        print(_list(available, "experiments:"))
        print(
            f"  {ALL:<{max(map(len, available), default=3)}}  every experiment above, into results/<family>/<name>"
        )
        print("\n" + options_help())
        if not argv:
            raise CLIError(f"missing experiment NAME; choose from {', '.join(available)}, {ALL}")
        return 0
    name, rest = argv[0], argv[1:]
    if name == ALL:
        if argv_has_out(rest):
            raise CLIError(f"--out: `{ALL}` writes each experiment into its own results/<family>/<name>")
        for each in available:  # every output directory is usable before the first experiment runs
            check_writable(get(each).default_out_dir(), f"{prog} {each}: output directory")
        for each in available:
            print(f"== {each}")
            run_named(each, rest, f"{prog} {each}")
        return 0
    if name not in available:
        raise CLIError(f"unknown experiment {name!r} for `{prog}`; choose from {', '.join(available)}, {ALL}")
    return run_named(name, rest, f"{prog} {name}")
