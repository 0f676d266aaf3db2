"""The experiments of trained memories and factual recall at their small sizes, through the
registry: capacity-vs-parameters (scaling), recall-tradeoff and recall-dynamics (transformer)."""

from __future__ import annotations

import json

import pytest

from birth.experiments.registry import get, run_experiment

pytestmark = pytest.mark.usefixtures("one_thread")

# the small sizes' numbers (N* per seed; seeded: they move only if the training or the draws do)
LINEAR_SMALL = {4: [5, 3], 8: [15, 16]}
MLP_SMALL = {8: [12, 6], 16: [22, 24]}
LINEAR_SLOPE_SMALL = 0.9770981551934368
BASELINE_SMALL = 1.1105722  # relation-only loss of the small task's facts


def small(name, tmp_path):
    exp = get(name)
    result = run_experiment(exp, exp.small(), tmp_path / name, progress=False, log=lambda _: None)
    record = json.loads((tmp_path / name / "result.json").read_text())
    assert record["experiment"] == name
    return result


def test_capacity_vs_parameters_small(tmp_path):
    result = small("capacity-vs-parameters", tmp_path)
    assert (tmp_path / "capacity-vs-parameters" / "capacity_vs_parameters.png").exists()
    linear = {p.dim: p.capacity["1"] for p in result.points if p.kind == "linear"}
    mlp = {p.width: p.capacity["1"] for p in result.points if p.kind == "mlp"}
    assert linear == LINEAR_SMALL
    assert mlp == MLP_SMALL
    # capacity grows with the parameters
    assert min(linear[8]) > max(linear[4]) and min(mlp[16]) >= max(mlp[8])
    fit = result.fits["linear"]["1"]
    assert fit.ci_low <= fit.slope <= fit.ci_high
    assert fit.slope == pytest.approx(LINEAR_SLOPE_SMALL, abs=1e-6)
    assert "linear slope" in result.headline()


def test_recall_tradeoff_small(tmp_path):
    result = small("recall-tradeoff", tmp_path)
    points = {(p.d_model, p.mlp_multiple): p for p in result.points}
    # d = 16 stores the 16 facts with attention alone, and with an MLP; d = 4 does not
    assert points[16, 0].fact_acc == 1.0 and points[16, 0].mlp_ablated == 1.0
    assert points[16, 2].fact_acc == 1.0
    assert points[4, 0].fact_acc < 1.0 and points[4, 2].fact_acc < 1.0
    # one layer: without the values the subject never reaches the last position
    assert all(p.value_ablated < 0.5 for p in result.points)
    assert result.frontier == {"4": None, "16": 0}
    assert result.headline().startswith("16 facts: 2/4 grid points at 100%")


def test_recall_dynamics_small(tmp_path):
    result = small("recall-dynamics", tmp_path)
    assert result.baseline_loss == pytest.approx(BASELINE_SMALL, abs=1e-4)
    assert result.uniform_loss == pytest.approx(1.3862944, abs=1e-6)
    assert [r.seed for r in result.runs] == [0, 1]
    assert all(r.steps == [0, 10, 20, 30, 40, 50, 60] for r in result.runs)
    # at initialization the answer loss is far above the relation-only baseline
    assert all(r.answer_loss[0] > result.baseline_loss for r in result.runs)
    assert (tmp_path / "recall-dynamics" / "recall_dynamics.png").exists()
