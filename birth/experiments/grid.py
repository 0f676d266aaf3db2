"""`birth grid SPEC.yaml`: a grid of any registered experiment (or of `birth train` runs) through submitit.

A spec names what to run, the overrides shared by every point, the grid (a cartesian product of
config values) and where it runs:

    experiment: optimizer-grid     # a registered name, "package.module:name", or "train"
    base: default                  # the config the points start from: default | full | small
    fixed: {num_seeds: 10}         # overrides for every point
    grid:                          # one point per combination (tuple fields take lists);
      models: [[matrix], [learned], [relu]]   # a list of such mappings is the union of
      dims: [[10], [100], [1000]]             # their products
    out: results/grids/optimizer-grid   # one sub-directory per point, named from its values
    results: results.jsonl         # default <out>/results.jsonl; a relative path is under `out`
    executor:                      # submitit: local (default), slurm or debug (in-process)
      cluster: local
      parallel: 2                  # jobs at once (Slurm: the job array's parallelism)
      threads: 1                   # torch threads per job (default: the cores / parallel)
      timeout_min: 1440            # generic submitit parameters: timeout_min, mem_gb,
      slurm: {partition: gpu}      #   cpus_per_task, gpus_per_node, name; slurm: slurm_<key>
    wandb: {mode: off, group: optimizer-grid, project: birth}

For `experiment: train` the points are `birth train` runs: `preset:` (quick | paper) replaces
`base:`, the overrides are the flat config fields (`lr`, `d_model`, `seed`, ...) and `device:`
picks the device.

The spec is read by the loader of `--config` files (`birth.base.config_io.config_from_dict` into
`SpecFile`), and every point's config is built and validated before the first job starts (unknown
experiment, unknown field, wrong type or a value the config refuses: one error naming the key). Each finished point
appends one JSON line to the results file, written by this (parent) process only, under a file
lock, one `write` per line: the point, "ok" or "failed" with a one-line error, the result's
`to_dict()` and the wall time. A re-run skips the points whose latest line says "ok" (same
experiment, base and overrides) and runs the others again; a failed point never stops the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib
import json
import math
import os
import re
import sys
import time
import traceback
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from birth.base.config_io import coerce, config_from_dict, load_yaml_file
from birth.base.io import check_writable, to_jsonable
from birth.base.runtime import WandbMode
from birth.base.validate import Float, Int, OrNone, Validated
from birth.experiments import registry
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import ICL_ACC

Cluster = Literal["local", "slurm", "debug"]
Base = Literal["default", "full", "small"]
CLUSTERS: tuple[Cluster, ...] = typing.get_args(Cluster)
TRAIN = "train"
DEFAULT_TIMEOUT_MIN = 24 * 60  # submitit's local default (2 minutes) would kill most points

# training.config imports transformer_lens (seconds, measured with `python -X importtime`): it is
# imported when a spec names `experiment: train`, not with this module (`birth grid --help`).


# --------------------------------------------------------------------------------------------
# values: YAML gives no types, the config fields have them


def field_hints(config_type: type) -> dict[str, Any]:
    """Field name -> evaluated type hint of a config dataclass."""
    hints = typing.get_type_hints(config_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_type)}


# --------------------------------------------------------------------------------------------
# targets: a registered experiment, or `birth train`


@dataclass(frozen=True)
class Target:
    """What a grid runs: `spec` is the spec's `experiment` string."""

    spec: str

    @property
    def is_train(self) -> bool:
        return self.spec == TRAIN

    def experiment(self) -> registry.Experiment:
        """The registered Experiment (importing only its module for "module:name")."""
        if ":" in self.spec:
            module, _, name = self.spec.partition(":")
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ValueError(f"experiment: cannot import module {module!r}: {err}") from None
            if name not in registry.REGISTRY:
                raise ValueError(f"experiment: module {module} registers no experiment {name!r}")
            return registry.REGISTRY[name]
        try:
            return registry.get(self.spec)
        except ValueError as err:
            raise ValueError(f"experiment: {err}") from None
        except ImportError as err:  # a module of an experiment family is broken or missing
            raise ValueError(f"experiment: cannot load the experiment registry: {err}") from None

    def hints(self) -> dict[str, Any]:
        if self.is_train:
            from training.config import SECTIONS, TrainConfig  # seconds: see the note above

            defaults = TrainConfig()
            out: dict[str, Any] = {}
            for section in SECTIONS:
                out.update(field_hints(type(getattr(defaults, section))))
            return out
        return field_hints(self.experiment().config)

    def base_config(self, base: str, preset: str | None) -> Any:
        if self.is_train:
            from training.config import PRESETS  # seconds: see the note above

            return PRESETS[preset or "quick"]
        exp = self.experiment()
        if base == "full":
            return exp.default_config(full=True)
        if base == "small":
            if exp.small is None:
                raise ValueError(f"base: experiment {exp.name} has no small size")
            return exp.small()
        return exp.config()

    def build(self, base: str, preset: str | None, overrides: dict[str, Any]) -> Any:
        """The config of one point; the config's own validation runs here."""
        config = self.base_config(base, preset)
        if self.is_train:
            config = config.replace(**overrides)
            config.validate(load_stats().vocab_size)
            return config
        return dataclasses.replace(config, **overrides)


# --------------------------------------------------------------------------------------------
# the spec file: typed sections, read by the same loader as `--config` (`config_from_dict`)


@dataclass(frozen=True)
class ExecutorSpec(Validated):
    """Where the points run (submitit)."""

    cluster: Cluster = "local"  # local, slurm or debug (in-process, one after the other)
    parallel: Annotated[int, Int(1)] = 1  # jobs at once (Slurm: the job array's parallelism)
    threads: Annotated[int | None, OrNone(Int(1))] = None  # torch threads per job (default: cores / parallel)
    timeout_min: Annotated[int, Int(1)] = DEFAULT_TIMEOUT_MIN
    mem_gb: Annotated[float | None, OrNone(Float(0.0, open_low=True))] = None
    cpus_per_task: Annotated[int | None, OrNone(Int(1))] = None
    gpus_per_node: Annotated[int | None, OrNone(Int(1))] = None
    name: str | None = None  # the jobs' name
    slurm: dict[str, Any] = field(default_factory=dict)  # passed to submitit as slurm_<key>

    def params(self) -> dict[str, Any]:
        """submitit's generic parameters (those set) and the Slurm ones, prefixed."""
        generic = ("timeout_min", "mem_gb", "cpus_per_task", "gpus_per_node", "name")
        params = {key: getattr(self, key) for key in generic if getattr(self, key) is not None}
        return params | {f"slurm_{key}": value for key, value in self.slurm.items()}


@dataclass(frozen=True)
class WandbSpec(Validated):
    """W&B logging of the points: one run per point, in one group."""

    mode: WandbMode = "off"
    group: str | None = None  # default: the spec file's name
    project: str = "birth"

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("group", "project"):
            value = getattr(self, key)
            if value is not None and not value:
                raise ValueError(f"wandb.{key} must be a non-empty string, got {value!r}")


@dataclass(frozen=True)
class SpecFile(Validated):
    """A grid spec as written (see the module's docstring); `GridSpec` is what it expands to."""

    experiment: str = ""  # a registered name, "package.module:name", or "train"
    base: Base | None = None  # experiments: the config the points start from (default: default)
    preset: str | None = None  # train: the preset the points start from (default: quick)
    device: str | None = None  # train: the device (auto, cpu, cuda, cuda:N; default: auto)
    fixed: dict[str, Any] | None = None  # overrides for every point (typed by the target's fields)
    grid: Any = None  # a mapping of lists (a cartesian product), or a list of such mappings
    out: str | None = None  # default: results/grids/<spec name>
    results: str = "results.jsonl"  # a relative path is under `out`
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    wandb: WandbSpec = field(default_factory=WandbSpec)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.experiment:
            raise ValueError("experiment must name a registered experiment, 'module:name' or 'train'")
        if not self.results:
            raise ValueError(f"results must be a file name or path, got {self.results!r}")
        if self.experiment == TRAIN:
            if self.base is not None:
                raise ValueError("base is for experiments; a train grid starts from a preset:")
        else:
            for key in ("preset", "device"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is for train grids (experiment: train)")


def read_spec_file(raw: Any) -> SpecFile:
    """The spec's sections, typed and checked (errors name the key, without the file)."""
    wandb = raw.get("wandb") if isinstance(raw, dict) else None
    if isinstance(wandb, dict) and wandb.get("mode") is False:  # YAML 1.1 reads a bare `off` as false
        raw = {**raw, "wandb": {**wandb, "mode": "off"}}
    return config_from_dict(SpecFile, {} if raw is None else raw, where="")


# --------------------------------------------------------------------------------------------
# the spec, expanded


@dataclass(frozen=True)
class Point:
    name: str  # the sub-directory of the grid's `out`, derived from `values`
    values: dict[str, Any]  # this point's grid values (typed)
    overrides: dict[str, Any]  # fixed + values (typed)


@dataclass(frozen=True)
class GridSpec:
    experiment: str
    base: Base = "default"
    preset: str | None = None  # train only
    device: str = "auto"  # train only
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    out: Path = Path("results/grids/grid")
    results: Path = Path("results/grids/grid/results.jsonl")
    cluster: Cluster = "local"
    parallel: int = 1
    threads: int | None = None
    executor_params: dict[str, Any] = field(default_factory=dict)
    wandb_mode: WandbMode = "off"
    wandb_group: str = "grid"
    wandb_project: str = "birth"
    points: tuple[Point, ...] = ()

    @property
    def target(self) -> Target:
        return Target(self.experiment)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "+".join(_format_value(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def point_name(values: dict[str, Any]) -> str:
    """A stable directory name from a point's values: "d=10,lr=0.1"; characters outside
    [A-Za-z0-9._+=,-] become "_" and then, or past 120 characters, a hash of the values is added."""
    if not values:
        return "point"
    text = ",".join(f"{k}={_format_value(v)}" for k, v in values.items())
    safe = re.sub(r"[^A-Za-z0-9._+=,-]", "_", text)
    if safe != text or len(safe) > 120:
        digest = hashlib.sha1(canonical(values).encode()).hexdigest()[:10]
        safe = f"{safe[:100]}-{digest}"
    return safe


def canonical(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))


def _preset_name(spec: SpecFile) -> str | None:
    """A train grid's preset (checked against the presets), None for an experiment grid."""
    if spec.experiment != TRAIN:
        return None
    from training.config import PRESETS  # seconds: see the note above

    preset = "quick" if spec.preset is None else spec.preset
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return preset


def expand_points(
    target: Target,
    base: str,
    preset: str | None,
    fixed_raw: dict[str, Any],
    grid_raw: Any,
    source: str,
    on_point: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], dict[str, list[Any]], list[Point]]:
    """(fixed, the grid's axes, the points): values typed by the target's fields, every point's
    config built (and so validated; `on_point()` after each, for a progress bar); errors name the key."""
    try:
        hints = target.hints()
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None

    def check_name(name: Any, where: str) -> None:
        if not isinstance(name, str) or name not in hints:
            raise ValueError(f"{where}: unknown field {name!r} of {target.spec} (fields: {', '.join(hints)})")

    fixed = {}
    for name, value in fixed_raw.items():
        check_name(name, f"{source}: fixed.{name}")
        fixed[name] = coerce(value, hints[name], f"{source}: fixed.{name}")

    # `grid` is one mapping (a cartesian product) or a list of them (the union of their products)
    products = grid_raw or {}
    products = products if isinstance(products, list) else [products]
    axes: dict[str, list[Any]] = {}
    points: list[Point] = []
    for k, product in enumerate(products):
        where = f"{source}: grid" + (f"[{k}]" if len(products) > 1 else "")
        if not isinstance(product, dict):
            raise ValueError(f"{where} must be a mapping, got {product!r}")
        product_axes: dict[str, list[Any]] = {}
        for name, values in product.items():
            check_name(name, f"{where}.{name}")
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}.{name} must be a non-empty list of values, got {values!r}")
            if name in fixed:
                raise ValueError(f"{where}.{name} is also in fixed")
            product_axes[name] = [
                coerce(v, hints[name], f"{where}.{name}[{i}]") for i, v in enumerate(values)
            ]
            axes.setdefault(name, []).extend(v for v in product_axes[name] if v not in axes.get(name, []))
        combos: list[tuple[Any, ...]] = [()]
        for values in product_axes.values():
            combos = [c + (v,) for c in combos for v in values]
        for combo in combos:
            values = dict(zip(product_axes, combo))
            overrides = {**fixed, **values}
            try:
                target.build(base, preset, overrides)
            except (ValueError, TypeError) as err:
                label = ", ".join(f"{k}={_format_value(v)}" for k, v in values.items()) or "the only point"
                raise ValueError(f"{source}: point {label}: {str(err).splitlines()[0]}") from None
            points.append(Point(point_name(values), values, overrides))
            if on_point is not None:
                on_point()
    keys = [canonical(p.overrides) for p in points]
    names = [p.name for p in points]
    if len(set(keys)) != len(keys) or len(set(names)) != len(names):
        raise ValueError(f"{source}: grid has repeated points (a value is listed twice)")
    return fixed, axes, points


def parse_spec(
    raw: Any,
    *,
    source: str = "spec",
    out: Path | None = None,
    cluster: str | None = None,
    parallel: int | None = None,
    stem: str = "grid",
    on_point: Callable[[], None] | None = None,
) -> GridSpec:
    """Validate a spec (the parsed YAML) and expand its points; every error names its key.
    `out`, `cluster` and `parallel` override the spec's (the command line's --out, --cluster,
    --parallel)."""
    try:
        spec = read_spec_file(raw)
        executor = spec.executor
        if cluster is not None or parallel is not None:
            executor = dataclasses.replace(
                executor,
                cluster=executor.cluster if cluster is None else cluster,
                parallel=executor.parallel if parallel is None else parallel,
            )
        preset = _preset_name(spec)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: {str(err).splitlines()[0]}") from None
    base = spec.base or "default"
    target = Target(spec.experiment)
    fixed, axes, points = expand_points(target, base, preset, spec.fixed or {}, spec.grid, source, on_point)
    out_dir = Path(out) if out is not None else Path(spec.out or f"results/grids/{stem}")
    return GridSpec(
        experiment=spec.experiment,
        base=base,
        preset=preset,
        device=spec.device or "auto",
        fixed=fixed,
        grid=axes,
        out=out_dir,
        results=out_dir / spec.results,  # an absolute `results` stays absolute
        cluster=executor.cluster,
        parallel=executor.parallel,
        threads=executor.threads,
        executor_params=executor.params(),
        wandb_mode=spec.wandb.mode,
        wandb_group=spec.wandb.group or stem,
        wandb_project=spec.wandb.project,
        points=tuple(points),
    )


def load_spec(path: str | os.PathLike, **options: Any) -> GridSpec:
    path = Path(path)
    return parse_spec(load_yaml_file(path), source=str(path), stem=path.stem, **options)


def count_points(raw: Any) -> int:
    """How many points a spec (the parsed YAML) asks for, counted from its lists before any point
    is built: a grid is refused or announced before it is expanded (0 for a spec too malformed to
    count; its validation says why)."""
    products = raw.get("grid") if isinstance(raw, dict) else None
    products = products if isinstance(products, list) else [products or {}]
    total = 0
    for product in products:
        if isinstance(product, dict):
            total += math.prod(len(v) if isinstance(v, list) else 1 for v in product.values())
    return total


# --------------------------------------------------------------------------------------------
# the results file


def append_line(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line: one `write` of the whole line under an exclusive lock, so lines of
    grids sharing a file never interleave and a reader never sees half a line (but at a crash)."""
    data = (json.dumps(to_jsonable(row)) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


def read_results(path: Path) -> list[dict[str, Any]]:
    """The lines of a results file (a line cut by a crash is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def point_key(experiment: str, base: str, overrides: dict[str, Any]) -> str:
    return canonical({"experiment": experiment, "base": base, "overrides": overrides})


def finished_keys(rows: Iterable[dict[str, Any]]) -> set[str]:
    """Keys of the points whose latest line says "ok"."""
    latest: dict[str, str] = {}
    for row in rows:
        if {"experiment", "base", "overrides", "status"} <= set(row):
            latest[point_key(row["experiment"], row["base"], row["overrides"])] = row["status"]
    return {k for k, status in latest.items() if status == "ok"}


# --------------------------------------------------------------------------------------------
# one point (runs inside the submitit job)


@dataclass(frozen=True)
class PointJob:
    """Everything a job needs (picklable): it rebuilds the config itself."""

    experiment: str
    base: str
    preset: str | None
    device: str
    name: str
    overrides: dict[str, Any]
    out_dir: str
    threads: int | None
    wandb_mode: str
    wandb_group: str
    wandb_project: str
    # the debug executor runs points in this process: a failure's traceback goes to this file (the
    # terminal gets one line), and Ctrl-C stops the grid instead of only the point's run
    log: str | None = None
    in_process: bool = False


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def run_point(job: PointJob) -> dict[str, Any]:
    """Run one point; never raises for a failure of the point itself (the error is returned)."""
    started = time.perf_counter()
    try:
        if job.threads is not None:
            import torch

            torch.set_num_threads(job.threads)
        if job.wandb_mode != "off":
            os.environ["WANDB_RUN_GROUP"] = job.wandb_group  # picked up by any wandb.init below
        target = Target(job.experiment)
        config = target.build(job.base, job.preset, job.overrides)
        if target.is_train:
            result, headline, ok = _run_train(job, config)
        else:
            result, headline = _run_experiment(target.experiment(), config, Path(job.out_dir), job)
            ok = True
    except Exception as err:  # noqa: BLE001 - a failed point is reported, the grid goes on
        if job.log is None:
            traceback.print_exc()  # the whole traceback goes to the job's log
        else:
            Path(job.log).parent.mkdir(parents=True, exist_ok=True)
            Path(job.log).write_text(traceback.format_exc())
        return {"status": "failed", "error": one_line(err), "seconds": time.perf_counter() - started}
    return {
        "status": "ok" if ok else "failed",
        "error": None if ok else headline,
        "result": result,
        "headline": headline,
        "seconds": time.perf_counter() - started,
    }


def _run_experiment(exp, config: Any, out: Path, job: PointJob) -> tuple[dict[str, Any], str]:
    # a point is only run again when it did not finish: its old files are replaced
    result = registry.run_experiment(exp, config, out, overwrite=True, progress=False)
    data = result.to_dict()
    _wandb_summary(job, data)
    return data, result.headline()


def _run_train(job: PointJob, config: Any) -> tuple[dict[str, Any], str, bool]:
    from training.run_dir import read_run_config  # seconds: see the note at the top
    from training.trainer import train

    run_dir = Path(job.out_dir)
    resume = False
    if run_dir.is_dir() and any(run_dir.iterdir()):
        # an earlier attempt of this point with this config: continue it (from its last checkpoint,
        # or from step 0 when it died before the first one); else keep its files aside, start afresh
        try:
            resume = read_run_config(run_dir).to_dict() == config.to_dict()
        except (ValueError, OSError):
            resume = False
        if not resume:
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}"))
    result = train(
        config, run_dir, resume=resume, device=job.device, wandb_mode=job.wandb_mode, progress=False
    )
    if result.status == "interrupted" and job.in_process:
        raise KeyboardInterrupt  # Ctrl-C stopped the run: it stops the grid too
    data = to_jsonable(result)
    acc = result.final.get(ICL_ACC)
    headline = f"{result.status} at step {result.step}" + (
        f", in-context accuracy {acc:.4f}" if acc is not None else ""
    )
    # a diverged run is a finished outcome (a re-run would diverge again); an interrupted one is not
    return data, headline, result.status != "interrupted"


def _wandb_summary(job: PointJob, data: dict[str, Any]) -> None:
    """One W&B run per experiment point, in the grid's group: the overrides as config, the
    result's scalar fields as summary. Best effort: a W&B failure never fails the point."""
    if job.wandb_mode == "off":
        return
    try:
        import wandb

        run = wandb.init(
            project=job.wandb_project,
            group=job.wandb_group,
            name=job.name,
            dir=job.out_dir,
            config={"experiment": job.experiment, **to_jsonable(job.overrides)},
            mode=job.wandb_mode,
            reinit="finish_previous",
        )
        run.summary.update({k: v for k, v in data.items() if isinstance(v, (int, float, str, bool))})
        run.finish()
    except Exception as err:  # noqa: BLE001
        print(f"warning: W&B logging failed, the point is still recorded: {err}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# the grid


@dataclass
class GridReport:
    total: int
    skipped: int
    ok: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (point name, error)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def make_executor(spec: GridSpec):
    import submitit

    folder = spec.out / ".submitit" / "%j"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=spec.cluster)
    except RuntimeError as err:  # e.g. cluster slurm on a machine without srun
        raise ValueError(f"executor: cluster {spec.cluster}: {str(err).splitlines()[0]}") from None
    params = dict(spec.executor_params)
    if spec.cluster == "slurm":
        params.setdefault("slurm_array_parallelism", spec.parallel)
    if spec.cluster == "local" and "gpus_per_node" not in params:
        # submitit's local jobs see only gpus_per_node GPUs (none by default): let them share all
        import torch

        if torch.cuda.is_available():
            params["gpus_per_node"] = torch.cuda.device_count()
    try:
        executor.update_parameters(**params)
    except (NameError, AssertionError, TypeError, ValueError) as err:
        raise ValueError(f"executor: {str(err).splitlines()[0]}") from None
    return executor


def _job_threads(spec: GridSpec) -> int | None:
    if spec.threads is not None:
        return spec.threads
    if spec.cluster == "slurm":
        return spec.executor_params.get("cpus_per_task")
    # local jobs run side by side on this machine: share its cores
    return max(1, (os.cpu_count() or 1) // spec.parallel)


def _job_log(job: Any, point: PointJob) -> str | None:
    if point.log is not None:  # the debug executor's, written by `run_point`
        return point.log
    try:
        return str(job.paths.stderr)
    except Exception:  # noqa: BLE001 - debug jobs have no log file
        return None


@contextlib.contextmanager
def _stderr_into(path: Path) -> Iterator[None]:
    """This process's stderr (fd 2) into `path` while a local job starts: its submitit controller
    inherits it, so what the controller prints when Ctrl-C stops it (a KeyboardInterrupt
    traceback) goes to that log instead of the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def run_grid(spec: GridSpec, *, log: Callable[[str], None] = print, poll_s: float = 0.2) -> GridReport:
    """Run the points of `spec` not finished yet; one results line per point as it ends."""
    check_writable(spec.out, "out")
    done = finished_keys(read_results(spec.results))
    todo = [p for p in spec.points if point_key(spec.experiment, base_of(spec), p.overrides) not in done]
    report = GridReport(total=len(spec.points), skipped=len(spec.points) - len(todo))
    log(
        f"grid {spec.wandb_group}: {report.total} points, {report.skipped} already done, {len(todo)} to run "
        f"({spec.cluster}, {spec.parallel} at a time); results in {spec.results}"
    )
    if not todo:
        return report
    executor = make_executor(spec)
    threads = _job_threads(spec)
    jobs = {
        p.name: PointJob(
            experiment=spec.experiment,
            base=base_of(spec),
            preset=spec.preset,
            device=spec.device,
            name=p.name,
            overrides=p.overrides,
            out_dir=str(spec.out / p.name),
            threads=threads,
            wandb_mode=spec.wandb_mode,
            wandb_group=spec.wandb_group,
            wandb_project=spec.wandb_project,
            log=str(spec.out / ".submitit" / "debug" / f"{p.name}.log") if spec.cluster == "debug" else None,
            in_process=spec.cluster == "debug",
        )
        for p in todo
    }
    by_name = {p.name: p for p in todo}

    def record(name: str, outcome: dict[str, Any], job: Any, started: float) -> None:
        point = by_name[name]
        status = outcome.get("status", "failed")
        row = {
            "name": name,
            "experiment": spec.experiment,
            "base": base_of(spec),
            "point": point.values,
            "overrides": point.overrides,
            "status": status,
            "error": outcome.get("error"),
            "result": outcome.get("result"),
            "seconds": outcome.get("seconds", time.perf_counter() - started),
            "wall_seconds": time.perf_counter() - started,  # with queueing and process start
            "out_dir": str(spec.out / name),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if status != "ok":
            row["log"] = _job_log(job, jobs[name])
        append_line(spec.results, row)
        index = len(report.ok) + len(report.failed) + 1
        if status == "ok":
            report.ok.append(name)
            log(f"[{index}/{len(todo)}] {name}: ok ({row['seconds']:.1f} s) {outcome.get('headline', '')}")
        else:
            report.failed.append((name, str(row["error"])))
            log(
                f"[{index}/{len(todo)}] {name}: FAILED: {row['error']}"
                + (f" (log: {row['log']})" if row.get("log") else "")
            )

    def collect(job: Any) -> dict[str, Any]:
        try:
            return job.result()
        except Exception as err:  # noqa: BLE001 - the job process died (timeout, kill, crash)
            return {"status": "failed", "error": one_line(err)}

    pending = list(jobs)
    running: dict[str, tuple[Any, float]] = {}
    try:
        if spec.cluster == "debug":  # in-process, one after the other
            for name in pending:
                started = time.perf_counter()
                job = executor.submit(run_point, jobs[name])
                record(name, collect(job), job, started)
            return report
        while pending or running:
            if spec.cluster == "slurm" and pending:
                # one job array; Slurm itself keeps `parallel` of them running
                with executor.batch():
                    submitted = [(name, executor.submit(run_point, jobs[name])) for name in pending]
                now = time.perf_counter()
                running.update({name: (job, now) for name, job in submitted})
                log(
                    f"submitted {len(submitted)} jobs to Slurm (array {submitted[0][1].job_id.split('_')[0]})"
                )
                pending = []
            while pending and len(running) < spec.parallel:
                name = pending.pop(0)
                with _stderr_into(spec.out / ".submitit" / "controllers.log"):
                    running[name] = (executor.submit(run_point, jobs[name]), time.perf_counter())
            for name in [n for n, (job, _) in running.items() if job.done()]:
                job, started = running.pop(name)
                record(name, collect(job), job, started)
            if running:
                time.sleep(poll_s if spec.cluster == "local" else max(poll_s, 10.0))
    except KeyboardInterrupt:
        for job, _ in running.values():
            job.cancel(check=False)
        log(f"interrupted: {len(running)} running points cancelled; a re-run continues the grid")
        raise
    return report


def base_of(spec: GridSpec) -> str:
    return f"preset:{spec.preset}" if spec.experiment == TRAIN else spec.base
