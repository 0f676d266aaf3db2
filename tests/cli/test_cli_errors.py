"""Bad input to every `birth` command: exit status 2, one line on stderr naming the option, no
traceback, and nothing created or changed.

Each row of `ROWS` is `(argv, option)`: the command line (split on spaces; `{name}` is a file of the
`workspace` fixture) and a text the error line must contain (the option, or the bad value when there
is no option). Grow the table with every new option.

Every row is its own process, started once in the module fixture `results`, in its own empty
working directory, which must still be empty afterwards. A fresh interpreter per row costs 1.2 s of
CPU (torch's import; 2.6 s for the experiment commands, whose registry imports transformer_lens),
about 160 s for the table on 2 cores. So the rows run as children forked from one process that has
imported torch, transformer_lens, datasets and tyro, none of birth's own modules: each child
imports `birth.cli` afresh and runs `main(argv)` like the console script, its stdout and stderr
redirected to files, two at a time. `test_forked_rows_match_the_real_command` runs a few rows
through the real `birth` executable and checks they give the same exit status and stderr.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
SHIPPED = REPO / "tasks" / "data" / "shakespeare_stats.json"
BIRTH = [sys.executable, "-m", "birth.cli"]
NEVER = ("Traceback", "weights_only")  # no traceback; never torch's advice to unpickle code

ROWS: list[tuple[str, str]] = [
    # -- top level
    ("nope", "unknown command"),
    # -- train: int, float, choice, path, bool, seed, nan/inf, negative, zero, wrong type, unknown
    ("train --d-model abc", "--d-model"),
    ("train --d-model 2.5", "--d-model"),
    ("train --d-model 0", "--d-model"),
    ("train --steps -1", "--steps"),
    ("train --batch-size 0", "--batch-size"),
    ("train --lr nan", "--lr"),
    ("train --lr inf", "--lr"),
    ("train --lr -0.1", "--lr"),
    ("train --lr fast", "--lr"),
    ("train --weight-decay nan", "--weight-decay"),
    ("train --weight-decay inf", "--weight-decay"),
    ("train --momentum 1.5", "--momentum"),
    ("train --betas 0.9", "--betas"),
    ("train --optimizer lion", "--optimizer"),
    ("train --loss-on some", "--loss-on"),
    ("train --trigger-mode sometimes", "--trigger-mode"),
    ("train --wandb maybe", "--wandb"),
    ("train --preset nope", "--preset"),
    ("train --fast-path maybe", "--fast-path"),
    ("train --n-triggers 0", "--n-triggers"),
    ("train --seed -1", "--seed"),
    ("train --seed 1e20", "--seed"),
    ("train --seed 99999999999999999999", "--seed"),
    ("train --threads 0", "--threads"),
    ("train --threads -1", "--threads"),
    ("train --device bogus", "--device"),
    ("train --bogus", "--bogus"),
    ("train --out {file}", "--out"),
    ("train --out /dev/null", "--out"),
    ("train --out /proc/birth-test", "--out"),
    ("train --out {run}", "--resume"),  # a run directory: continue it with --resume instead
    ("train --config {missing}", "--config"),
    ("train --config {bad_yaml}", "--config"),
    ("train --config {lr_fast_yaml}", "lr"),
    ("train --resume {missing}", "no config.json"),
    ("train --resume {run} --lr 0.5 --d-model 64", "--lr, --d-model"),
    ("train --resume {run} --preset paper", "--preset"),
    ("train --resume {run} --config {lr_fast_yaml}", "--config"),
    ("train --resume {run} --out new", "--out"),
    (
        "train --resume {corrupt_run}",
        "step_000008.pt is corrupted; the last intact checkpoint is step_000004.pt",
    ),
    # an edited config.json: wrong types are refused naming the field
    ("train --resume {edited_lr_fast}", "lr"),
    ("train --resume {edited_lr_null}", "lr"),
    ("train --resume {edited_steps_str}", "steps"),
    ("train --resume {edited_d_model_float}", "d_model"),
    # -- inspect
    ("inspect", "CHECKPOINT"),
    ("inspect {missing}", "not found"),
    ("inspect {garbage_pt}", "corrupted"),
    ("inspect {evil_pt}", "posix.system"),
    ("inspect {garbage_pt} --batch-size 0", "--batch-size"),
    # options added with the full model, the schedule and the task studies
    ("train --n-heads 3 --d-model 64", "--n-heads"),
    ("train --mlp gelu", "--mlp"),
    ("train --normalization batch", "--normalization"),
    ("train --output-split half", "--output-split"),
    ("train --schedule W_K9:100", "--schedule"),
    ("train --init-at-target W_X1", "--init-at-target"),
    ("train --target-scale nan", "--target-scale"),
    ("inspect {garbage_pt} --batch-size abc", "--batch-size"),
    ("inspect {garbage_pt} --index -1", "--index"),
    ("inspect {garbage_pt} --positions 1", "--positions"),
    ("inspect {garbage_pt} --device bogus", "--device"),
    ("inspect {garbage_pt} --out {file}", "--out"),
    ("inspect {garbage_pt} --bogus", "--bogus"),
    # -- plot
    ("plot", "RUN_DIR"),
    ("plot {missing}", "metrics.jsonl"),
    ("plot {run} --threshold nan", "--threshold"),
    ("plot {run} --threshold inf", "--threshold"),
    ("plot {run} --threshold 0", "--threshold"),
    ("plot {run} --threshold abc", "--threshold"),
    ("plot {run} --name a/b", "--name"),
    ("plot {run} --out {file}", "--out"),
    ("plot {run} --out /proc/birth-test", "--out"),
    # -- prepare-data
    ("prepare-data", "--text"),
    ("prepare-data --text {missing}", "not found"),
    ("prepare-data --text {empty_txt}", "empty"),
    ("prepare-data --text {small_txt} --out stats.json", "--allow-new-vocab"),
    ("prepare-data --text {small_txt} --out {file_dir}", "--out"),
    ("prepare-data --text {reversed_txt} --out {shipped}", "--force-shipped"),
    ("prepare-data --text {small_txt} --allow-new-vocab --force-shipped", "--allow-new-vocab"),
    ("prepare-data --text {small_txt} --force-shipped --out stats.json", "--force-shipped"),
    # -- reproduce, scaling, capacity, dynamics, experiments
    ("reproduce", "NAME"),
    ("reproduce nope", "nope"),
    ("reproduce layers --seeds 0", "--seeds"),
    ("reproduce layers --bogus", "--bogus"),
    ("reproduce all --out x", "--out"),
    ("scaling d-and-T --device bogus", "--device"),
    ("scaling d-and-T --seed -1", "--seed"),
    ("scaling d-and-T --seed 1e20", "--seed"),
    ("scaling d-and-T --alpha nan", "--alpha"),
    ("scaling d-and-T --out /proc/birth-test", "--out"),
    ("scaling d-and-T --config {bad_yaml}", "--config"),
    ("capacity --eta 1.5", "--eta"),
    ("capacity --eta nan", "--eta"),
    ("capacity --beta nan", "--beta"),
    ("capacity --device bogus", "--device"),
    ("capacity --seed -1", "--seed"),
    ("capacity --memories bogus", "--memories"),
    ("capacity --out /dev/null", "--out"),
    ("scaling d-and-T --float32 maybe", "--float32"),
    ("scaling d-and-T --out {file}", "--out"),
    ("capacity --seed 1e20", "--seed"),
    ("capacity --trials 0", "--trials"),
    ("capacity --out /proc/birth-test", "--out"),
    ("reproduce layers --out {file}", "--out"),
    ("dynamics nope", "nope"),
    ("dynamics margins --lrs nan", "--lrs"),
    ("dynamics margins --dim 0", "--dim"),
    ("experiments --bogus", "--bogus"),
    # -- grid
    ("grid", "spec"),
    ("grid {missing}", "missing"),
    ("grid {bad_yaml}", "bad.yaml"),
    ("grid {grid_spec} --parallel 0", "--parallel"),
    ("grid {grid_spec} --cluster bogus", "--cluster"),
]


@dataclass(frozen=True)
class Outcome:
    argv: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float
    left_in_cwd: list[str]


def _write_run(run: Path, config: dict, checkpoints: dict[int, bytes] | None = None) -> None:
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config, indent=2))
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "eval/icl_acc": 0.1 * s, "probes/W_OV2": 0.2}) + "\n" for s in (0, 2))
    )
    for step, data in (checkpoints or {}).items():
        (run / "checkpoints").mkdir(exist_ok=True)
        (run / "checkpoints" / f"step_{step:06d}.pt").write_bytes(data)


def _checkpoint_bytes(config: dict, step: int) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"format_version": 1, "config": config, "step": step, "model": {}, "optimizer": {}}, buffer)
    return buffer.getvalue()


def _evil_bytes() -> bytes:
    import torch

    class Evil:  # unpickling this would run a shell command
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))

    buffer = io.BytesIO()
    torch.save({"model": Evil()}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    from training.config import TrainConfig

    root = tmp_path_factory.mktemp("inputs")
    config = TrainConfig().to_dict()
    names = (
        "file",
        "missing",
        "garbage_pt",
        "evil_pt",
        "empty_txt",
        "small_txt",
        "file_dir",
        "run",
        "corrupt_run",
    )
    paths = {name: root / name for name in names}
    paths["file"].write_text("a file, not a directory\n")
    paths["bad_yaml"] = root / "bad.yaml"
    paths["bad_yaml"].write_text("optim: [1,\n")
    paths["lr_fast_yaml"] = root / "lr_fast.yaml"
    paths["lr_fast_yaml"].write_text("optim:\n  lr: fast\n")
    paths["garbage_pt"].write_bytes(b"PK\x03\x04 not a zip archive")
    paths["evil_pt"].write_bytes(_evil_bytes())
    paths["empty_txt"].write_text("")
    paths["small_txt"].write_text("to be or not to be\n")
    paths["file_dir"].mkdir()
    _write_run(paths["run"], config)
    intact = _checkpoint_bytes(config, 4)
    _write_run(paths["corrupt_run"], config, {4: intact, 8: _checkpoint_bytes(config, 8)[:200]})
    for name, section, field, value in (
        ("edited_lr_fast", "optim", "lr", "fast"),
        ("edited_lr_null", "optim", "lr", None),
        ("edited_steps_str", "optim", "steps", "40"),
        ("edited_d_model_float", "model", "d_model", 32.0),
    ):
        edited = json.loads(json.dumps(config))
        edited[section][field] = value
        paths[name] = root / name
        _write_run(paths[name], edited)
    if CORPUS.is_file():
        paths["reversed_txt"] = root / "reversed.txt"
        paths["reversed_txt"].write_text(CORPUS.read_text()[::-1])
    paths["grid_spec"] = REPO / "scripts" / "grids" / "optimizer_grid.yaml"
    paths["shipped"] = SHIPPED
    return paths


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file under `roots` with its size, mtime and inode (a rewrite changes them), and every
    directory (whose mtime a writability probe may touch)."""
    found = {}
    for root in roots:
        for p in [root] if root.is_file() else [root, *root.rglob("*")]:
            st = p.stat()
            found[str(p)] = ("dir",) if p.is_dir() else (st.st_size, st.st_mtime_ns, st.st_ino)
    return found


# Runs in its own interpreter: reads [{"argv", "cwd"}, ...] as JSON on stdin, forks one child per
# row (two at a time), writes [{"code", "stdout", "stderr", "seconds"}, ...] as JSON on stdout.
FORK_SERVER = r"""
import atexit, json, os, signal, sys, time, traceback
import torch, transformer_lens, datasets, tyro, yaml, matplotlib.figure  # noqa: F401 - shared by the children

rows = json.load(sys.stdin)
results, running, todo = [None] * len(rows), {}, list(range(len(rows)))
limit = float(os.environ["BIRTH_ROW_TIMEOUT"])

def child(row):
    os.chdir(row["cwd"])
    for fd, name in ((1, "stdout"), (2, "stderr")):
        f = os.open(os.path.join(row["cwd"], os.pardir, os.path.basename(row["cwd"]) + "." + name),
                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = ["birth", *row["argv"]]
    try:
        from birth.cli import main
        code = main(row["argv"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)

while todo or running:
    while todo and len(running) < 2:
        i = todo.pop(0)
        pid = os.fork()
        if pid == 0:
            child(rows[i])
        running[pid] = (i, time.perf_counter())
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid == 0:
        for pid, (i, started) in list(running.items()):
            if time.perf_counter() - started > limit:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
        continue
    i, started = running.pop(pid)
    base = os.path.join(rows[i]["cwd"], os.pardir, os.path.basename(rows[i]["cwd"]))
    out, err = (open(base + "." + name, errors="replace").read() for name in ("stdout", "stderr"))
    if os.WIFSIGNALED(status):
        err += f"killed by signal {os.WTERMSIG(status)} (after {limit:.0f} s: it ran instead of refusing?)"
    results[i] = {"code": os.waitstatus_to_exitcode(status), "stdout": out, "stderr": err,
                  "seconds": time.perf_counter() - started}
json.dump(results, sys.stdout)
"""


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "WANDB_MODE": "disabled",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
        "HF_DATASETS_CACHE": str(root / "hf" / "datasets"),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "BIRTH_ROW_TIMEOUT": "120",
    }


def _argv(line: str, workspace: dict[str, Path]) -> list[str]:
    return [token.format(**{k: str(v) for k, v in workspace.items()}) for token in line.split()]


@pytest.fixture(scope="module")
def results(workspace, tmp_path_factory) -> dict[str, Outcome]:
    """Every row run once (forked children, two at a time); `__changed__`: the input files that
    differ between before and after."""
    root = tmp_path_factory.mktemp("cwd")
    lines = [line for line, _ in ROWS if "{reversed_txt}" not in line or "reversed_txt" in workspace]
    rows = [
        {"argv": _argv(line, workspace), "cwd": str(root / f"row{i:03d}")} for i, line in enumerate(lines)
    ]
    for row in rows:
        Path(row["cwd"]).mkdir()
    inputs = [workspace["run"].parent, SHIPPED]
    before = _snapshot(*inputs)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", FORK_SERVER],
        input=json.dumps(rows),
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes: dict = {}
    for line, row, result in zip(lines, rows, json.loads(proc.stdout)):
        cwd = Path(row["cwd"])
        left = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
        outcomes[line] = Outcome(
            row["argv"], result["code"], result["stdout"], result["stderr"], result["seconds"], left
        )
    slowest = max(outcomes.values(), key=lambda o: o.seconds)
    print(
        f"\n{len(outcomes)} rows in {time.perf_counter() - started:.1f} s; "
        f"slowest {slowest.seconds:.2f} s: {' '.join(slowest.argv)}"
    )
    outcomes["__changed__"] = sorted(set(before.items()) ^ set(_snapshot(*inputs).items()))
    return outcomes


@pytest.mark.parametrize("line, option", ROWS, ids=[line for line, _ in ROWS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(results, line, option):
    if line not in results:
        pytest.skip(f"tiny Shakespeare corpus not found at {CORPUS}")
    outcome = results[line]
    lines = outcome.stderr.strip().splitlines()
    assert outcome.code == 2, (outcome.code, outcome.stderr[-2000:])
    assert len(lines) == 1, outcome.stderr
    assert option in lines[0], lines[0]
    for text in NEVER:
        assert text not in outcome.stderr and text not in outcome.stdout, outcome.stderr
    assert outcome.left_in_cwd == [], outcome.left_in_cwd


def test_no_input_file_was_changed(results):
    """The inputs (runs, checkpoints, configs, the package's shipped statistics) are as they were."""
    assert results["__changed__"] == []


# rows run again through the real console script (a fresh interpreter each): same status and line
REAL_COMMAND_ROWS = ["train --lr nan", "inspect {evil_pt}", "capacity --eta 1.5"]


def test_forked_rows_match_the_real_command(results, workspace, tmp_path):
    script = Path(sys.executable).parent / "birth"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "birth.cli"]
    env = _env(tmp_path)

    def real(line: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, *_argv(line, workspace)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(REAL_COMMAND_ROWS, pool.map(real, REAL_COMMAND_ROWS)))
    for line, proc in done.items():
        assert (proc.returncode, proc.stderr) == (results[line].code, results[line].stderr), line
    assert list(tmp_path.iterdir()) == [tmp_path / "hf"] or not list(tmp_path.iterdir())
