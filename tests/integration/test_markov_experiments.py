"""The markov-phases and clamps experiments at their small sizes, and their analyses."""

from __future__ import annotations

import json

import pytest

from birth.experiments.common import TrainedRun
from birth.experiments.registry import get, run_experiment
from birth.experiments.transformer.clamps import CONDITIONS, Condition, _analysis
from birth.experiments.transformer.markov_phases import PRIORS, phase_starts


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
    else:
        assert len(result.conditions) == 2 * len(CONDITIONS)  # both tasks, every condition
