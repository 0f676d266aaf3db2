"""`birth reproduce`: tiny CLI runs write their JSON and figures; bad output dirs are refused."""

from __future__ import annotations

import json

from scripts.cli import main

TINY = ["--steps", "4", "--seeds", "1", "--d-model", "16", "--seq-len", "16", "--batch-size", "8",
        "--eval-every", "2", "--eval-batch-size", "8", "--device", "cpu", "--no-progress"]


def test_reproduce_layers_tiny_run_writes_json(tmp_path, capsys):
    out = tmp_path / "layers"
    assert main(["reproduce", "layers", "--out", str(out), *TINY]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["experiment"] == "layers"
    assert set(payload["table"]) == {"2L", "1L"}
    for row in payload["table"].values():
        assert 0.0 <= row["icl_acc_mean"] <= 1.0 and len(row["icl_acc"]) == 1
    assert (out / "layers.png").stat().st_size > 0
    assert "2 layers" in capsys.readouterr().out


def test_reproduce_refuses_a_non_empty_out_dir(tmp_path, capsys):
    out = tmp_path / "lemma"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["reproduce", "lemma", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["reproduce", "lemma", "--out", str(out), "--overwrite"]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["summary"]["population"]["argmax_accuracy"] == 1.0
    assert (out / "lemma.png").is_file() and (out / "keep.txt").is_file()
