"""`birth reproduce`: tiny CLI runs write their JSON and figures; bad output dirs are refused."""

from __future__ import annotations

import json

from birth.cli import main

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


SHORT = ["--steps", "100", "--seeds", "1", "--eval-every", "50", "--device", "cpu", "--no-progress"]


def test_reproduce_layers_short_quick_run_separates_two_from_one_layer(tmp_path):
    out = tmp_path / "layers"
    assert main(["reproduce", "layers", "--out", str(out), *SHORT]) == 0
    table = json.loads((out / "results.json").read_text())["table"]
    # 100 steps of the quick preset: the induction head is forming in 2 layers, 1 layer plateaus
    assert table["2L"]["icl_acc_mean"] > table["1L"]["icl_acc_mean"] + 0.1


def test_reproduce_loss_all_tokens_learns_the_bigrams(tmp_path):
    out = tmp_path / "loss"
    assert main(["reproduce", "loss", "--out", str(out), *SHORT]) == 0
    payload = json.loads((out / "results.json").read_text())
    outputs, every = payload["outputs"]["final"], payload["all"]["final"]
    # the loss on all tokens trains the bigram model too; the loss on outputs only does not
    assert every["eval/bigram_loss"] < outputs["eval/bigram_loss"] - 1.0
    assert (out / "loss.png").stat().st_size > 0


def test_reproduce_triggers_order_and_ood_tiny_runs(tmp_path):
    for name, figure in (("triggers", "triggers.png"), ("order", "order.png"), ("ood", "ood.png")):
        out = tmp_path / name
        assert main(["reproduce", name, "--out", str(out), *TINY]) == 0, name
        payload = json.loads((out / "results.json").read_text())
        assert payload["experiment"] == name and (out / figure).stat().st_size > 0
    triggers = json.loads((tmp_path / "triggers" / "results.json").read_text())
    assert {"fixed", "random"} <= set(triggers)
    order = json.loads((tmp_path / "order" / "results.json").read_text())
    assert set(order["crossings"]) == {"W_OV2", "W_KQ2", "W_KQ1"}
    # --overwrite re-runs the experiment's training runs from scratch and keeps other files
    (tmp_path / "order" / "notes.txt").write_text("mine")
    assert main(["reproduce", "order", "--out", str(tmp_path / "order"), *TINY]) == 2
    assert main(["reproduce", "order", "--out", str(tmp_path / "order"), "--overwrite", *TINY]) == 0
    assert json.loads((tmp_path / "order" / "results.json").read_text())["crossings"] == order["crossings"]
    assert (tmp_path / "order" / "notes.txt").read_text() == "mine"
    ood = json.loads((tmp_path / "ood" / "results.json").read_text())["icl_acc"]
    for train in ("uniform", "bigram"):
        for evaluated in ("uniform", "bigram"):
            assert 0.0 <= ood[train][evaluated] <= 1.0
