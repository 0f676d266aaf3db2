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
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from birth.base.io import atomic_write_json, claim_output_dir, release_claim, to_jsonable

Family = Literal["transformer", "theory", "scaling", "capacity", "dynamics"]

# Modules that register experiments, imported on first use of the registry (each imports torch,
# some transformer_lens: `birth --help` must not pay for that).
MODULES = (
    "birth.experiments.transformer",
    "birth.experiments.transformer_studies",
    "birth.experiments.full_model",
    "birth.experiments.theory",
    "birth.experiments.scaling",
    "birth.experiments.capacity",
    "birth.experiments.dynamics",
    "birth.experiments.optimizer_grid",
)


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


def load_all() -> dict[str, Experiment]:
    for module in MODULES:
        importlib.import_module(module)
    return REGISTRY


def get(name: str) -> Experiment:
    load_all()
    if name not in REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def names(*families: Family) -> list[str]:
    """Registered experiment names (of the given families), in registration order."""
    load_all()
    return [n for n, e in REGISTRY.items() if not families or e.family in families]


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
    out = claim_output_dir(out_dir or exp.default_out_dir(), overwrite=overwrite, recreate=("runs",))
    log(f"{name}: writing into {out}")
    started = time.perf_counter()
    result = exp.run(config, out, log=log, progress=progress)
    seconds = time.perf_counter() - started
    path = atomic_write_json(
        out / "result.json",
        {"experiment": name, "config": config, "seconds": seconds, "result": result},
    )
    release_claim(out)
    log(f"wrote {path}")
    exp.plot(result, out)
    log(f"{name}: {result.headline()}  ({seconds:.1f} s)")
    return result
