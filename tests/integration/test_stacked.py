"""Stacked training (`training.stacked`): K runs side by side equal K separate runs.

Tolerance: the batched step (one vmapped forward and backward for the K runs) computes each run's
loss with the same formulas as a separate run but through batched kernels, with the selected
queries padded and grouped differently (`StackedForward.at_queries`) and the mean taken in another
order, so its numbers equal the separate runs' to float32 rounding accumulated over the steps:
every metric within a relative 1e-4 (or 1e-6 absolute). Accuracies and learning orders are
identical. The run-by-run step (`batched=False`) and a resumed stack are exact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import training.stacked
from birth.base.seeds import step_seed
from birth.cli import main
from birth.models import fast
from birth.models.fast import fast_logits
from birth.models.stacked import StackedForward
from training.config import FULL, QUICK
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


# the two ways the selected-query forward reads the first layer, each forced by its FLOP allowance
# (`birth.models.fast._reads_first_layer_at_queries`)
READINGS = {"x2 everywhere": math.inf, "at the queries": 0.0}
# the batched step's forwards: every position, or the selected queries read either way
FORWARDS = ("every position", *(f"selected queries, {reading}" for reading in READINGS))


@contextmanager
def batched_forward(forward: str) -> Iterator[None]:
    """The batched step through `forward`; the selected queries are the default only from
    SELECTED_MIN_TOKENS tokens per batch, more than these small runs have."""
    with pytest.MonkeyPatch.context() as patch:
        if forward.startswith("selected queries"):
            patch.setattr(training.stacked, "SELECTED_MIN_TOKENS", 0)
            patch.setattr(fast, "_EVERYWHERE_FLOP_ALLOWANCE", READINGS[forward.split(", ")[1]])
        yield


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> list[Path]:
    return separate(tmp_path_factory.mktemp("alone"))


@pytest.fixture(scope="module", params=FORWARDS)
def runs(request, tmp_path_factory, alone) -> tuple[list[Path], list[Path], str]:
    with batched_forward(request.param):
        return stacked(tmp_path_factory.mktemp("stack"), batched=True), alone, request.param


def test_batched_stack_equals_separate_runs(runs):
    for stack_dir, alone_dir in zip(*runs[:2]):
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


def test_run_by_run_stack_is_exact(alone, tmp_path):
    for stack_dir, alone_dir in zip(stacked(tmp_path, batched=False), alone):
        assert rows(stack_dir) == rows(alone_dir)


def test_interrupted_stack_resumes_exactly(runs, tmp_path):
    with batched_forward(runs[2]):
        dirs = stacked(tmp_path, config=CONFIG.replace(steps=6), batched=True)
        # one run lost its checkpoint: it restarts from step 0 and joins the others at step 6
        for path in (dirs[1] / "checkpoints").iterdir():
            path.unlink()
        train_stacked(
            [CONFIG.replace(seed=s) for s in SEEDS],
            dirs,
            resume=True,
            progress=False,
            device="cpu",
            batched=True,
        )
    for resumed, whole in zip(dirs, runs[0]):
        if resumed is dirs[1]:
            assert_close_rows(rows(resumed), rows(whole))
        else:
            assert rows(resumed) == rows(whole)
        assert summary(resumed)["step"] == 12


def test_train_command_seeds_and_resume(tmp_path, capsys):
    out = tmp_path / "out"
    flags = ["--d-model", "16", "--seq-len", "16", "--batch-size", "8", "--eval-every", "2"]
    flags += ["--eval-batch-size", "8", "--wandb", "off", "--no-progress"]
    assert main(["train", "--seeds", "0,2", "--steps", "4", "--out", str(out), *flags]) == 0
    # the same --out again: refused, pointing at what resumes a stack (--resume OUT, not OUT/seed0)
    capsys.readouterr()
    assert main(["train", "--seeds", "0,2", "--steps", "4", "--out", str(out), *flags]) == 2
    assert f"--resume {out} " in capsys.readouterr().err
    assert [d.name for d in stack_runs(out)] == ["seed0", "seed2"]
    assert json.loads((out / "seed2" / "config.json").read_text())["run"]["seed"] == 2
    assert main(["train", "--resume", str(out), "--steps", "6", "--no-progress", "--wandb", "off"]) == 0
    for name in ("seed0", "seed2"):
        assert [r["step"] for r in rows(out / name)] == [0, 2, 4, 6]
        assert summary(out / name)["step"] == 6


# the simplified model (its frozen identity W_Q shared by the runs), and a one-head model without
# LayerNorm whose every matrix trains (markov-phases' architecture: W_Q batched under vmap)
FAST_PATH_MODELS = {
    "simplified": {},
    "trained W_Q": dict(variant="full", normalization="none", mlp="none", n_heads=1, biases=True),
}


@pytest.mark.parametrize("model", FAST_PATH_MODELS.values(), ids=FAST_PATH_MODELS.keys())
def test_stacked_every_position_equals_each_models_own(one_thread, model):
    configs = [CONFIG.replace(seed=s, batch_size=8, **model) for s in SEEDS]
    task = configs[0].build_task(torch.device("cpu"))
    models = [c.build_model(task.vocab_size, device="cpu") for c in configs]
    tokens = torch.stack([task.sample(8, task.generator(step_seed(s, 1))).inputs for s in SEEDS])
    together = StackedForward(models)(tokens[[1, 2]], [1, 2])
    for slot, run in enumerate([1, 2]):
        torch.testing.assert_close(
            together[slot], fast_logits(models[run], tokens[run]), rtol=RELATIVE, atol=1e-5
        )


@pytest.mark.parametrize("reading", list(READINGS))
@pytest.mark.parametrize("model", FAST_PATH_MODELS.values(), ids=FAST_PATH_MODELS.keys())
def test_stacked_selected_queries_equal_each_models_own(one_thread, model, reading, monkeypatch):
    monkeypatch.setattr(fast, "_EVERYWHERE_FLOP_ALLOWANCE", READINGS[reading])
    configs = [CONFIG.replace(seed=s, batch_size=32, trigger_mode="random", **model) for s in SEEDS]
    task = configs[0].build_task(torch.device("cpu"))
    models = [c.build_model(task.vocab_size, device="cpu") for c in configs]
    with torch.no_grad():  # the zero-initialized matrices made different in every model
        for i, model in enumerate(models):
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    batches = [task.sample(32, task.generator(step_seed(s, 1))) for s in SEEDS]
    tokens = torch.stack([b.inputs for b in batches])
    masks = torch.stack([task.loss_mask(b, "outputs") for b in batches])
    forward = StackedForward(models)
    groups = forward.at_queries(tokens[[2, 0]], masks[[2, 0]], [2, 0])  # any subset, any order
    assert len(groups) > 1
    for slot, run in enumerate([2, 0]):
        # every selected position exactly once among the valid rows, with its model's own logits
        rows = {}
        for g in groups:
            for b, t, logits in zip(*_valid_rows(g, slot)):
                assert (b, t) not in rows
                rows[b, t] = logits
        positions = masks[run].nonzero().tolist()
        assert sorted(rows) == sorted(map(tuple, positions))
        alone = fast_logits(models[run], tokens[run], masks[run])  # row-major (b, t) order
        together = torch.stack([rows[b, t] for b, t in positions])
        torch.testing.assert_close(together, alone, rtol=RELATIVE, atol=1e-4)  # float32 rounding


def _valid_rows(group, slot: int) -> tuple[list[int], list[int], torch.Tensor]:
    valid = group.valid[slot]
    sequences = group.sequences[slot].unsqueeze(-1).expand_as(valid)[valid].tolist()
    return sequences, group.order[slot][valid].tolist(), group.logits[slot][valid]


def test_parse_seeds():
    assert parse_seeds("0-3") == (0, 1, 2, 3)
    assert parse_seeds("0,3,5") == (0, 3, 5)
    assert parse_seeds("7, 1-2") == (7, 1, 2)
    for bad in ("", ",", "-1", "1,1", "0-2,2", "3-1", "a", "0-99999"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_default_step_choice(one_thread):
    cpu = torch.device("cpu")
    small = [CONFIG.replace(seed=s) for s in range(4)]
    assert use_batched(small, cpu)
    assert use_batched([CONFIG.replace(seed=s, batch_size=256) for s in range(4)], cpu)  # B·T = 4096
    assert not use_batched([QUICK.replace(seed=s) for s in range(4)], cpu)  # B·T = 8192: run by run
    assert use_batched([QUICK.replace(seed=s) for s in range(4)], torch.device("cuda"))
    assert not use_batched(small[:1], cpu)
    full = [FULL.replace(seed=s, d_model=64, seq_len=32, batch_size=32) for s in range(4)]
    assert not use_batched(full, cpu) and use_batched(full, torch.device("cuda"))  # the reference forward
    torch.set_num_threads(2)  # several CPU threads: batched at any size (`one_thread` restores the count)
    assert use_batched(full, cpu) and use_batched([QUICK.replace(seed=s) for s in range(4)], cpu)
    assert not use_batched(small[:1], cpu)
