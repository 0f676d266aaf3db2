"""Bad input to every `birth` command: exit status 2, one line on stderr naming the option, no
traceback, and nothing created or changed.

Each row of `ROWS` is `(argv, option)`: the command line (split on spaces; `{name}` is a file of the
`workspace` fixture) and a text the error line must contain (the option, or the bad value when there
is no option). Grow the table with every new option.

Every row is its own process, started once in the module fixture `results`, in its own empty
working directory, which must still be empty afterwards. A fresh interpreter per row would pay
torch's import (and transformer_lens' for the experiment commands, whose registry imports it) once
per row, too long for the table on 2 cores. So the rows run as children forked from one process that has
imported torch, transformer_lens, datasets and tyro, none of birth's own modules: each child
imports `birth.cli` afresh and runs `main(argv)` like the console script, its stdout and stderr
redirected to files, two at a time. `test_forked_rows_match_the_real_command` runs a few rows
through the real `birth` executable and checks they give the same exit status and stderr.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

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
    ("train --lr-decay sideways", "--lr-decay"),
    ("train --task markov-icl --lr-decay exp", "--lr-decay"),
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
    ("train --compile maybe", "--compile"),
    ("train --compile 1", "--compile"),
    ("train --n-triggers 0", "--n-triggers"),
    ("train --seed -1", "--seed"),
    ("train --seed 1e20", "--seed"),
    ("train --seed 99999999999999999999", "--seed"),
    ("train --threads 0", "--threads"),
    ("train --threads -1", "--threads"),
    ("train --threads 1.5", "--threads"),
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
    ("train --seeds ,", "--seeds"),  # empty
    ("train --seeds -1", "--seeds"),
    ("train --seeds 0,3,0", "--seeds"),  # a duplicate
    ("train --seeds 0-100000000", "--seeds"),  # more runs than one process takes
    ("train --seeds 0-4000 --d-model 8192 --batch-size 8192", "--seeds"),  # more than the memory
    ("train --seeds 0-1 --seed 3", "--seeds"),
    ("train --resume {corrupt_run}", "the last intact checkpoint is step_000004.pt"),
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
    # markov-icl and --clamp
    ("train --task markov-icl --n-states 1", "--n-states"),
    ("train --task markov-icl --alpha 0", "--alpha"),
    ("train --task markov-icl --alpha nan", "--alpha"),
    ("train --task markov-icl --prior flat", "--prior"),
    ("train --clamp nope", "--clamp"),
    ("train --clamp prev_token", "--clamp"),
    ("train --clamp induction --no-fast-path --trigger-mode random", "--clamp"),
    ("train --clamp W_O2 --variant full --no-fast-path", "--clamp"),
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
    # -- trained memories and factual recall
    ("scaling capacity-vs-parameters --seeds 1", "--seeds"),
    ("scaling capacity-vs-parameters --rel-tol 2", "--rel-tol"),
    ("scaling capacity-vs-parameters --embeddings bogus", "--embeddings"),
    ("scaling capacity-vs-parameters --linear-dims 1", "--linear-dims"),
    ("scaling capacity-vs-parameters --mlp-widths 0", "--mlp-widths"),
    ("reproduce recall-tradeoff --dims 0", "--dims"),
    ("reproduce recall-tradeoff --dims 6 --n-heads 4", "--n-heads"),
    ("reproduce recall-tradeoff --mlp-multiples -1", "--mlp-multiples"),
    ("reproduce recall-tradeoff --layout bogus", "--layout"),
    ("reproduce recall-tradeoff --head-widths 0", "--head-widths"),
    ("reproduce recall-tradeoff --head-widths 2 2", "--head-widths"),
    ("reproduce recall-tradeoff --dims 6 --head-counts 4", "--head-counts"),
    ("train --variant full --head-width 0", "--head-width"),
    ("reproduce recall-dynamics --tolerance 0", "--tolerance"),
    ("reproduce recall-dynamics --answers-per-relation 1", "--answers-per-relation"),
    ("reproduce recall-dynamics --d-model 30 --n-heads 4", "--n-heads"),
    ("train --task factual-recall --n-subjects 0", "--n-subjects"),
    ("train --task factual-recall --layout bogus", "--layout"),
    ("train --task factual-recall --n-noise 0", "--n-noise"),
    # -- grid
    ("grid", "spec"),
    ("grid {missing}", "missing"),
    ("grid {bad_yaml}", "bad.yaml"),
    ("grid {grid_spec} --parallel 0", "--parallel"),
    ("grid {grid_spec} --cluster bogus", "--cluster"),
    # -- issue 23: every file handed in is named with the reason in words
    ("train --config {binary_yaml}", "--config {binary_yaml} is not UTF-8 text (byte 0x89 at offset 0)"),
    ("train --config {latin1_yaml}", "is not UTF-8 text (byte 0xe9 at offset 23)"),
    ("train --config {file_dir}", "--config {file_dir}: Is a directory"),
    ("train --config {scalar_yaml}", "--config"),
    ("train --resume {binary_config_run}", "config.json is not UTF-8 text (byte 0xff at offset 1)"),
    ("train --resume {file}", "is not a run directory"),
    ("scaling d-and-T --config {binary_yaml}", "--config {binary_yaml} is not UTF-8 text"),
    ("capacity --config {latin1_yaml}", "--config {latin1_yaml} is not UTF-8 text"),
    ("grid {binary_yaml}", "{binary_yaml} is not UTF-8 text (byte 0x89 at offset 0)"),
    ("plot {run} {binary_metrics_run}", "binary_metrics_run/metrics.jsonl is not UTF-8 text (byte 0x89"),
    ("prepare-data --text {file_dir}", "is a directory"),
    ("prepare-data --text {latin1_yaml} --allow-new-vocab --out stats.json", "is not UTF-8 text"),
    ("prepare-data --text {one_char_txt} --allow-new-vocab --out stats.json", "no bigram"),
    ("prepare-data --text {small_txt} --allow-new-vocab --out {file}", "--overwrite"),
    # a checkpoint holding pickled code: the unpickler's reason, as `inspect` gives it
    ("train --resume {evil_run}", "posix.system"),
    # -- issue 23: no silent overwrite
    ("plot {run} --out {plotted}", "--overwrite"),
    # -- issue 23: a size that cannot be allocated, in training and in experiments: nothing left
    ("train --d-model 4294967296 --wandb off --no-progress", "--d-model 4294967296"),
    ("scaling d-and-T --d-curves 10000000000 --trials 2 --no-progress", "--d-curves 10000000000"),
    # -- issue 23: a grid of 10^6 points is refused at once (counted, not expanded)
    ("grid {huge_grid}", "the grid has 1,000,000 points, more than --max-points 10,000"),
    ("grid {grid_spec} --max-points 0", "--max-points"),
    # -- dashboard (every row fails before anything is built or sent)
    ("dashboard --dry-run", "--entity"),
    ("dashboard --entity bad/name --dry-run", "--entity"),
    ("dashboard --entity -me --dry-run", "--entity"),
    ("dashboard --entity me --project a:b --dry-run", "--project"),
    ("dashboard --entity me --name " + "x" * 129 + " --dry-run", "--name"),
    ("dashboard --entity me --dry-run --bogus", "--bogus"),
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
    for name, data in (
        ("binary_yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
        ("latin1_yaml", "optim:\n  lr: 0.1  # caf\u00e9\n".encode("latin-1")),  # é: byte 23
        ("scalar_yaml", b"42\n"),
        ("one_char_txt", b"a"),
    ):
        paths[name] = root / f"{name.removesuffix('_yaml').removesuffix('_txt')}.{name.rsplit('_')[-1]}"
        paths[name].write_bytes(data)
    paths["binary_metrics_run"] = root / "binary_metrics_run"
    _write_run(paths["binary_metrics_run"], config)
    (paths["binary_metrics_run"] / "metrics.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    paths["binary_config_run"] = root / "binary_config_run"
    _write_run(paths["binary_config_run"], config)
    (paths["binary_config_run"] / "config.json").write_bytes(b"{\xff}")
    paths["evil_run"] = root / "evil_run"
    _write_run(paths["evil_run"], config, {4: intact, 8: _evil_bytes()})
    paths["huge_grid"] = root / "huge_grid.yaml"
    huge = {
        "experiment": "toy",
        "base": "small",
        "grid": {"seed": list(range(1000)), "n": list(range(2, 1002))},
    }
    paths["huge_grid"].write_text(json.dumps(huge))
    paths["plotted"] = root / "plotted"
    paths["plotted"].mkdir()
    (paths["plotted"] / "learning_order.json").write_text("{}")
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


def _format(text: str, workspace: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in workspace.items()})


def _argv(line: str, workspace: dict[str, Path]) -> list[str]:
    return [_format(token, workspace) for token in line.split()]


def _run_forked(rows: list[dict], root: Path) -> list[dict]:
    """Run `rows` ({"argv", "cwd"}) as children forked from one pre-imported process, two at a time."""
    proc = subprocess.run(
        [sys.executable, "-c", FORK_SERVER],
        input=json.dumps(rows),
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


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
    outcomes: dict = {}
    for line, row, result in zip(lines, rows, _run_forked(rows, root)):
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
def test_bad_input_is_one_line_exit_2_and_writes_nothing(results, workspace, line, option):
    if line not in results:
        pytest.skip(f"tiny Shakespeare corpus not found at {CORPUS}")
    outcome = results[line]
    lines = outcome.stderr.strip().splitlines()
    assert outcome.code == 2, (outcome.code, outcome.stderr[-2000:])
    assert len(lines) == 1, outcome.stderr
    assert _format(option, workspace) in lines[0], lines[0]
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


# -- property-based cases: generated config files and grid specs ------------------------------------
#
# hypothesis writes config files and grid specs (values of wrong types, unknown keys, bytes that are
# not UTF-8, documents that are not a mapping) around a small valid one; each is fed to `train`,
# two experiments and `grid`, which must end in exit 0, or in one line on stderr with exit 2, no
# traceback and nothing written. The examples are drawn first (a fixed seed: CI sees the same ones)
# and then run like the table, forked from one pre-imported process.

PROPERTY_SEED = 23
PROPERTY_EXAMPLES = 8  # per command

_TEXT = st.text(alphabet="abcxyz019 .-_", max_size=8)
WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    _TEXT,
    st.integers(-3, 0),
    st.floats(-2.0, 2.0),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.lists(st.one_of(_TEXT, st.integers(-2, 2)), max_size=3),
    st.dictionaries(_TEXT, st.integers(0, 3), max_size=2),
)

TRAIN_BASE = {
    "task": {"seq_len": 16},
    "model": {"d_model": 16},
    "optim": {"steps": 2, "batch_size": 4},
    "run": {"eval_every": 1, "checkpoint_every": 2, "eval_batch_size": 8},
}
MARGINS_BASE = {"n_tokens": 4, "n_outputs": 2, "dim": 4, "lrs": [1.0], "steps": 20, "records": 10}
CAPACITY_BASE = {
    "memories": ["linear"],
    "trials": 2,
    "queries": 8,
    "polynomial_dims": [8, 16],
    "polynomial_max_size": 32,
    "exponential_dims": [8],
    "exponential_max_size": 32,
}
GRID_BASE = {
    "experiment": "margins",
    "base": "small",
    "fixed": {"steps": 20, "records": 10},
    "grid": {"seed": [0]},
    "out": "grid",
    "executor": {"cluster": "debug"},
    "wandb": {"mode": "off"},
}
# command -> (argv with {file} the generated document, the valid document the cases start from);
# the size flags keep a generated document that is valid (an empty one: the defaults) a short run
# (a file's values are type-checked before the flags replace them)
PROPERTY_TARGETS = {
    "train": (
        ["train", "--config", "{file}", "--out", "run", "--wandb", "off", "--no-progress"]
        + ["--steps", "2", "--d-model", "16", "--seq-len", "16", "--batch-size", "4"]
        + ["--eval-batch-size", "8", "--eval-every", "1"],
        TRAIN_BASE,
    ),
    "margins": (
        ["dynamics", "margins", "--config", "{file}", "--out", "out", "--no-progress", "--steps", "20"],
        MARGINS_BASE,
    ),
    "capacity": (
        ["capacity", "--config", "{file}", "--out", "out", "--no-progress", "--trials", "2"],
        CAPACITY_BASE,
    ),
    "grid": (["grid", "{file}", "--max-points", "4"], GRID_BASE),
}


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths to every value of a nested mapping (a mapping's own path included)."""
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    return found


def _set(doc: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


@st.composite
def documents(draw, base: dict) -> bytes:
    """A YAML document around `base`: some values of wrong types, an unknown key, bytes that are
    not UTF-8, random bytes, or a document that is not a mapping."""
    doc = json.loads(json.dumps(base))  # a deep copy
    kind = draw(st.sampled_from(["wrong types", "unknown key", "not UTF-8", "random bytes", "not a mapping"]))
    if kind == "random bytes":
        return draw(st.binary(max_size=64))
    if kind == "not a mapping":
        return yaml.safe_dump(draw(st.one_of(WRONG_VALUES, st.lists(WRONG_VALUES, max_size=3)))).encode()
    if kind == "wrong types":
        leaves = [path for path in _paths(doc) if path]
        for path in draw(st.lists(st.sampled_from(leaves), min_size=1, max_size=3, unique=True)):
            _set(doc, path, draw(WRONG_VALUES))
    if kind == "unknown key":
        where = draw(st.sampled_from([path for path in _paths(doc) if isinstance(_get(doc, path), dict)]))
        mapping = _get(doc, where)
        mapping[draw(_TEXT.filter(lambda key: key not in mapping))] = draw(WRONG_VALUES)
    text = yaml.safe_dump(doc, sort_keys=False).encode()
    if kind == "not UTF-8":
        at = draw(st.integers(0, len(text)))
        return text[:at] + b"\xff" + draw(st.binary(max_size=8)) + text[at:]  # 0xff is never UTF-8
    return text


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _draw_examples(strategy: st.SearchStrategy, n: int) -> list[bytes]:
    """`n` examples of `strategy` (fewer if some repeat), the same ones on every machine."""
    found: list[bytes] = []

    @seed(PROPERTY_SEED)
    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(document: bytes) -> None:
        if document not in found:
            found.append(document)

    collect()
    return found


@pytest.fixture(scope="module")
def property_results(tmp_path_factory) -> list[tuple[str, bytes, Outcome]]:
    """Every generated document of every command, run (the base document of each first)."""
    root = tmp_path_factory.mktemp("property")
    cases = []
    for command, (argv, base) in PROPERTY_TARGETS.items():
        valid = yaml.safe_dump(base, sort_keys=False).encode()
        for document in [valid, *_draw_examples(documents(base), PROPERTY_EXAMPLES)]:
            cases.append((command, document, argv))
    rows = []
    for i, (command, document, argv) in enumerate(cases):
        path = root / "documents" / f"{i:03d}-{command}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(document)
        rows.append({"argv": [a.format(file=path) for a in argv], "cwd": str(root / f"case{i:03d}")})
        Path(rows[-1]["cwd"]).mkdir()
    outcomes = []
    for (command, document, _), row, result in zip(cases, rows, _run_forked(rows, root)):
        cwd = Path(row["cwd"])
        left = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
        outcomes.append(
            (
                command,
                document,
                Outcome(
                    row["argv"], result["code"], result["stdout"], result["stderr"], result["seconds"], left
                ),
            )
        )
    return outcomes


@pytest.mark.parametrize("command", list(PROPERTY_TARGETS))
def test_generated_configs_and_specs_run_or_are_refused_in_one_line(property_results, command):
    cases = [(document, outcome) for name, document, outcome in property_results if name == command]
    assert len(cases) > PROPERTY_EXAMPLES // 2  # the examples were drawn (few repeats)
    base, outcome = cases[0]
    assert outcome.code == 0, (base, outcome.stderr[-2000:])  # the document the cases start from runs
    refused = 0
    for document, outcome in cases[1:]:
        context = (document, outcome.code, outcome.stderr[-2000:])
        for text in NEVER:
            assert text not in outcome.stderr and text not in outcome.stdout, context
        assert outcome.code in (0, 2), context
        if outcome.code == 2:
            refused += 1
            assert len(outcome.stderr.strip().splitlines()) == 1, context
            assert outcome.left_in_cwd == [], context
    assert refused > 0  # the generated documents do reach the refusals
