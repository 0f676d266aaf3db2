"""`birth` command: one subcommand per module under `scripts/`, imported only when it runs.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`. Importing lazily
keeps `birth --help` fast (transformer_lens alone takes seconds to import).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("scripts.prepare_data", "rebuild the shipped Shakespeare statistics from a text"),
    "train": ("scripts.train", "train the 1- or 2-layer transformer on the triggered-bigram task"),
    "inspect": ("scripts.inspect_checkpoint", "attention maps and induction scores of a checkpoint"),
    "plot": ("scripts.plot_runs", "learning-order figure (probes and accuracy vs step) of runs"),
    "reproduce": ("scripts.reproduce", "reproduce a claim of the Birth of a Transformer paper"),
    "scaling": ("scripts.scaling", "scaling-law figures of associative memories"),
    "capacity": ("scripts.capacity", "capacity of linear and non-linear associative memories"),
}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _available() -> dict[str, tuple[str, str]]:
    return {
        name: spec
        for name, spec in SUBCOMMANDS.items()
        if importlib.util.find_spec(spec[0]) is not None
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    available = _available()
    parser = argparse.ArgumentParser(
        prog="birth",
        description="Transformers as associative memories: train, probe, inspect and reproduce "
        "'Birth of a Transformer' and the scaling laws of associative memories.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in available.items():
        sub.add_parser(name, help=help_, add_help=False)
    # Parse only the command name first, then hand the rest to that module's own parser.
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in available:
        args = parser.parse_args(argv[:1] or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(available[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"birth {name}", description=available[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as err:
        # one clear line, no traceback, for bad input the user can fix
        print(f"birth {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"birth {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
