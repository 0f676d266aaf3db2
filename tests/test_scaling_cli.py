"""`birth scaling` and `birth capacity` end to end on tiny runs."""

import json

import pytest
import torch

from birth.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_scaling_schemes_writes_files_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "schemes"
    assert main(["scaling", "schemes", "--out", str(out), "--trials", "2", "--no-progress", "--float32"]) == 0
    printed = capsys.readouterr().out
    assert "slope" in printed and "theory -0.250" in printed and str(out) in printed
    for name in ("schemes.json", "schemes.png", "schemes.pdf"):
        assert (out / name).stat().st_size > 0
    record = json.loads((out / "schemes.json").read_text())
    assert len(record["fits"]) == 3 and record["trials"] == 2
    before = (out / "schemes.json").read_bytes()
    assert main(["scaling", "schemes", "--out", str(out), "--trials", "2", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "schemes.json").read_bytes() == before


def test_scaling_bad_input_exits_2(tmp_path, capsys):
    assert main(["scaling", "schemes", "--out", str(tmp_path / "x"), "--trials", "1"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["scaling", "schemes", "--out", str(tmp_path / "x"), "--top-fraction", "0"]) == 2


def test_scaling_sgd_small(tmp_path):
    out = tmp_path / "sgd"
    assert main(["scaling", "sgd", "--out", str(out), "--trials", "2", "--steps", "150", "--no-progress", "--float32"]) == 0
    for name in ("sgd.json", "sgd.png", "q_gamma.png", "q_gamma.pdf"):
        assert (out / name).exists()
    runs = json.loads((out / "sgd.json").read_text())["runs"]
    assert len(runs) == 4 and all(r["sgd_error"][-1] < r["sgd_error"][1] for r in runs)


def test_capacity_cli_small(tmp_path, capsys):
    out = tmp_path / "cap"
    args = ["capacity", "--memories", "linear,nearest", "--trials", "2", "--queries", "32", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    record = json.loads((out / "capacity.json").read_text())
    assert set(record["memories"]) == {"linear", "nearest"}
    assert (out / "capacity_summary.png").exists()
    assert main(args) == 2  # refuses to overwrite
    assert main(["capacity", "--memories", "nope", "--out", str(tmp_path / "y")]) == 2
