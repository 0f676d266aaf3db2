"""Reliability of training runs: no dead-end run directory, atomic claims, memory errors
in one line, malicious checkpoints refused with the reason, the thread count recorded, corrupted
checkpoints named, finished runs resumed cleanly, checkpoints with the umask's mode."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from birth.base.io import OutputError
from birth.cli import main as cli_main
from training.checkpoint import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint
from training.config import TrainConfig
from training.logger import read_metrics
from training.trainer import OutOfMemory, prepare_run_dir, read_run_config, train

REPO = Path(__file__).resolve().parents[2]
# sizes no machine can hold, refused by the allocator at once (unless it overcommits blindly)
HUGE_D_MODEL = 2**32  # its 65 x 2^32 float32 embedding alone: 1.1 TB
HUGE_BATCH = 2**34  # 2^34 sequences of 16 tokens: 2.2 TB
blind_overcommit = pytest.mark.skipif(
    Path("/proc/sys/vm/overcommit_memory").is_file()
    and Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1",
    reason="vm.overcommit_memory = 1: a huge allocation would succeed and then exhaust memory",
)


def _quiet(*_args) -> None:
    pass


def _run(config, run_dir, **kwargs):
    return train(config, run_dir, progress=False, log=_quiet, **kwargs)


def _cli(*args: str) -> int:
    return cli_main(["train", *args, "--wandb", "off", "--no-progress"])


def _flags(config: TrainConfig) -> list[str]:
    """Command-line flags that give `config` from the quick preset (the tiny config's sizes)."""
    flags = []
    for section in config.to_dict().values():
        if not isinstance(section, dict):  # the task's name
            continue
        for key, value in section.items():
            if key in (
                "d_model",
                "seq_len",
                "batch_size",
                "eval_batch_size",
                "eval_every",
                "checkpoint_every",
                "steps",
                "lr",
            ):
                flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


# -- 1. no dead-end run directory -----------------------------------------------------------------


@blind_overcommit
def test_memory_error_at_model_build_is_one_line_and_leaves_no_directory(tmp_path, tiny_config):
    run_dir = tmp_path / "run"
    with pytest.raises(OutOfMemory) as info:
        _run(tiny_config.replace(d_model=HUGE_D_MODEL), run_dir)
    message = str(info.value)
    assert "\n" not in message and "building the model" in message and f"--d-model {HUGE_D_MODEL}" in message
    # the size torch asked for, parsed from its message
    assert re.search(r"torch asked for [\d.]+ [TP]B in one allocation", message), message
    assert "this machine has" in message
    assert not run_dir.exists()


@blind_overcommit
def test_memory_error_at_the_first_step_keeps_a_directory_that_existed(tmp_path, tiny_config, capsys):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()  # an empty directory the user made: emptied of the run's files, kept
    code = _cli("--out", str(run_dir), *_flags(tiny_config), "--batch-size", str(HUGE_BATCH))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "at the first step" in err[0] and f"--batch-size {HUGE_BATCH}" in err[0]
    assert re.search(r"torch asked for [\d.]+ [GT]B", err[0]), err[0]
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []


def test_ctrl_c_during_start_up_removes_the_new_directory(tmp_path, tiny_config, monkeypatch):
    build = TrainConfig.build_model

    def build_then_ctrl_c(self, *args, **kwargs):
        model = build(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # before the loop's handler: Python raises KeyboardInterrupt
        time.sleep(1)  # the signal arrives here
        return model

    monkeypatch.setattr(TrainConfig, "build_model", build_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # and the same directory can be used at once
    monkeypatch.setattr(TrainConfig, "build_model", build)
    assert _run(tiny_config.replace(steps=2), tmp_path / "run").status == "completed"


def test_sigkill_before_the_first_checkpoint_then_resume_restarts_from_step_0(tmp_path, tiny_config):
    # one checkpoint, at the end
    config = tiny_config.replace(steps=100, eval_every=10, checkpoint_every=1000)
    run_dir = tmp_path / "killed"
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "birth.cli",
            "train",
            "--out",
            str(run_dir),
            "--wandb",
            "off",
            "--no-progress",
            "--threads",
            "1",
            *_flags(config),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while len(read_metrics(run_dir / "metrics.jsonl")) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    proc.wait()
    assert (run_dir / "config.json").is_file() and list_checkpoints(run_dir) == []
    assert read_run_config(run_dir) == config

    # starting it afresh is refused (it is a run), resuming restarts it from step 0 with its config
    assert _cli("--out", str(run_dir), *_flags(config)) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed process ran
    try:
        resumed = _run(config, run_dir, resume=True)
        _run(config, tmp_path / "uninterrupted")
    finally:
        torch.set_num_threads(threads)
    assert resumed.status == "completed" and resumed.step == 100
    reference = read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl")
    assert read_metrics(run_dir / "metrics.jsonl") == reference


def test_resume_of_a_config_only_directory_through_the_command(tmp_path, tiny_config, capsys):
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, tiny_config.replace(steps=4))  # what a SIGKILL at start-up leaves
    assert _cli("--resume", str(run_dir)) == 0
    assert "restarting it from step 0" in capsys.readouterr().out
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 4


# -- 2. --resume refuses flags that would change the run ------------------------------------------


def test_resume_names_exactly_the_flags_that_would_change_the_run(tmp_path, tiny_config, capsys):
    run_dir = tmp_path / "run"
    _run(tiny_config, run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    same_lr = str(tiny_config.optim.lr)
    assert _cli("--resume", str(run_dir), "--lr", same_lr, "--d-model", "64", "--n-triggers", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("--d-model, --n-triggers (only --steps may extend it)"), err
    assert "--lr" not in err[0]  # given, but unchanged
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    # --steps may extend it
    assert _cli("--resume", str(run_dir), "--steps", "14") == 0
    assert read_run_config(run_dir).optim.steps == 14


# -- 4. atomic run-directory claims -----------------------------------------------------------------


def _claim_worker(root: str, tries: int, barrier, config: TrainConfig, wins) -> None:
    for i in range(tries):
        barrier.wait()
        try:
            prepare_run_dir(Path(root) / f"run{i:03d}", config)
        except OutputError:
            continue
        with wins.get_lock():
            wins[i] += 1


def test_two_processes_claiming_a_run_directory_exactly_one_wins(tmp_path, tiny_config):
    tries = 200
    ctx = multiprocessing.get_context("fork")  # the workers only touch files: no thread is forked busy
    barrier, wins = ctx.Barrier(2), ctx.Array("i", tries)
    workers = [
        ctx.Process(target=_claim_worker, args=(str(tmp_path), tries, barrier, tiny_config, wins))
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    assert list(wins) == [1] * tries
    for i in range(tries):  # the winner's config, no claim marker left behind
        assert sorted(p.name for p in (tmp_path / f"run{i:03d}").iterdir()) == ["config.json"]


# -- 7. a malicious checkpoint: the reason, never torch's advice ------------------------------------


def test_malicious_checkpoint_is_refused_with_the_unpickler_reason(tmp_path, monkeypatch):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    buffer = io.BytesIO()
    torch.save({"model": Evil()}, buffer)
    bad = tmp_path / "step_000001.pt"
    bad.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    message = str(info.value)
    assert "posix.system" in message and "\n" not in message
    for advice in ("weights_only", "Re-running", "trusted source", "add_safe_globals"):
        assert advice not in message
    assert not (tmp_path / "pwned").exists()


# -- 9. the thread count is recorded, and a resume with another one warns ---------------------------


def test_environment_is_recorded_and_a_resume_with_other_threads_warns(tmp_path, tiny_config, capsys):
    before = torch.get_num_threads()
    run_dir = tmp_path / "run"
    try:
        torch.set_num_threads(1)
        _run(tiny_config, run_dir)
        env = json.loads((run_dir / "environment.json").read_text())
        assert env["torch_threads"] == 1 and env["device"] == "cpu" and env["torch"] == torch.__version__
        _run(tiny_config.replace(steps=14), run_dir, resume=True)  # same threads: no warning
        assert "warning" not in capsys.readouterr().err
        torch.set_num_threads(2)
        _run(tiny_config.replace(steps=16), run_dir, resume=True)
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert "torch_threads 2 (it started with 1)" in err and "may differ in the last digits" in err
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["torch_threads"] == 1
    assert [(r["step"], r["torch_threads"]) for r in env["resumes"]] == [(12, 1), (14, 2)]


# -- 10. finished runs, corrupted checkpoints, file modes -------------------------------------------


def _strict_json(path: Path):
    def refuse(name: str):
        raise AssertionError(f"{path} holds {name}, which JSON does not have")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_resuming_a_finished_run_writes_null_seconds_per_step(tmp_path, tiny_config, capsys):
    _run(tiny_config, tmp_path / "run")
    assert _strict_json(tmp_path / "run" / "summary.json")["seconds_per_step"] > 0
    assert _cli("--resume", str(tmp_path / "run")) == 0
    assert "no step trained" in capsys.readouterr().out
    summary = _strict_json(tmp_path / "run" / "summary.json")
    assert summary["seconds_per_step"] is None and summary["step"] == 12 and summary["status"] == "completed"


def test_truncated_latest_checkpoint_names_the_last_intact_one(tmp_path, tiny_config):
    _run(tiny_config.replace(steps=16), tmp_path / "full")
    _run(tiny_config, tmp_path / "cut")  # checkpoints 4, 8, 12
    last = checkpoint_path(tmp_path / "cut", 12)
    last.write_bytes(last.read_bytes()[:1000])  # a write cut short (a full disk, a crash)
    before = (tmp_path / "cut" / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError) as info:
        _run(tiny_config.replace(steps=16), tmp_path / "cut", resume=True)
    with pytest.raises(CheckpointError) as why:  # the reason, as `birth inspect` gives it
        load_checkpoint(last)
    assert str(why.value).startswith(f"checkpoint {last} is corrupted or not a checkpoint: ")
    assert str(info.value) == (
        f"{why.value}; the last intact checkpoint is step_000008.pt (remove the corrupted file to resume from it)"
    )
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == before  # nothing touched
    last.unlink()
    assert _run(tiny_config.replace(steps=16), tmp_path / "cut", resume=True).step == 16
    ours, theirs = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("cut", "full"))
    # from step 8 on the rows are those of an uninterrupted run (the probe-only metrics of the first
    # row after a resume aside: gradients are not checkpointed)
    keys = ("step", "eval/loss", "eval/icl_acc", "train/loss")
    assert [[r.get(k) for k in keys] for r in ours] == [[r.get(k) for k in keys] for r in theirs]


def test_no_intact_checkpoint_says_so(tmp_path, tiny_config):
    _run(tiny_config.replace(steps=4), tmp_path / "run")
    only = checkpoint_path(tmp_path / "run", 4)
    only.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no earlier checkpoint is intact"):
        _run(tiny_config.replace(steps=8), tmp_path / "run", resume=True)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_checkpoints_get_the_umask_mode(tmp_path, tiny_config, umask, mode):
    previous = os.umask(umask)
    try:
        _run(tiny_config.replace(steps=4), tmp_path / "run")
    finally:
        os.umask(previous)
    for path in [
        checkpoint_path(tmp_path / "run", 4),
        tmp_path / "run" / "config.json",
        tmp_path / "run" / "summary.json",
    ]:
        assert path.stat().st_mode & 0o777 == mode, path


# -- nothing lost on resume, the reason of a refused checkpoint, memory in experiments --------------

JUNK = [b"{cut by a crash\n", b"\xff\xfe not text\n", b"[1, 2]\n"]


def test_resume_keeps_every_intact_row_and_moves_unreadable_lines_aside(tmp_path, tiny_config, capsys):
    config = tiny_config.replace(steps=20, eval_every=10, checkpoint_every=10)
    run_dir, metrics = tmp_path / "run", tmp_path / "run" / "metrics.jsonl"
    _run(config, run_dir)
    first, *rest = metrics.read_bytes().splitlines(keepends=True)
    before = read_metrics(metrics)
    assert [r["step"] for r in before] == [0, 10, 20]
    metrics.write_bytes(first + b"".join(JUNK) + b"".join(rest))  # three junk lines after step 0
    assert _cli("--resume", str(run_dir), "--steps", "30") == 0
    err = capsys.readouterr().err
    rows = read_metrics(metrics)
    assert [r["step"] for r in rows] == [0, 10, 20, 30]  # step 10 kept (it was dropped)
    assert rows[:2] == before[:2]
    bad = metrics.with_name("metrics.jsonl.bad")
    assert bad.read_bytes() == b"".join(JUNK)
    assert f"{metrics}: 3 unreadable line(s) (line 2, 3, 4" in err and str(bad) in err
    # the resumed rows are those of an uninterrupted run
    _run(config.replace(steps=30), tmp_path / "uninterrupted")
    keys = ("step", "eval/loss", "eval/icl_acc", "train/loss")
    theirs = read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl")
    assert [[r.get(k) for k in keys] for r in rows] == [[r.get(k) for k in keys] for r in theirs]


def test_readers_name_every_skipped_line_with_its_file_and_number(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"step": s, "eval/icl_acc": 0.5}).encode() + b"\n" for s in (0, 1, 2)]
    path.write_bytes(good[0] + JUNK[0] + good[1] + JUNK[1] + good[2] + b'{"step": "x"}\n' + b'{"step": 3')
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": line skipped")[0] for line in err] == [f"warning: {path}:{n}" for n in (2, 4, 6, 7)]
    assert "not UTF-8 text (byte 0xff at offset" in err[1] and "not JSON" in err[0]


def test_resume_from_a_checkpoint_holding_code_gives_the_unpicklers_reason(tmp_path, tiny_config):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    _run(tiny_config, tmp_path / "run")  # checkpoints 4, 8, 12
    buffer = io.BytesIO()
    torch.save({"model": Evil()}, buffer)
    checkpoint_path(tmp_path / "run", 12).write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError) as info:
        _run(tiny_config.replace(steps=16), tmp_path / "run", resume=True)
    message = str(info.value)
    assert "posix.system" in message and "the last intact checkpoint is step_000008.pt" in message
    assert "\n" not in message and "weights_only" not in message
    assert not (tmp_path / "pwned").exists()


def _experiment(run, name: str = "fake"):
    from dataclasses import dataclass

    from birth.experiments.registry import Experiment

    @dataclass(frozen=True)
    class FakeConfig:
        d_curves: tuple[int, ...] = (10, 10_000_000_000)
        trials: int = 2
        seed: int = 2**40  # a seed is not a size

    return Experiment(name, "scaling", "a fake", FakeConfig, run, lambda result, out: []), FakeConfig()


def test_an_experiment_out_of_memory_is_one_line_naming_the_largest_size_and_leaves_nothing(tmp_path):
    from birth.base.memory_errors import OutOfMemory as BaseOutOfMemory
    from birth.experiments.registry import run_experiment

    def run(config, out, **_):
        (out / "runs").mkdir()
        (out / "partial.json").write_text("{}")
        raise RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 80400000000000 bytes"
        )

    exp, config = _experiment(run)
    with pytest.raises(BaseOutOfMemory) as info:
        run_experiment(exp, config, tmp_path / "results" / "fake", log=_quiet)
    message = str(info.value)
    assert message.startswith(
        "out of memory running fake with --d-curves 10000000000: torch asked for 80.4 TB"
    )
    assert "\n" not in message and "--seed" not in message
    assert list(tmp_path.iterdir()) == []  # results/ and results/fake removed, claim marker with them
    # an existing directory the user made is emptied of what the run wrote, and kept
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(BaseOutOfMemory):
        run_experiment(exp, config, mine, log=_quiet)
    assert mine.is_dir() and list(mine.iterdir()) == []
    # with --overwrite in a directory holding files: only what this run created goes
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(BaseOutOfMemory):
        run_experiment(exp, config, mine, overwrite=True, log=_quiet)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_ctrl_c_in_an_experiment_leaves_no_claim_behind(tmp_path):
    from birth.experiments.registry import run_experiment

    def run(config, out, **_):
        (out / "runs").mkdir()
        raise KeyboardInterrupt

    exp, config = _experiment(run)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, config, tmp_path / "out", log=_quiet)
    assert not (tmp_path / "out").exists()


@blind_overcommit
def test_scaling_experiment_out_of_memory_through_the_command(tmp_path, capsys):
    out = tmp_path / "results" / "d-and-T"
    code = cli_main(["scaling", "d-and-T", "--d-curves", "10000000000", "--trials", "2", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "out of memory running d-and-T with --d-curves 10000000000: torch asked for" in err[0]
    assert list(tmp_path.iterdir()) == []


# -- issue 23: grids: Ctrl-C, failures in one line, a size limit, memory -----------------------------


def _spec(path: Path, **spec) -> Path:
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def test_ctrl_c_on_a_local_grid_is_one_line_and_exit_130(tmp_path, tiny_config):
    out = tmp_path / "grid"
    spec = _spec(
        tmp_path / "spec.yaml",
        experiment="train",
        fixed={"d_model": 16, "seq_len": 16, "batch_size": 4, "eval_every": 5, "steps": 100_000},
        grid={"seed": [0]},
        out=str(out),
        executor={"cluster": "local", "parallel": 1, "threads": 1},
    )
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "birth.cli", "grid", str(spec)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the signal goes where a terminal's Ctrl-C goes
    )
    deadline = time.monotonic() + 180
    while len(read_metrics(out / "seed=0" / "metrics.jsonl", warn=None)) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the grid, its job's controller and the job
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert stderr == "birth grid: interrupted\n", stderr
    assert "interrupted: 1 running points cancelled" in stdout


def test_a_failing_point_of_a_debug_grid_is_one_line_with_its_log(tmp_path, capsys):
    spec = _spec(
        tmp_path / "spec.yaml",
        experiment="toy",
        base="small",
        grid={"fail": [True]},
        out=str(tmp_path / "grid"),
        executor={"cluster": "debug"},
    )
    assert cli_main(["grid", str(spec)]) == 1
    captured = capsys.readouterr()
    log = tmp_path / "grid" / ".submitit" / "debug" / "fail=true.log"
    failed = [line for line in captured.out.splitlines() if "FAILED" in line]
    assert failed == [
        f"[1/1] fail=true: FAILED: RuntimeError: toy experiment asked to fail (n=100, seed=0) (log: {log})"
    ]
    assert "Traceback" not in captured.out + captured.err
    assert log.read_text().startswith("Traceback") and "asked to fail" in log.read_text()


def test_grids_past_max_points_are_refused_and_large_ones_show_their_validation(tmp_path, capsys):
    spec = _spec(tmp_path / "spec.yaml", experiment="toy", base="small", grid={"seed": list(range(1000))})
    assert cli_main(["grid", str(spec), "--dry-run", "--max-points", "999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"birth grid: error: {spec}: the grid has 1,000 points, more than --max-points 999; "
        "pass a larger --max-points to run it"
    ]
    assert cli_main(["grid", str(spec), "--dry-run"]) == 0  # the default limit is 10,000
    captured = capsys.readouterr()
    assert "validating points" in captured.out and "1000 points (toy)" in captured.out
    assert captured.err == ""


@blind_overcommit
def test_a_grid_point_out_of_memory_is_one_line_naming_the_size(tmp_path, capsys):
    out = tmp_path / "grid"
    spec = _spec(
        tmp_path / "spec.yaml",
        experiment="d-and-T",
        fixed={"trials": 2, "d_curves": [10_000_000_000]},
        grid={"seed": [0]},
        out=str(out),
        executor={"cluster": "debug"},
    )
    assert cli_main(["grid", str(spec)]) == 1
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["status"] == "failed"
    assert row["error"].startswith(
        "OutOfMemory: out of memory running d-and-T with --d-curves 10000000000: torch asked for"
    )
    assert "Traceback" not in capsys.readouterr().out
    assert not (out / "seed=0").exists()  # the point left nothing behind
