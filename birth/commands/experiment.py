"""`birth reproduce|scaling|capacity|dynamics NAME`: run a registered experiment.

Every experiment is a config dataclass, a `run` and a `plot` in `birth.experiments`; this command
exposes the config's fields as flags (`birth reproduce layers --help` lists them with types,
choices, defaults and help), runs it into `--out` (default results/<family>/<name>) and prints the
headline. `--full` starts from the papers' sizes instead of the CPU-sized defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Annotated

import tyro

# command -> the experiment families it runs
FAMILIES = {
    "reproduce": ("transformer", "theory"),
    "scaling": ("scaling",),
    "capacity": ("capacity",),
    "dynamics": ("dynamics",),
}


def _option(tp, help_: str, name: str | None = None):
    return Annotated[tp, tyro.conf.arg(help=help_, name=name)]


def _command_class(config_type: type, default_config) -> type:
    """A dataclass of the config plus the options every experiment command has."""
    return dataclasses.make_dataclass(
        f"{config_type.__name__}Command",
        [
            ("config", config_type, dataclasses.field(default=default_config)),
            ("full", _option(bool, "start from the papers' sizes instead of the CPU-sized defaults"), False),
            ("out", _option(Path | None, "output directory (default: results/<family>/<name>)"), None),
            ("overwrite", _option(bool, "write into a non-empty --out (its runs/ are re-created)"), False),
            ("progress", _option(bool, "progress bars"), True),
            ("print_config", _option(bool, "print the resolved config as YAML and exit"), False),
            (
                "config_file",
                _option(Path | None, "start from a YAML config (as --print-config writes it)", "config"),
                None,
            ),
        ],
        frozen=True,
    )


_OPTION_HELP = """common options:
  --full            start from the papers' sizes (GPU-sized) instead of the CPU defaults
  --out DIR         output directory (default results/<family>/<name>; never overwritten silently)
  --overwrite       write into a non-empty --out (replaces the experiment's files and runs/)
  --no-progress     no progress bars
  --print-config    print the resolved config as YAML and exit
  --config FILE     start from a YAML config (as --print-config writes it)"""


def _list(names: list[str], title: str) -> str:
    from birth.experiments.registry import get

    width = max(map(len, names), default=0)
    lines = [title] + [f"  {n:<{width}}  {get(n).summary}" for n in names]
    return "\n".join(lines)


def _config_from_yaml(exp, path: str):
    from birth.base.config_io import config_from_dict
    from birth.cli import CLIError, read_yaml

    try:
        return config_from_dict(exp.config, read_yaml(path))
    except (TypeError, ValueError) as err:
        raise CLIError(f"--config {path}: {err}") from None


def run_named(name: str, argv: list[str], prog: str) -> int:
    from birth.base.io import check_writable
    from birth.cli import parse_dataclass, print_config
    from birth.experiments.registry import get, run_experiment

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


def run(argv: list[str], prog: str) -> int:
    from birth.cli import CLIError
    from birth.experiments.registry import get, names

    command = prog.split()[-1]
    if command == "experiments":
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: {prog}\n\nlist every registered experiment, by family")
            return 0
        if argv:
            raise CLIError(f"unrecognized arguments: {' '.join(argv)} (`{prog}` takes none)")
        for family in ("transformer", "theory", "scaling", "capacity", "dynamics"):
            found = names(family)
            if found:
                print(_list(found, f"{family}:"))
        return 0
    available = names(*FAMILIES[command])
    if command == "capacity" and (not argv or argv[0].startswith("-")) and available == ["capacity"]:
        return run_named("capacity", argv, prog)  # one experiment: no NAME needed
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} NAME [options]   ({prog} NAME --help lists NAME's options)\n")
        print(_list(available, "experiments:"))
        print(
            f"  {'all':<{max(map(len, available), default=3)}}  every experiment above, into results/<family>/<name>"
        )
        print("\n" + _OPTION_HELP)
        if not argv:
            raise CLIError(f"missing experiment NAME; choose from {', '.join(available)}, all")
        return 0
    name, rest = argv[0], argv[1:]
    if name == "all":
        if argv_has_out(rest):
            raise CLIError("--out: `all` writes each experiment into its own results/<family>/<name>")
        from birth.base.io import check_writable

        for each in available:  # every output directory is usable before the first experiment runs
            check_writable(get(each).default_out_dir(), f"{prog} {each}: output directory")
        for each in available:
            print(f"== {each}")
            run_named(each, rest, f"{prog} {each}")
        return 0
    if name not in available:
        raise CLIError(f"unknown experiment {name!r} for `{prog}`; choose from {', '.join(available)}, all")
    get(name)
    return run_named(name, rest, f"{prog} {name}")
