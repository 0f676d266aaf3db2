"""`birth dashboard`: the spec offline with --dry-run, one clear line when saving has no API key."""

from __future__ import annotations

import json

from birth.cli import main


def test_dry_run_prints_the_workspace_spec_as_json(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["dashboard", "--entity", "my-team", "--project", "birth-runs", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    spec = json.loads(out)
    assert (spec["entity"], spec["project"], spec["displayName"]) == (
        "my-team",
        "birth-runs",
        "birth: learning order",
    )
    names = [s["name"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]]
    assert names[0] == "Learning order" and "Attention heatmaps" in names
    assert list(tmp_path.iterdir()) == []  # offline: nothing written


def test_saving_without_an_api_key_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no key on this machine either
    code = main(["dashboard", "--entity", "my-team"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    assert "W&B API key" in lines[0] and "--dry-run" in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
