"""The markov-phases and clamps experiments at their small sizes, and their analyses."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from birth.experiments.common import TrainedRun
from birth.experiments.registry import get, run_experiment
from birth.experiments.transformer.clamps import CONDITIONS, Condition, _analysis
from birth.experiments.transformer.markov_phases import (
    PRIORS,
    PhaseRun,
    excess_summary,
    paired_delay,
    phase_starts,
)
from birth.models.transformer import ModelConfig
from tasks.markov_icl import MarkovICLConfig
from tests.integration.test_wandb_offline import _items, wandb_records
from training.callbacks import heatmap_images
from training.config import OptimConfig, RunConfig, TrainConfig
from training.trainer import train


def _run(history: list[dict]) -> TrainedRun:
    return TrainedRun("r", 0, {}, {}, history, None)


def test_phase_starts_follow_the_closest_strategy():
    rows = [
        {"step": 0, "eval/kl_uniform": 0.01, "eval/kl_unigram": 0.2, "eval/kl_bigram": 0.3},
        {"step": 10, "eval/kl_uniform": 0.1, "eval/kl_unigram": 0.05, "eval/kl_bigram": 0.2},
        {"step": 20, "eval/kl_uniform": 0.1, "eval/kl_unigram": 0.06, "eval/kl_bigram": 0.07},
        {"step": 30, "eval/kl_uniform": 0.1, "eval/kl_unigram": 0.08, "eval/kl_bigram": 0.02},
    ]
    assert phase_starts(_run(rows)) == {"uniform": 0, "unigram": 10, "bigram": 30}


def _phase_run(prior: str, seed: int, bigram: int | None, excess: float) -> PhaseRun:
    starts = {"uniform": 0, "unigram": None, "bigram": bigram}
    return PhaseRun(prior, seed, starts, excess, {}, math.nan, math.nan, _run([]))


def test_delay_is_paired_by_seed_and_excess_summarised_over_seeds():
    runs = [
        _phase_run("dirichlet", 0, 170, 0.010),
        _phase_run("dirichlet", 1, 160, 0.020),
        _phase_run("dirichlet", 2, None, 0.030),  # never reaches the bigram phase: no pair
        _phase_run("doubly_stochastic", 0, 150, 0.0),
        _phase_run("doubly_stochastic", 1, 150, 0.0),
        _phase_run("doubly_stochastic", 2, 140, 0.0),
    ]
    assert paired_delay(runs) == {"mean": 15.0, "std": pytest.approx(math.sqrt(50)), "pairs": 2}
    summary = excess_summary([r for r in runs if r.prior == "dirichlet"])
    assert summary == {"mean": pytest.approx(0.02), "std": pytest.approx(0.01)}
    assert excess_summary(runs[:1]) == {"mean": 0.01, "std": 0.0}


def test_additivity_and_gating():
    means = {(): 100.0, ("prev_token",): 40.0, ("induction",): 90.0, ("W_O2",): 80.0}
    conditions = [Condition("t", list(k), [int(v)], v, 0.0, 1) for k, v in means.items()] + [
        Condition("t", ["prev_token", "induction"], [30], 30.0, 0.0, 1)
    ]
    additivity, gating = _analysis(conditions)
    assert gating == {"t": "prev_token"}
    assert additivity["t:prev_token+induction"] == {"measured": 70.0, "additive": 70.0}
    # a clamp with which some seed never forms the circuit saves no measured step, and gates nothing
    partial = [c for c in conditions if c.clamps != ["prev_token"]]
    partial.append(Condition("t", ["prev_token"], [10, None], 10.0, 0.0, 1))
    additivity, gating = _analysis(partial)
    assert gating == {"t": "W_O2"}
    assert additivity["t:prev_token+induction"] == {"measured": 70.0, "additive": None}


@pytest.mark.parametrize("name", ["markov-phases", "clamps"])
def test_small_runs_write_their_result(tmp_path, name):
    result = run_experiment(name, get(name).small(), tmp_path / name, progress=False, log=lambda *_: None)
    saved = json.loads((tmp_path / name / "result.json").read_text())
    assert list((tmp_path / name).glob("*.png"))
    if name == "markov-phases":
        assert [r.prior for r in result.runs] == list(PRIORS)
        assert set(saved["result"]["bigram_start"]) == set(PRIORS)
        for prior in PRIORS:  # the final excess loss per variant, mean ± std over seeds, in the headline
            excess = saved["result"]["final_excess"][prior]
            assert set(excess) == {"mean", "std"} and excess["std"] == 0.0  # one seed
            assert f"{prior}: bigram phase at step" in result.headline()
            assert f"{100 * excess['mean']:+.2f} ± 0.00% of Bayes" in result.headline()
    else:
        assert len(result.conditions) == 2 * len(CONDITIONS)  # both tasks, every condition


def _history(run_dir: Path) -> list[dict]:
    """The history rows of the run's offline W&B log, once its last row (the probe chart) is in:
    W&B's service process may still be writing the file when `train` returns."""
    deadline = time.monotonic() + 60
    while True:
        (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        records = [r for r in wandb_records(log) if r.WhichOneof("record_type") == "history"]
        history = [_items(r.history.item) for r in records]
        if any("charts/probes_table" in h for h in history) or time.monotonic() > deadline:
            return history
        time.sleep(0.2)


def test_offline_wandb_logs_markov_heatmaps(tmp_path, monkeypatch):
    """`--heatmap-every` on a task other than triggered-bigram: the attention images of both layers
    reach the offline W&B run (nothing leaves the machine) and the PNGs are written."""
    monkeypatch.setenv("WANDB_MODE", "offline")  # conftest disables W&B for every other test
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    config = TrainConfig(
        task=MarkovICLConfig(n_states=3, seq_len=12),
        model=ModelConfig(d_model=8, variant="full"),
        optim=OptimConfig(optimizer="adamw", lr=0.01, batch_size=4, steps=4, loss_on="all"),
        run=RunConfig(eval_every=2, eval_batch_size=4, heatmap_every=2),
    )
    run_dir = tmp_path / "run"
    result = train(config, run_dir, wandb_mode="offline", progress=False, log=lambda *_: None)
    assert result.status == "completed"
    assert sorted(p.name for p in (run_dir / "heatmaps").glob("*.png")) == [
        f"attention_layer{layer}_step{step:06d}.png" for layer in (1, 2) for step in (0, 2, 4)
    ]
    images = [h for h in _history(run_dir) if "attention/layer1" in h]
    assert [h["step"] for h in images] == [0, 2, 4]
    assert all(h["attention/layer2"]["_type"] == "image-file" for h in images)


def test_heatmap_images_are_keyed_by_layer_and_head():
    paths = [Path("h/attention_layer1_step000010.png"), Path("h/attention_layer2_head1_step000010.png")]
    assert heatmap_images(paths) == {"attention/layer1": paths[0], "attention/layer2_head1": paths[1]}
