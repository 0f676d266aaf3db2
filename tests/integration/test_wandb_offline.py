"""W&B offline runs, read back from the run's own .wandb file, and the sweep configs."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from training.logger import read_metrics
from training.trainer import train

REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "scripts" / "sweeps").glob("*.yaml"))

# The .wandb transaction log is LevelDB's log format behind a 7-byte header (":W&B", 0xBEE1,
# version): 32 KiB blocks of chunks [crc32 u32, length u16, type u8] + payload, where type is
# FULL=1, FIRST=2, MIDDLE=3, LAST=4 and a block tail shorter than a chunk header is zero padding.
# Each reassembled payload is a wandb `Record` protobuf (wandb.proto.wandb_internal_pb2).
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7


def wandb_records(path: Path) -> Iterator:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, payload = 7, b""
    while pos + _CHUNK_HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _CHUNK_HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += left_in_block
            continue
        chunk = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        payload = chunk if kind in (1, 2) else payload + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            yield record


def _items(items) -> dict:
    """History/summary/config items as a dict; nested keys (e.g. an image's fields) nest."""
    out: dict = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


def test_offline_run_history_holds_the_probes(tmp_path, monkeypatch, tiny_config):
    monkeypatch.setenv("WANDB_MODE", "offline")  # conftest disables W&B for every other test
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    config = tiny_config.replace(heatmap_every=6)
    run_dir = tmp_path / "run"
    result = train(config, run_dir, wandb_mode="offline", progress=False, log=lambda *_: None)
    assert result.status == "completed"

    logs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, "train writes one offline run under RUN_DIR/wandb"
    records = list(wandb_records(logs[0]))
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    summary: dict = {}
    run_config: dict = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "summary":
            summary.update(_items(r.summary.update))
        elif kind == "run":
            run_config.update(_items(r.run.config.update))
        elif kind == "config":
            run_config.update(_items(r.config.update))

    # every eval row reached the history with its probes, at the same steps and values
    metrics = read_metrics(run_dir / "metrics.jsonl")
    probe_rows = [h for h in history if "probes/W_KQ1" in h]
    assert [h["step"] for h in probe_rows] == [m["step"] for m in metrics] == list(range(0, 13, 2))
    for h, m in zip(probe_rows, metrics):
        for key in ("probes/W_OV2", "probes/W_KQ2", "probes/W_KQ1", "eval/icl_acc", "eval/loss"):
            assert h[key] == pytest.approx(m[key])
    # heatmaps as images every heatmap_every steps, both layers in one row
    image_rows = [h for h in history if "attention/layer1" in h]
    assert [h["step"] for h in image_rows] == [0, 6, 12]
    for h in image_rows:
        assert h["attention/layer1"]["_type"] == h["attention/layer2"]["_type"] == "image-file"
    # the three probes on one custom chart, the learning order in the summary, the config in full
    tables = [h["charts/probes_table"] for h in history if "charts/probes_table" in h]
    assert len(tables) == 1 and tables[0]["nrows"] == 3 * len(metrics)  # one row per probe and step
    assert {"order/W_OV2", "order/W_KQ2", "order/W_KQ1", "final/eval/icl_acc"} <= set(summary)
    assert {k: v for k, v in run_config.items() if k in config.to_dict()} == config.to_dict()


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_config_expands_to_a_valid_birth_train_command(path):
    """The agent's command line (built with wandb's own expansion) parses as `birth train` flags."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    from birth.commands import train as train_cmd

    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("grid", "random", "bayes") and sweep["program"] == "birth"
    # the first grid point, as the agent would receive it
    point = {
        name: {"value": spec["value"] if "value" in spec else spec["values"][0]}
        for name, spec in sweep["parameters"].items()
    }
    variables = create_sweep_command_args({"args": point})
    variables.update(env=["/usr/bin/env"], program=[sweep["program"]])
    argv = []
    for token in create_sweep_command(sweep["command"]):
        argv += variables[token[2:-1]] if token.startswith("${") else [token]
    assert argv[:3] == ["/usr/bin/env", "birth", "train"]
    assert argv[argv.index("--wandb") + 1] == "online"

    cmd = train_cmd.parse(argv[3:])  # a CLIError on any unknown flag or bad value
    sections = [s for s in cmd.config.to_dict().values() if isinstance(s, dict)]  # not the task's name
    flat = {k: v for section in sections for k, v in section.items()}
    for name, spec in point.items():
        field = name.replace("-", "_")
        actual = cmd.preset if field == "preset" else flat[field]
        assert actual == spec["value"], name


class _FakeRun:
    """Stands in for a wandb run: records what is logged and whether it was finished."""

    id = "fake"

    def __init__(self) -> None:
        self.logged: list[dict] = []
        self.finished = False

    def log(self, row: dict) -> None:
        self.logged.append(row)

    def finish(self) -> None:
        self.finished = True


def _logger_with(tmp_path, line_series):
    from types import SimpleNamespace

    from training.logger import WandbLogger

    rows = [{"step": s, "probes/W_OV2": s / 10, "probes/W_KQ2": 0.5, "probes/W_KQ1": 0.0} for s in (0, 5, 10)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logger = WandbLogger("off", tmp_path, {})
    logger.run = _FakeRun()
    logger._wandb = SimpleNamespace(plot=SimpleNamespace(line_series=line_series))
    return logger


def test_probe_chart_puts_the_three_probes_on_one_plot(tmp_path):
    calls = []
    logger = _logger_with(tmp_path, lambda **kw: calls.append(kw) or "CHART")
    run = logger.run
    logger.finish()
    assert calls[0]["xs"] == [0, 5, 10] and calls[0]["keys"] == ["W_OV2", "W_KQ2", "W_KQ1"]
    assert calls[0]["ys"] == [[0.0, 0.5, 1.0], [0.5] * 3, [0.0] * 3]
    assert run.logged == [{"charts/probes": "CHART", "step": 10}] and run.finished


def test_a_failing_chart_is_reported_and_the_run_still_finishes(tmp_path, capsys):
    def broken(**_kw):
        raise RuntimeError("chart service down")

    logger = _logger_with(tmp_path, broken)
    run = logger.run
    logger.finish()
    assert run.finished and run.logged == []
    assert "chart service down" in capsys.readouterr().err
