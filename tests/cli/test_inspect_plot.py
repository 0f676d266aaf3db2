"""`birth inspect` and `birth plot` on tiny training runs: files written, scores, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from birth.base.curves import first_crossing
from birth.cli import main as cli_main
from birth.experiments.transformer.markov_phases import markov_train
from tasks.markov_icl import INDUCTION_MASS, KL_BIGRAM, PREV_MASS
from training.checkpoint import checkpoint_path
from training.config import QUICK
from training.logger import read_metrics
from training.trainer import train

# the tiny_config fixture of conftest.py, at module scope so that the runs are trained once
TINY = QUICK.replace(
    d_model=16,
    seq_len=16,
    batch_size=8,
    eval_batch_size=16,
    eval_every=2,
    checkpoint_every=4,
    steps=12,
    lr=0.5,
)

# what `birth inspect --out` writes for a 2-layer model with one head per layer
INSPECT_FILES = {"attention_layer1.png", "attention_layer2.png", "attention.html", "scores.json"}


def _quiet(*_args) -> None:
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, config in {
        "seed0": TINY,
        "seed1": TINY.replace(seed=1),
        "one_layer": TINY.replace(n_layers=1),
    }.items():
        train(config, root / name, progress=False, log=_quiet)
    return root


def test_inspect_writes_heatmaps_html_and_scores(runs, tmp_path, capsys):
    ckpt = checkpoint_path(runs / "seed0", 12)
    out = tmp_path / "inspect"
    assert cli_main(["inspect", str(ckpt), "--out", str(out), "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == INSPECT_FILES
    scores = json.loads((out / "scores.json").read_text())
    assert scores["step"] == 12 and scores["n_layers"] == 2
    prev = scores["triggered_bigram"]["layer1"]["previous_token"]
    assert 0.0 <= prev["mass"] <= 1.0 and prev["n_queries"] == 8 * 15
    assert scores["repeated_random"]["half_len"] == 8
    # the printed numbers are the JSON's, and every written file is named
    assert f"previous-token {prev['mass']:.3f}" in printed
    for name in ("attention_layer1.png", "attention.html", "scores.json"):
        assert str(out / name) in printed


def test_inspect_a_run_directory_and_a_one_layer_checkpoint(runs, capsys):
    assert cli_main(["inspect", str(runs / "one_layer"), "--batch-size", "4"]) == 0
    out = runs / "one_layer" / "inspect" / "step_000012"  # default: the latest checkpoint's folder
    assert (out / "attention_layer1.png").is_file() and not (out / "attention_layer2.png").exists()
    assert json.loads((out / "scores.json").read_text())["n_layers"] == 1
    assert "1-layer model" in capsys.readouterr().out


def test_inspect_missing_or_corrupted_checkpoint_exits_2(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["inspect", str(tmp_path / "nope.pt"), "--out", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli_main(["inspect", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "corrupted" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing written on bad input


def test_plot_one_run(runs, tmp_path, capsys):
    out = tmp_path / "plot1"
    assert cli_main(["plot", str(runs / "seed0"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for ext in ("png", "pdf", "json"):
        assert str(out / f"learning_order.{ext}") in printed
    assert (out / "learning_order.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "learning_order.pdf").read_bytes()[:5] == b"%PDF-"
    summary = json.loads((out / "learning_order.json").read_text())
    assert set(summary["crossings"]) == {"W_OV2", "W_KQ2", "W_KQ1"}
    assert summary["steps"] == list(range(0, 13, 2))


def _fake_run(run_dir, crossings: dict[str, int]) -> None:
    """A run directory whose probe k rises from 0 to 1 exactly at step crossings[k]."""
    run_dir.mkdir(parents=True)
    rows = []
    for step in range(0, 101, 10):
        row = {"step": step, "eval/icl_acc": step / 100}
        row.update({f"probes/{k}": float(step >= at) for k, at in crossings.items()})
        rows.append(json.dumps(row))
    (run_dir / "metrics.jsonl").write_text("\n".join(rows) + "\n")


def test_plot_several_runs_mean_and_std(tmp_path, capsys):
    _fake_run(tmp_path / "a", {"W_OV2": 10, "W_KQ2": 40, "W_KQ1": 20})
    _fake_run(tmp_path / "b", {"W_OV2": 10, "W_KQ2": 60, "W_KQ1": 200})  # W_KQ1 never in b
    assert cli_main(["plot", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = tmp_path / "plots"  # default for several runs: their common parent
    summary = json.loads((out / "learning_order.json").read_text())
    crossings = summary["crossings"]
    assert crossings["W_OV2"] == {"per_run": [10, 10], "mean": 10.0, "std": 0.0, "n_reached": 2}
    assert crossings["W_KQ2"]["mean"] == 50.0 and crossings["W_KQ2"]["std"] == 10.0
    assert crossings["W_KQ1"]["per_run"] == [20, None] and crossings["W_KQ1"]["n_reached"] == 1
    assert summary["final"]["probes/W_KQ1"] == 0.5  # mean over the runs at the last step
    printed = capsys.readouterr().out
    assert "W_OV2: step 10 ± 0; W_KQ1: step 20 ± 0, 1 run(s) never; W_KQ2: step 50 ± 10" in printed
    assert (out / "learning_order.pdf").is_file()


def test_plot_bad_input_exits_2(runs, tmp_path, capsys):
    out = tmp_path / "plot_bad"
    assert cli_main(["plot", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    # 1- and 2-layer runs have different probes: one figure cannot hold both
    assert cli_main(["plot", str(runs / "seed0"), str(runs / "one_layer"), "--out", str(out)]) == 2
    assert "different probes" in capsys.readouterr().err
    assert not out.exists()


def test_first_crossing():
    steps = np.array([0, 10, 20, 30])
    assert first_crossing(steps, np.array([0.1, 0.95, 0.5, 0.99]), 0.9) == 10
    assert first_crossing(steps, np.array([0.1, 0.2, 0.3, 0.4]), 0.9) is None


# -- no silent overwrite, malformed metrics lines reported -----------------------------------------


def _fingerprints(folder):
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.iterdir()}


@pytest.mark.parametrize(
    "command, kept",
    [
        (["inspect", "{run}/checkpoints/step_000012.pt", "--batch-size", "4"], "scores.json"),
        (["plot", "{run}"], "learning_order.json"),
    ],
    ids=["inspect", "plot"],
)
def test_a_given_out_keeps_its_files_unless_overwrite(runs, tmp_path, capsys, command, kept):
    argv = [a.format(run=runs / "seed0") for a in command] + ["--out", str(tmp_path / "out")]
    assert cli_main(argv) == 0
    before = _fingerprints(tmp_path / "out")
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and kept in err[0], err
    assert _fingerprints(tmp_path / "out") == before  # nothing replaced
    assert cli_main([*argv, "--overwrite"]) == 0
    assert "replacing" in capsys.readouterr().out
    after = _fingerprints(tmp_path / "out")
    assert set(after) == set(before) and after[kept] != before[kept]


def test_the_runs_own_folders_are_re_made_and_say_so(runs, capsys):
    for argv in (["inspect", str(runs / "seed1"), "--batch-size", "4"], ["plot", str(runs / "seed1")]):
        assert cli_main(argv) == 0
        capsys.readouterr()
        assert cli_main(argv) == 0
        assert "(re-made from the run)" in capsys.readouterr().out


def test_plot_names_every_malformed_line_and_a_binary_metrics_file(runs, tmp_path, capsys):
    edited = tmp_path / "edited"
    edited.mkdir()
    first, *rest = (runs / "seed0" / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (edited / "metrics.jsonl").write_bytes(first + b"{junk\n" + b"\xff\n" + b"".join(rest))
    assert cli_main(["plot", str(edited), "--out", str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    metrics = edited / "metrics.jsonl"
    assert [line.split(": line skipped, ")[0] for line in err] == [
        f"warning: {metrics}:2",
        f"warning: {metrics}:3",
    ]
    assert "not UTF-8 text (byte 0xff at offset" in err[1]
    # a binary metrics.jsonl, second of two runs: one line naming that file and the byte
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "metrics.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert cli_main(["plot", str(runs / "seed0"), str(binary), "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{binary / 'metrics.jsonl'} is not UTF-8 text (byte 0x89 at offset 0)" in err[0]
    assert not (tmp_path / "q").exists()


def test_inspect_and_plot_a_markov_icl_run(tmp_path, capsys):
    """Any task: the scores on the task's own held-out batch are the ones its run logged."""
    run = tmp_path / "markov"
    config = markov_train(seq_len=16, d_model=16, batch_size=8, steps=4, eval_every=2, eval_batch_size=16)
    train(config, run, progress=False, log=_quiet)
    out = tmp_path / "inspect"
    assert cli_main(["inspect", str(run), "--out", str(out), "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == INSPECT_FILES
    scores = json.loads((out / "scores.json").read_text())
    assert scores["task"] == "markov-icl" and "triggered_bigram" not in scores
    part, logged = scores["markov_icl"], read_metrics(run / "metrics.jsonl")[-1]
    assert logged["step"] == scores["step"] == 4
    # the same held-out batch as the run's evaluation: the same readings
    assert part["layer1"]["previous_token"]["mass"] == pytest.approx(logged[PREV_MASS], abs=1e-5)
    assert part["layer1"]["previous_token"]["n_queries"] == 16 * 15
    assert part["layer2"]["induction_any"]["mass"] == pytest.approx(logged[INDUCTION_MASS], abs=1e-5)
    assert part["metrics"]["kl_bigram"] == pytest.approx(logged[KL_BIGRAM], rel=1e-4)
    # induction queries: every query whose state occurred before (3 states: all but a few per row)
    assert 16 * 12 <= part["layer2"]["induction"]["n_queries"] < 16 * 16
    assert part["induction_head"]["layer"] == 2
    assert "markov-icl sequences (16 sequences; kl_bigram" in printed
    assert f"previous-token {part['layer1']['previous_token']['mass']:.3f}" in printed
    html = (out / "attention.html").read_text()
    assert "tokens that followed its earlier occurrences" in html and "Triggers" not in html
    # plot: the strategy distances against the step
    assert cli_main(["plot", str(run), "--out", str(tmp_path / "plot")]) == 0
    summary = json.loads((tmp_path / "plot" / "learning_order.json").read_text())
    assert summary["steps"] == [0, 2, 4]
