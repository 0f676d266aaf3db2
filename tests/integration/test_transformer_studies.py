"""The training studies (birth/experiments/transformer_studies.py): conditions, readings, small runs."""

from __future__ import annotations

import json

import pytest

from birth.experiments import transformer_studies as ts
from birth.experiments.registry import get, names, run_experiment
from training.schedule import parse_schedule, parse_targets

STUDIES = ("joint", "n-triggers", "trigger-frequency", "held-out-outputs", "order-readings")


def test_the_studies_are_registered():
    assert set(STUDIES) <= set(names("transformer"))
    for name in STUDIES:
        assert get(name).small is not None and get(name).full is not None


# --- joint: the schedule of each condition ------------------------------------------------------


def test_condition_schedules():
    assert ts.condition_changes("joint", 100, "phases") == {}
    only = ts.condition_changes("only_W_KQ1", 100, "phases")
    assert parse_targets(only["init_at_target"]) == ("W_O2", "W_K2")
    assert {str(w) for w in parse_schedule(only["schedule"])} == {"W_O2:off", "W_K2:off"}
    top = parse_schedule(ts.condition_changes("top_down", 100, "phases")["schedule"])
    assert [str(w) for w in top] == ["W_O2:0-100", "W_K2:100-200", "W_K1:200"]
    bottom = parse_schedule(ts.condition_changes("bottom_up", 50, "cumulative")["schedule"])
    assert [str(w) for w in bottom] == ["W_K1:0", "W_K2:50", "W_O2:100"]
    # at every step of the phases exactly one matrix trains
    for step in range(300):
        assert sum(w.active(step) for w in top) == 1


def test_joint_config_checks():
    with pytest.raises(ValueError, match="--phase-steps"):
        ts.JointConfig(train=ts._tiny(steps=5), phase_steps=2)
    with pytest.raises(ValueError, match="--conditions"):
        ts.JointConfig(train=ts._tiny(), phase_steps=2, conditions=("sideways",))
    with pytest.raises(ValueError, match="--schedule"):
        ts.JointConfig(train=ts._tiny(schedule="W_K1:3"), phase_steps=2)


def test_other_configs_check_their_fields():
    with pytest.raises(ValueError, match="--ks"):
        ts.NTriggersConfig(train=ts._tiny(), ks=(0,))
    with pytest.raises(ValueError, match="--n-triggers"):
        ts.NTriggersConfig(train=ts._tiny(), ks=(65,))
    with pytest.raises(ValueError, match="--offsets"):
        ts.TriggerFrequencyConfig(train=ts._tiny(), offsets=(61,))
    with pytest.raises(ValueError, match="--margin-fraction"):
        ts.OrderReadingsConfig(train=ts._tiny(), margin_fraction=1.5)
    with pytest.raises(ValueError, match="--arms"):
        ts.OrderReadingsConfig(train=ts._tiny(), arms=())


# --- readings and orders ------------------------------------------------------------------------


def test_reading_keys_and_the_paper_order():
    assert ts.reading_keys("recall_all")["W_KQ2"] == "recall_all/W_KQ2"
    assert ts.reading_keys("recall_all")["W_OV2"] == "probes/W_OV2"
    assert set(ts.reading_keys("margin").values()) == {"margin/W_OV2", "margin/W_KQ2", "margin/W_KQ1"}
    assert ts.is_paper_order({"W_OV2": 10, "W_KQ2": 30, "W_KQ1": 90})
    assert ts.is_paper_order({"W_OV2": 10, "W_KQ2": 30, "W_KQ1": None})  # W_KQ1 last, not yet reached
    assert not ts.is_paper_order({"W_OV2": 30, "W_KQ2": 30, "W_KQ1": 90})  # a tie is no order
    assert not ts.is_paper_order({"W_OV2": 80, "W_KQ2": 30, "W_KQ1": None})
    assert not ts.is_paper_order({"W_OV2": None, "W_KQ2": 30, "W_KQ1": 40})
    assert (
        ts.order_text({"W_OV2": 80, "W_KQ2": 30, "W_KQ1": None})
        == "W_KQ2 (30) → W_OV2 (80); not reached: W_KQ1"
    )


def test_margin_level_is_the_half_rise():
    assert ts.margin_level([-0.5, 0.0, 0.3, 0.5], 0.5, 0.1) == pytest.approx(0.0)
    assert ts.margin_level([0.0, 0.2, 0.4], 0.25, 0.1) == pytest.approx(0.1)
    assert ts.margin_level([-0.5, -0.45, -0.46], 0.5, 0.1) is None  # barely moved: not learned


def test_crossings_over_seeds():
    c = ts.Crossings.of([40, None, 20])
    assert (c.median, c.reached) == (30, 2) and c.text() == "30 (2/3 seeds)"
    assert ts.Crossings.of([None]).text() == "never"


# --- small runs end to end ----------------------------------------------------------------------


def run_small(name, tmp_path, **changes):
    import dataclasses

    config = dataclasses.replace(get(name).small(), **changes)
    result = run_experiment(name, config, tmp_path / name, progress=False, log=lambda *_: None)
    saved = json.loads((tmp_path / name / "result.json").read_text())
    assert saved["experiment"] == name and list((tmp_path / name).glob("*.png"))
    assert isinstance(result.headline(), str) and result.headline()
    return result


def test_joint_small_holds_the_frozen_matrices(tmp_path):
    result = run_small("joint", tmp_path, conditions=("joint", "only_W_KQ1", "top_down"))
    assert 0.0 <= result.target_icl <= 1.0
    only = result.conditions["only_W_KQ1"].runs[0]
    for key in ("norm/W_O2", "norm/W_K2"):  # held at their targets: never move
        assert len(set(only.curve(key))) == 1 and only.curve(key)[0] > 0
    assert only.curve("norm/W_K1")[0] == 0.0 and only.curve("norm/W_K1")[-1] > 0.0
    top = result.conditions["top_down"].runs[0]  # phases of 2 steps, evaluations every 2 steps
    assert top.steps() == [0, 2, 4, 6]
    o2, k2, k1 = (top.curve(f"norm/{m}") for m in ("W_O2", "W_K2", "W_K1"))
    assert o2[1] > 0 and o2[1] == o2[2] == o2[3]  # W_O2 trained in [0, 2) only
    assert k1[:3] == [0.0, 0.0, 0.0]  # W_K1 waits for its turn at step 4


def test_data_studies_small(tmp_path):
    n = run_small("n-triggers", tmp_path, ks=(2,))
    assert [(p.mode, p.k) for p in n.points] == [("fixed", 2), ("random", 2)]
    f = run_small("trigger-frequency", tmp_path)
    assert [p.offset for p in f.points] == [0, 10]
    assert f.points[0].unigram_mass > f.points[1].unigram_mass  # the most frequent triggers first
    held = run_small("held-out-outputs", tmp_path)
    run = held.runs[0]
    assert run.steps == [3, 6] and set(run.icl) == set(run.score2) == set(run.pred_attended) == {
        "train",
        "test",
    }
    assert all(0.0 <= v <= 1.0 for v in held.final_ov2.values())


def test_order_readings_small(tmp_path, monkeypatch):
    # the paper arm is the paper preset cut to --paper-steps; a tiny stand-in keeps the test fast
    monkeypatch.setattr(ts, "PAPER", ts._tiny(trigger_mode="fixed", steps=99))
    result = run_small("order-readings", tmp_path, arms=("quick", "paper"))
    assert result.arms["quick"].trigger_mode == "random" and result.arms["paper"].trigger_mode == "fixed"
    assert result.arms["paper"].runs[0].steps() == [0, 1]
    for arm in result.arms.values():
        assert set(arm.orders) == set(ts.READINGS)
        run = arm.runs[0]
        for reading in ts.READINGS:
            for memory, key in ts.reading_keys(reading).items():
                level = arm.levels[reading][0][memory]
                want = None if level is None else ts.first_crossing(run.steps(), run.curve(key), level)
                assert arm.orders[reading][0][memory] == want
            if reading != "margin":
                assert set(arm.levels[reading][0].values()) == {ts.THRESHOLD}
