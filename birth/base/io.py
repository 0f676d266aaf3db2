"""Files: one atomic writer, one output-directory policy, one figure saver.

Every result file of the toolkit is written through `atomic_write` (a temporary file in the same
directory, fsync, rename), so a reader never sees half a file and an interrupted write leaves the
previous version intact. Output directories are claimed by `claim_output_dir`, which refuses to
mix results with an earlier run's unless asked (`--overwrite`) and is atomic across processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

LOCK_NAME = ".birth-claim"


class OutputError(ValueError):
    """An output path that cannot be used (exists, not a directory, not writable)."""


class InputError(ValueError):
    """A file the user handed in that cannot be read: missing, a directory, not UTF-8 text."""


def not_utf8(data: bytes, err: UnicodeDecodeError) -> str:
    """The reason, in words, that `data` is not UTF-8 text: the first bad byte and its offset."""
    return f"is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"


def read_user_text(path: str | os.PathLike, option: str | None = None) -> str:
    """The text of a file the user handed in (a config, a grid spec, a corpus), or an InputError
    naming the option and the file with the reason: "--config x.yaml is not UTF-8 text (byte 0xff
    at offset 12)", "--config x: Is a directory", "--config x: No such file or directory"."""
    label = f"{option} {path}" if option else str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"{label}: {err.strerror or type(err).__name__}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{label} {not_utf8(data, err)}") from None


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write `path` through `write(binary file)` atomically, with the umask's file mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: dataclasses and mappings recursively, tensors/arrays as lists,
    paths as strings, NaN and infinities as None (JSON has no NaN). A config that reads itself
    (`birth.base.config_io.reads_itself`: a `from_dict` classmethod) is written by its `to_dict()`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if callable(getattr(type(obj), "from_dict", None)):
            return to_jsonable(obj.to_dict())
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return to_jsonable(obj.tolist())
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2) + "\n")


def check_writable(path: str | os.PathLike, option: str = "--out") -> Path:
    """Fail now, not after the computation, when `path` cannot become a writable directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} exists and is not a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{option} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path} is not writable ({probe} does not allow writing)")
    if probe != path and os.geteuid() == 0:
        # os.access says yes to root everywhere, /proc and /sys included: try for real
        try:
            os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".birth-probe-"))
        except OSError as err:
            raise OutputError(f"{option} {path} cannot be created in {probe}: {err.strerror}") from None
    return path


def _claim_empty_dir(path: Path) -> bool:
    """Claim a new or empty directory: the one process whose O_EXCL lock file creation succeeds.

    Even the process that created the directory takes the lock (another may find it still empty),
    and the lock's owner checks again that the directory holds nothing else: a claimant that wrote
    its files and released its lock between our first look and our lock must win, not us."""
    path.mkdir(exist_ok=True)
    if any(p.name != LOCK_NAME for p in path.iterdir()):
        return False
    try:
        fd = os.open(path / LOCK_NAME, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False  # another process claimed it first
    os.close(fd)
    if any(p.name != LOCK_NAME for p in path.iterdir()):
        (path / LOCK_NAME).unlink()  # ours (O_EXCL succeeded); the directory is another run's
        return False
    return True


def claim_output_dir(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    option: str = "--out",
    recreate: Iterable[str] = (),
) -> Path:
    """Claim `path` for one run's outputs (atomic across processes).

    A new or empty directory is claimed; a non-empty one is refused unless `overwrite`, in which
    case files are replaced one by one as they are written and the sub-directories named in
    `recreate` (e.g. an experiment's own training runs) are removed first. Nothing else is deleted.
    """
    path = check_writable(path, option)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if _claim_empty_dir(path):
            return path
    except OSError as err:
        raise OutputError(f"{option} {path} is not writable: {err.strerror}") from None
    if not overwrite:
        raise OutputError(
            f"{option} {path} already exists and is not empty; pass --overwrite or choose another {option}"
        )
    for name in recreate:
        if (path / name).is_dir():
            shutil.rmtree(path / name)
    return path


def missing_dirs(path: str | os.PathLike) -> list[Path]:
    """The directories of `path` that do not exist yet (itself first, then its missing parents):
    what a command creates, so that a failure removes exactly that."""
    missing, probe = [], Path(path)
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    return missing


def remove_new_output(path: str | os.PathLike, created: list[Path], kept: Iterable[str] = ()) -> None:
    """Undo the outputs of a command that failed: the directories it `created` (`missing_dirs`,
    taken before) go, parents only while empty; in a directory that existed, only the entries not
    named in `kept` (those that were there before) and the claim marker go."""
    path = Path(path)
    if created:
        shutil.rmtree(path, ignore_errors=True)
        for parent in created[1:]:
            try:
                parent.rmdir()  # only if empty: another command may have started in it meanwhile
            except OSError:
                break
        return
    if not path.is_dir():
        return
    keep = set(kept) - {LOCK_NAME}
    for child in path.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def release_claim(path: str | os.PathLike) -> None:
    """Remove the claim marker once real files are in the directory."""
    (Path(path) / LOCK_NAME).unlink(missing_ok=True)


def refuse_replacing(
    out_dir: str | os.PathLike,
    names: Iterable[str],
    *,
    overwrite: bool,
    option: str = "--out",
    derived: bool = False,
    log: Callable[[str], None] | None = print,
) -> list[Path]:
    """Before writing the files `names` into `out_dir`: refuse when some exist, unless `overwrite`
    or the directory is `derived` (a run's own folder, e.g. RUN/plots, re-made from the run: then
    say which files are replaced). Returns the existing files that will be replaced."""
    out_dir = Path(out_dir)
    existing = [out_dir / name for name in names if (out_dir / name).exists()]
    if not existing:
        return []
    shown = ", ".join(p.name for p in existing[:4]) + (
        f" and {len(existing) - 4} more" if len(existing) > 4 else ""
    )
    if not (overwrite or derived):
        raise OutputError(
            f"{option} {out_dir} already holds {shown}; pass --overwrite to replace them or choose another {option}"
        )
    if log is not None:
        why = "--overwrite" if overwrite else "re-made from the run"
        log(f"replacing {shown} in {out_dir} ({why})")
    return existing


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    """A matplotlib Figure without pyplot's global state (Agg canvas when saved) and its axes grid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(
    fig,
    out_dir: str | os.PathLike,
    name: str,
    data: Any = None,
    *,
    formats: tuple[str, ...] = ("png", "pdf"),
    log: Callable[[str], None] | None = print,
) -> list[Path]:
    """Save `fig` as NAME.png and NAME.pdf (and `data`, if given, as NAME.json) into `out_dir`,
    atomically, and print each path."""
    out_dir = Path(out_dir)
    paths = []
    for ext in formats:
        paths.append(
            atomic_write(out_dir / f"{name}.{ext}", lambda f, e=ext: fig.savefig(f, format=e, dpi=130))
        )
    if data is not None:
        paths.append(atomic_write_json(out_dir / f"{name}.json", data))
    if log is not None:
        for p in paths:
            log(f"wrote {p}")
    return paths
