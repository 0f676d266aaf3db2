"""The experiment registry: every experiment is a config, a `run` and a `plot`.

An experiment is registered once, with

- a frozen config dataclass whose defaults are a size that runs on a 2-core CPU (every field has a
  one-line help comment and `Literal` choices, and `__post_init__` validates it);
- `run(config, out_dir, *, log, progress) -> Result`: the computation. It may write large
  artifacts (training runs) under `out_dir`, and returns a result dataclass;
- `plot(result, out_dir) -> list[Path]`: the figures, from the result alone;
- optionally `full()` (the papers' sizes) and `small()` (a version that runs in seconds, used by
  the tests).

`run_experiment` composes them: claim the output directory, run, write `result.json`, plot, print
the headline and where everything went. The command line (`birth reproduce`, `birth scaling`,
`birth capacity`, `birth dynamics`, `birth grid`) is a front end over this registry, and every
experiment is callable from Python with no argument parser.

Each family is a sub-package of `birth.experiments` (`birth/experiments/<family>/`) holding one
module per experiment and its shared pieces; the registry imports a family's modules on first use
(`pkgutil.walk_packages`), so a new experiment is a new module in its family's folder, nothing else.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from birth.base.io import (
    atomic_write_json,
    claim_output_dir,
    missing_dirs,
    release_claim,
    remove_new_output,
    to_jsonable,
)
from birth.base.memory_errors import as_out_of_memory, largest_sizes

Family = Literal["transformer", "theory", "scaling", "capacity", "dynamics"]
FAMILIES: tuple[Family, ...] = get_args(Family)
PACKAGE = "birth.experiments"  # each family is its sub-package PACKAGE.<family>

# What each family is about (`birth experiments`, --help), and the `birth` command that runs its
# experiments: the command of a family is its name unless this says otherwise.
FAMILY_ABOUT: dict[Family, str] = {
    "transformer": "Birth of a Transformer: its training claims and studies",
    "theory": "Birth of a Transformer: its theory (hand-built memories, gradient steps, lemmas)",
    "scaling": "scaling laws of associative memories",
    "capacity": "capacity of linear and non-linear associative memories",
    "dynamics": "gradient dynamics of associative memories (ICML 2024)",
}
SHARED_COMMAND: dict[Family, str] = {"transformer": "reproduce", "theory": "reproduce"}


def command_of(family: Family) -> str:
    """The `birth` sub-command that runs the experiments of `family`."""
    return SHARED_COMMAND.get(family, family)


def commands() -> dict[str, tuple[Family, ...]]:
    """Experiment sub-command -> the families it runs, in the order of `Family`."""
    out: dict[str, tuple[Family, ...]] = {}
    for family in FAMILIES:
        out[command_of(family)] = out.get(command_of(family), ()) + (family,)
    return out


def command_help(command: str) -> str:
    """One line for `birth --help`: what the families of `command` are about (a subject they share,
    "X: ...", said once)."""
    abouts = [FAMILY_ABOUT[f] for f in commands()[command]]
    subjects = {about.partition(": ")[0] for about in abouts}
    if len(abouts) > 1 and len(subjects) == 1 and all(": " in about for about in abouts):
        return f"{subjects.pop()}: " + "; ".join(about.partition(": ")[2] for about in abouts)
    return "; ".join(abouts)


class Result(Protocol):
    def headline(self) -> str: ...


@dataclass(frozen=True)
class ExperimentResult:
    """Base of experiment results: a dataclass that serializes to JSON and has a headline."""

    def headline(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


RunFn = Callable[..., ExperimentResult]
PlotFn = Callable[[ExperimentResult, Path], list[Path]]


@dataclass(frozen=True)
class Experiment:
    name: str
    family: Family
    summary: str  # one line, shown by --help and `birth experiments`
    config: type  # frozen dataclass; `config()` is the CPU-sized default
    run: RunFn
    plot: PlotFn
    full: Callable[[], Any] | None = None  # the papers' sizes (for a GPU or a long CPU run)
    small: Callable[[], Any] | None = None  # seconds on a CPU: what the tests run

    def default_config(self, full: bool = False) -> Any:
        if full:
            if self.full is None:
                raise ValueError(f"--full: experiment {self.name} has no full size")
            return self.full()
        return self.config()

    def default_out_dir(self) -> Path:
        return Path("results") / self.family / self.name


REGISTRY: dict[str, Experiment] = {}


def register(
    name: str,
    *,
    family: Family,
    summary: str,
    config: type,
    plot: PlotFn,
    full: Callable[[], Any] | None = None,
    small: Callable[[], Any] | None = None,
) -> Callable[[RunFn], RunFn]:
    """Decorator: register `run` as experiment `name`."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"experiment {name}: config must be a dataclass")

    def decorate(run: RunFn) -> RunFn:
        if name in REGISTRY and REGISTRY[name].run is not run:
            raise ValueError(f"experiment {name!r} is registered twice")
        REGISTRY[name] = Experiment(name, family, summary, config, run, plot, full, small)
        return run

    return decorate


def family_modules(family: Family) -> list[str]:
    """The modules of a family's sub-package (every level), found on disk, in name order."""
    package = importlib.import_module(f"{PACKAGE}.{family}")
    if not hasattr(package, "__path__"):  # a family still kept in one module
        return [package.__name__]
    found = pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    return sorted(info.name for info in found if not info.ispkg)


def load(*families: Family) -> dict[str, Experiment]:
    """Import the modules of `families` (all when none is named): each registers its experiments.
    Imported on first use, not with the registry (they import torch, some transformer_lens:
    `birth --help` must not pay for that)."""
    for family in families or FAMILIES:
        for module in family_modules(family):
            importlib.import_module(module)
    return REGISTRY


def get(name: str) -> Experiment:
    load()
    if name not in REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def names(*families: Family) -> list[str]:
    """Registered experiment names (of the given families; only their modules are imported), in
    the order of `Family`, then of the modules' names, then of registration within a module."""
    load(*families)
    found = []
    for family in families or FAMILIES:
        rank = {module: i for i, module in enumerate(family_modules(family))}
        mine = [n for n, e in REGISTRY.items() if e.family == family]
        found += sorted(mine, key=lambda n: rank.get(REGISTRY[n].run.__module__, len(rank)))
    return found


def run_experiment(
    name: str | Experiment,
    config: Any = None,
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> ExperimentResult:
    """Run experiment `name` (a registered name or an `Experiment`; default config when None) into
    `out_dir`, write `result.json` and its figures, print its headline and the paths written;
    return the result."""
    exp = name if isinstance(name, Experiment) else get(name)
    name = exp.name
    config = exp.config() if config is None else config
    if not isinstance(config, exp.config):
        raise TypeError(f"experiment {name} takes a {exp.config.__name__}, got {type(config).__name__}")
    created = missing_dirs(out_dir or exp.default_out_dir())
    out = claim_output_dir(out_dir or exp.default_out_dir(), overwrite=overwrite, recreate=("runs",))
    kept = [p.name for p in out.iterdir()]  # after the claim: an --overwrite's runs/ is gone already
    log(f"{name}: writing into {out}")
    started = time.perf_counter()
    try:
        result = exp.run(config, out, log=log, progress=progress)
        seconds = time.perf_counter() - started
        path = atomic_write_json(
            out / "result.json",
            {"experiment": name, "config": config, "seconds": seconds, "result": result},
        )
    except BaseException as err:
        # no result: nothing is left behind (the claim marker, the directories and files this run made)
        remove_new_output(out, created, kept)
        oom = as_out_of_memory(err, largest_sizes(config), f"running {name}", getattr(config, "device", None))
        if oom is not None:
            raise oom from None
        raise
    release_claim(out)
    log(f"wrote {path}")
    exp.plot(result, out)
    log(f"{name}: {result.headline()}  ({seconds:.1f} s)")
    return result
