"""The claims of Birth of a Transformer as registered experiments (families transformer, theory):
every small config runs through `run_experiment` and writes its result and figures; short runs of
the quick preset show the direction of each training claim; bad configs name their flag."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from birth.base.config_io import config_from_dict
from birth.base.io import OutputError
from birth.experiments.common import RUNS, experiment_train
from birth.experiments.registry import get, names, run_experiment
from birth.experiments.theory import GradientStepsConfig, LemmaConfig, MemoriesConfig
from birth.experiments.transformer import LayersConfig, LossConfig, OrderConfig
from training.config import PAPER, QUICK, TrainConfig

TRAINING = ("layers", "triggers", "order", "loss", "ood")
THEORY = ("memories", "gradient-steps", "lemma")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """Every registered transformer and theory experiment at its small size: name -> (result, out, log)."""
    root = tmp_path_factory.mktemp("reproduce")
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors (see the one_thread fixture)
    try:
        for name in names("transformer", "theory"):
            lines: list[str] = []
            result = run_experiment(name, get(name).small(), root / name, progress=False, log=lines.append)
            runs[name] = (result, root / name, lines)
    finally:
        torch.set_num_threads(threads)
    return runs


def test_the_claims_are_registered_with_a_small_and_a_full_size():
    assert [n for n in names("transformer") if n in TRAINING] == list(TRAINING)
    assert set(THEORY) <= set(names("theory"))
    for name in TRAINING + THEORY:
        exp = get(name)
        assert isinstance(exp.small(), exp.config) and isinstance(exp.full(), exp.config)
    for name in TRAINING:
        full, default = get(name).full(), get(name).config()
        # --full: the paper preset (5 seeds where there are seeds); the default: the quick preset
        assert full.train.replace(checkpoint_every=1) == PAPER.replace(checkpoint_every=1)
        assert default.train.replace(checkpoint_every=1) == QUICK.replace(checkpoint_every=1)
        assert getattr(full, "seeds", 5) == 5 and getattr(default, "seeds", 2) == 2


def test_every_small_experiment_writes_its_result_config_and_figures(small_runs):
    for name, (result, out, lines) in small_runs.items():
        payload = json.loads((out / "result.json").read_text())
        assert payload["experiment"] == name
        assert payload["result"] == json.loads(json.dumps(result.to_dict()))
        # the written config reads back as the config that ran
        assert config_from_dict(get(name).config, payload["config"]) == get(name).small()
        assert result.headline() in lines[-1]
        assert any(out.glob("*.png")) and any(out.glob("*.pdf")), name


def test_training_runs_change_only_their_arm_field(small_runs):
    arms = {
        "layers": ("n_layers", {"2L-seed0": 2, "1L-seed0": 1}),
        "triggers": ("trigger_mode", {"fixed": "fixed", "random": "random"}),
        "order": ("seed", {"seed0": 0}),
        "loss": ("loss_on", {"outputs": "outputs", "all": "all"}),
        "ood": ("output_mode", {"uniform": "uniform", "bigram": "bigram"}),
    }
    for name, (key, values) in arms.items():
        _, out, _ = small_runs[name]
        base = get(name).small().train
        assert sorted(p.name for p in (out / RUNS).iterdir()) == sorted(values)
        for run, value in values.items():
            written = TrainConfig.from_dict(json.loads((out / RUNS / run / "config.json").read_text()))
            assert written == base.replace(**{key: value}), (name, run)


def test_layers_small_table(small_runs):
    result, out, lines = small_runs["layers"]
    payload = json.loads((out / "result.json").read_text())["result"]
    assert set(payload["table"]) == {"2L", "1L"}
    for row in payload["table"].values():
        assert 0.0 <= row["icl_acc_mean"] <= 1.0 and len(row["icl_acc"]) == 1
    assert (out / "layers.png").stat().st_size > 0
    assert "2 layers" in lines[-1]


def test_triggers_order_and_ood_small_runs(small_runs):
    triggers, out, _ = small_runs["triggers"]
    assert set(triggers.modes) == {"fixed", "random"}
    for mode in triggers.modes.values():
        assert all((out / path).is_file() for path in mode.heatmaps) and len(mode.heatmaps) == 2
        for pattern in mode.attention:  # causal softmax rows: sum 1, nothing above the diagonal
            for t, row in enumerate(pattern):
                assert math.isclose(sum(row), 1.0, rel_tol=1e-5) and not any(row[t + 1 :])
    assert (out / "attention_side_by_side.png").stat().st_size > 0

    order, out, _ = small_runs["order"]
    assert set(order.crossings) == {"W_OV2", "W_KQ2", "W_KQ1"}
    # --overwrite re-runs the experiment's training runs from scratch and keeps other files
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        run_experiment("order", get("order").small(), out, progress=False, log=lambda _: None)
    again = run_experiment(
        "order", get("order").small(), out, overwrite=True, progress=False, log=lambda _: None
    )
    assert again.crossings == order.crossings and again.per_seed == order.per_seed
    assert (out / "notes.txt").read_text() == "mine"

    ood, out, _ = small_runs["ood"]
    for train in ("uniform", "bigram"):
        for evaluated in ("uniform", "bigram"):
            assert 0.0 <= ood.icl_acc[train][evaluated] <= 1.0
        # in distribution, the held-out batch is the one the training loop evaluated last
        summary = json.loads((out / RUNS / train / "summary.json").read_text())
        assert ood.icl_acc[train][train] == summary["final/eval/icl_acc"]


def test_theory_small_runs(small_runs):
    memories, _, _ = small_runs["memories"]
    assert len(memories.rows) == 2 * 2  # one seed, with and without the fix, two scales
    assert memories.best["with_fix"][0] in (1.0, 30.0)

    steps, _, _ = small_runs["gradient-steps"]
    assert [r.label for r in steps.runs] == ["paper", "reverse", "orthogonal"]
    config = get("gradient-steps").small()
    assert steps.run("orthogonal").d_model == 256  # 3 * 65 + 2 * 24 = 243, rounded up to 128
    assert steps.run("orthogonal").n_sequences == config.orthogonal_factor * config.sequences
    reverse = steps.run("reverse").records
    assert reverse[1].grad_norm == 0.0 and reverse[2].grad_norm == 0.0  # W_O² = 0 blocks both

    lemma, _, _ = small_runs["lemma"]
    n = lemma.n_tokens
    assert math.isclose(lemma.summary["orthonormal"].relative_error, 1 / n, rel_tol=1e-9)
    assert lemma.summary["sampled"].n_samples == 200 * n
    assert len(lemma.summary["population"].measured) == n


def test_reproduce_refuses_a_non_empty_out_dir(tmp_path):
    out = tmp_path / "lemma"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        run_experiment("lemma", None, out, log=lambda _: None)
    run_experiment("lemma", None, out, overwrite=True, log=lambda _: None)
    payload = json.loads((out / "result.json").read_text())
    assert payload["result"]["summary"]["population"]["argmax_accuracy"] == 1.0
    assert (out / "lemma.png").is_file() and (out / "keep.txt").is_file()


def _short(config_type):
    """100 steps of the quick preset on one seed, evaluated every 50 steps."""
    train = experiment_train(QUICK).replace(steps=100, eval_every=50)
    fields = {f.name for f in dataclasses.fields(config_type)}
    return config_type(train=train, device="cpu", **({"seeds": 1} if "seeds" in fields else {}))


def test_reproduce_layers_short_quick_run_separates_two_from_one_layer(tmp_path):
    result = run_experiment("layers", _short(LayersConfig), tmp_path / "layers", progress=False)
    # 100 steps of the quick preset: the induction head is forming in 2 layers, 1 layer plateaus
    assert result.table["2L"].icl_acc_mean > result.table["1L"].icl_acc_mean + 0.1


def test_reproduce_loss_all_tokens_learns_the_bigrams(tmp_path):
    result = run_experiment("loss", _short(LossConfig), tmp_path / "loss", progress=False)
    outputs, every = result.arms["outputs"].run.final, result.arms["all"].run.final
    # the loss on all tokens trains the bigram model too; the loss on outputs only does not
    assert every["eval/bigram_loss"] < outputs["eval/bigram_loss"] - 1.0
    assert (tmp_path / "loss" / "loss.png").stat().st_size > 0


def test_configs_name_the_flag_they_reject():
    cases = [
        (lambda: LayersConfig(seeds=0), "--seeds"),
        (lambda: OrderConfig(device="gpu"), "--device"),
        (lambda: LossConfig(train=QUICK.replace(n_triggers=0, loss_on="all")), "--n-triggers"),
        (lambda: MemoriesConfig(train=TrainConfig().replace(n_layers=1)), "--n-layers"),
        (lambda: MemoriesConfig(scales=(1.0, math.nan)), "--scales"),
        (lambda: MemoriesConfig(scales=()), "--scales"),
        (lambda: GradientStepsConfig(train=TrainConfig().replace(variant="full")), "--variant"),
        (lambda: GradientStepsConfig(sequences=0), "--sequences"),
        (lambda: LemmaConfig(n_tokens=64, d=32), "--d"),
        (lambda: LemmaConfig(eta=math.inf), "--eta"),
        (lambda: LemmaConfig(seed=-1), "--seed"),
    ]
    for make, flag in cases:
        with pytest.raises(ValueError, match=flag):
            make()
