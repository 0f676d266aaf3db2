"""The W&B learning-order dashboard reads only keys the trainer logs: a real short run is the
reference, so a renamed metric fails here instead of leaving an empty panel."""

from __future__ import annotations

import json
from typing import Any

import pytest
import wandb

import birth
from training.dashboard import DashboardKey, build_workspace, dashboard_keys, workspace_spec
from training.logger import read_metrics


class _RecordingRun:
    """Stands in for the run `wandb.init` returns: keeps every key the trainer logs to W&B (the
    metric rows, the heatmap images, the probe chart) and the summary, and sends nothing."""

    id = "recorded"

    def __init__(self) -> None:
        self.history: set[str] = set()
        self.summary: dict[str, Any] = {}

    def log(self, row: dict[str, Any]) -> None:
        self.history |= set(row)

    def finish(self) -> None:
        pass


@pytest.fixture(scope="module")
def logged_keys(tmp_path_factory) -> dict[str, set[str]]:
    """The keys of one tiny run with every optional metric on (attention probes, a W_F layer,
    heatmaps): its metrics.jsonl columns, its summary.json keys and what it logged to W&B."""
    root = tmp_path_factory.mktemp("dashboard")
    run = _RecordingRun()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wandb, "init", lambda **_: run)
        mp.setattr(wandb, "define_metric", lambda *_, **__: None)
        config = birth.QUICK.replace(
            d_model=16,
            seq_len=16,
            batch_size=8,
            eval_batch_size=16,
            eval_every=2,
            checkpoint_every=4,
            steps=6,
            lr=0.05,
            attention_probes=True,
            mlp="linear",
            mlp_layers="final",
            heatmap_every=6,
        )
        run_dir = root / "run"
        result = birth.train(config, run_dir, wandb_mode="offline", progress=False, log=lambda *_: None)
    assert result.status == "completed"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run.summary == summary  # W&B's summary is summary.json
    return {
        "history": set().union(*read_metrics(run_dir / "metrics.jsonl")),
        "summary": set(summary),
        "media": run.history,
    }


@pytest.mark.slow
def test_every_panel_reads_a_key_the_trainer_logs(logged_keys):
    spec = workspace_spec(build_workspace("entity", "project"))
    keys = dashboard_keys(spec)
    for kind in ("history", "summary", "media"):
        assert any(k.kind == kind for k in keys), f"no {kind} key read: the spec reader missed panels"
    missing = sorted(f"{k.kind}:{k.name}" for k in keys if k.name not in logged_keys[k.kind])
    assert missing == [], f"dashboard panels read keys no run logs: {missing}"


def test_the_learning_order_panel_draws_the_probes_and_the_threshold_line():
    spec = workspace_spec(build_workspace("entity", "project"))
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    first = sections[0]["panels"][0]["config"]
    assert first["metrics"] == ["probes/W_OV2", "probes/W_KQ2", "probes/W_KQ1", "eval/icl_acc"]
    assert first["xAxis"] == "step"
    assert first["expressions"] == ["0*${eval/icl_acc} + 0.9"]
    keys = dashboard_keys(spec)
    assert {DashboardKey("summary", f"order/{p}") for p in ("W_OV2", "W_KQ2", "W_KQ1")} <= keys
    assert {DashboardKey("history", "eval/bigram_floor"), DashboardKey("media", "attention/layer2")} <= keys
    # runs grouped by their W&B group (a grid, a study), and the learning order pinned in the table
    (runset,) = spec["spec"]["section"]["runSets"]
    assert runset["grouping"] == [{"section": "run", "name": "group"}]
    assert runset["runFeed"]["columnPinned"]["summary:order/W_KQ1"] is True
    assert spec["entity"] == "entity" and spec["project"] == "project"
