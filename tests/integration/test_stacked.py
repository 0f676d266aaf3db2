"""Stacked training (`training.stacked`): K runs side by side equal K separate runs.

Tolerance: the batched step (one vmapped forward and backward for the K runs) computes each run's
loss with the same formulas as a separate run but through batched kernels and every position of
the last layer (a separate run's fast path computes only the trained positions), so its numbers
equal the separate runs' to float32 rounding accumulated over the steps: every metric within a
relative 1e-4 (or 1e-6 absolute). Accuracies and learning orders are identical. The run-by-run step
(`batched=False`) and a resumed stack are exact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from birth.cli import main
from training.config import QUICK
from training.stacked import parse_seeds, stack_runs, train_stacked, use_batched
from training.trainer import train

RELATIVE, ABSOLUTE = 1e-4, 1e-6  # the stated tolerance of the batched step
SEEDS = (0, 3, 5)
CONFIG = QUICK.replace(
    d_model=16, seq_len=16, batch_size=8, steps=12, eval_every=2, eval_batch_size=16, checkpoint_every=6
)
FILES = ["checkpoints", "config.json", "environment.json", "metrics.jsonl", "summary.json"]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def stacked(out: Path, seeds=SEEDS, config=CONFIG, **kwargs) -> list[Path]:
    dirs = [out / f"seed{s}" for s in seeds]
    train_stacked([config.replace(seed=s) for s in seeds], dirs, progress=False, device="cpu", **kwargs)
    return dirs


def separate(out: Path, seeds=SEEDS, config=CONFIG) -> list[Path]:
    dirs = [out / f"seed{s}" for s in seeds]
    for s, d in zip(seeds, dirs):
        train(config.replace(seed=s), d, progress=False, device="cpu")
    return dirs


def assert_close_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key, value in rb.items():
            if "acc" in key or not isinstance(value, float):
                assert ra[key] == value, (ra["step"], key)
            else:
                assert math.isclose(ra[key], value, rel_tol=RELATIVE, abs_tol=ABSOLUTE), (ra["step"], key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("stack")
    return stacked(root / "stacked", batched=True), separate(root / "separate")


def test_batched_stack_equals_separate_runs(runs):
    for stack_dir, alone_dir in zip(*runs):
        assert sorted(p.name for p in stack_dir.iterdir()) == FILES
        assert sorted(p.name for p in (stack_dir / "checkpoints").iterdir()) == [
            "step_000006.pt",
            "step_000012.pt",
        ]
        assert json.loads((stack_dir / "config.json").read_text()) == json.loads(
            (alone_dir / "config.json").read_text()
        )
        assert_close_rows(rows(stack_dir), rows(alone_dir))
        a, b = summary(stack_dir), summary(alone_dir)
        assert {k: v for k, v in a.items() if k.startswith("order/")} == {
            k: v for k, v in b.items() if k.startswith("order/")
        }
        assert a["status"] == b["status"] == "completed"
    # the seeds really differ: the stack did not train one run three times
    first_losses = {rows(d)[-1]["eval/loss"] for d in runs[0]}
    assert len(first_losses) == len(SEEDS)


def test_run_by_run_stack_is_exact(runs, tmp_path):
    for stack_dir, alone_dir in zip(stacked(tmp_path, batched=False), runs[1]):
        assert rows(stack_dir) == rows(alone_dir)


def test_interrupted_stack_resumes_exactly(runs, tmp_path):
    dirs = stacked(tmp_path, config=CONFIG.replace(steps=6), batched=True)
    # one run lost its checkpoint: it restarts from step 0 and joins the others at step 6
    for path in (dirs[1] / "checkpoints").iterdir():
        path.unlink()
    train_stacked(
        [CONFIG.replace(seed=s) for s in SEEDS], dirs, resume=True, progress=False, device="cpu", batched=True
    )
    for resumed, whole in zip(dirs, runs[0]):
        if resumed is dirs[1]:
            assert_close_rows(rows(resumed), rows(whole))
        else:
            assert rows(resumed) == rows(whole)
        assert summary(resumed)["step"] == 12


def test_train_command_seeds_and_resume(tmp_path):
    out = tmp_path / "out"
    flags = ["--d-model", "16", "--seq-len", "16", "--batch-size", "8", "--eval-every", "2"]
    flags += ["--eval-batch-size", "8", "--wandb", "off", "--no-progress"]
    assert main(["train", "--seeds", "0,2", "--steps", "4", "--out", str(out), *flags]) == 0
    assert [d.name for d in stack_runs(out)] == ["seed0", "seed2"]
    assert json.loads((out / "seed2" / "config.json").read_text())["run"]["seed"] == 2
    assert main(["train", "--resume", str(out), "--steps", "6", "--no-progress", "--wandb", "off"]) == 0
    for name in ("seed0", "seed2"):
        assert [r["step"] for r in rows(out / name)] == [0, 2, 4, 6]
        assert summary(out / name)["step"] == 6


def test_parse_seeds():
    assert parse_seeds("0-3") == (0, 1, 2, 3)
    assert parse_seeds("0,3,5") == (0, 3, 5)
    assert parse_seeds("7, 1-2") == (7, 1, 2)
    for bad in ("", ",", "-1", "1,1", "0-2,2", "3-1", "a", "0-99999"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_default_step_choice():
    cpu = torch.device("cpu")
    small = [CONFIG.replace(seed=s) for s in range(4)]
    assert use_batched(small, cpu)
    assert not use_batched([QUICK.replace(seed=s) for s in range(4)], cpu)  # B·T = 8192: run by run
    assert not use_batched(small[:1], cpu)
