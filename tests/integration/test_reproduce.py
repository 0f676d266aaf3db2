"""The claims of Birth of a Transformer as registered experiments (families transformer, theory):
every small config runs through `run_experiment` and writes its result and figures; short runs of
the quick preset show the direction of each training claim; bad configs name their flag."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

from birth.base.config_io import config_from_dict
from birth.base.curves import first_crossing, mean_std
from birth.base.io import OutputError
from birth.experiments.common import RUNS, eval_batch, experiment_train
from birth.experiments.registry import FAMILIES, commands, family_modules, get, names, run_experiment
from birth.experiments.theory.gradient_steps import GradientStepsConfig
from birth.experiments.theory.lemma import LemmaConfig
from birth.experiments.theory.memories import MemoriesConfig
from birth.experiments.theory.toy import toy_draws
from birth.experiments.transformer.common import PAPER_SEEDS, THRESHOLD
from birth.experiments.transformer.layers import LayersConfig
from birth.experiments.transformer.loss import LossConfig
from birth.experiments.transformer.order import OrderConfig, paper_order
from birth.experiments.transformer.recall_common import parameter_counts
from birth.experiments.transformer.recall_tradeoff import GridPoint, RecallTradeoffConfig, storage_thresholds
from birth.models.targets import MEMORIES
from tasks.shakespeare import load_stats
from training.config import PAPER, QUICK, TrainConfig

TRAINING = ("layers", "triggers", "order", "loss", "ood")
SEEDED = ("layers", "order")  # the claims repeated over seeds (the others have no --seeds)
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
    assert set(TRAINING) <= set(names("transformer"))
    assert set(THEORY) <= set(names("theory"))
    # every family's experiments, found in its sub-package, listed family by family
    assert names() == [n for family in FAMILIES for n in names(family)]
    assert names("transformer", "theory") == names("transformer") + names("theory")
    assert all(get(n).family == "transformer" for n in TRAINING)
    for name in TRAINING + THEORY:
        exp = get(name)
        assert isinstance(exp.small(), exp.config) and isinstance(exp.full(), exp.config)
    for name in TRAINING:
        full, default = get(name).full(), get(name).config()
        # --full: the paper preset (5 seeds where there are seeds); the default: the quick preset
        assert full.train.replace(checkpoint_every=1) == PAPER.replace(checkpoint_every=1)
        assert default.train.replace(checkpoint_every=1) == QUICK.replace(checkpoint_every=1)
        if name in SEEDED:
            assert (full.seeds, default.seeds) == (PAPER_SEEDS, 2) == (5, 2)
        else:
            assert not hasattr(full, "seeds") and not hasattr(default, "seeds")


def test_the_registry_finds_each_familys_modules_and_the_help_imports_no_torch():
    # one module per experiment, found in its family's sub-package
    for family in FAMILIES:
        modules = family_modules(family)
        for name in names(family):
            assert get(name).run.__module__ in modules, name
    assert {"birth.experiments.theory.lemma", "birth.experiments.transformer.layers"} <= {
        m for family in FAMILIES for m in family_modules(family)
    }
    # every experiment command runs the families the registry groups under it
    assert commands()["reproduce"] == ("transformer", "theory")
    assert [f for group in commands().values() for f in group] == list(FAMILIES)
    # `birth --help` lists the commands without importing torch (the experiment modules do)
    code = "import sys, birth.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_every_small_experiment_writes_its_result_config_and_figures(small_runs):
    for name, (result, out, lines) in small_runs.items():
        payload = json.loads((out / "result.json").read_text())
        assert payload["experiment"] == name
        assert payload["result"] == json.loads(json.dumps(result.to_dict()))
        # the written config reads back as the config that ran
        assert config_from_dict(get(name).config, payload["config"]) == get(name).small()
        assert result.headline() in lines[-1]
        assert any(out.glob("*.png")) and any(out.glob("*.pdf")), name


def test_recall_tradeoff_small_places_the_facts(small_runs):
    result, _, _ = small_runs["recall-tradeoff"]
    points = {(p.d_model, p.mlp_multiple): p for p in result.points}
    # d = 16 stores the 16 facts with attention alone, and with an MLP; d = 4 does not
    assert points[16, 0].fact_acc == 1.0 and points[16, 0].mlp_ablated == 1.0
    assert points[16, 2].fact_acc == 1.0
    assert points[4, 0].fact_acc < 1.0 and points[4, 2].fact_acc < 1.0
    # one layer: without the values the subject never reaches the last position
    assert all(p.value_ablated < 0.5 for p in result.points)
    assert result.frontier == {"d=4 2x2": None, "d=16 2x8": 0}
    # the attention alone (4 d^2 = 1024 parameters at d = 16) stores them; no MLP rescues d = 4
    assert (result.attention_alone, result.mlp_beside_short_attention) == (1024, None)
    assert result.headline().startswith("16 facts: 2/4 grid points at 100%; attention alone from 1024")


def test_recall_tradeoff_grid_of_heads_and_head_widths_and_its_thresholds():
    config = RecallTradeoffConfig(dims=(6, 32), head_counts=(1, 4), head_widths=(2, 8), mlp_multiples=(0, 1))
    assert config.attentions()[:2] == [(6, 1, 2), (6, 1, 8)] and len(config.attentions()) == 8
    assert RecallTradeoffConfig(dims=(8, 16)).attentions() == [(8, 2, None), (16, 2, None)]  # d / heads
    counts = parameter_counts(32, 1, attention_width=4 * 2)
    assert counts == {"attention": 4 * 32 * 8, "value_path": 2 * 32 * 8, "mlp": 2 * 32 * 32}

    def point(heads, width, k, acc):
        return GridPoint(32, k, heads, width, parameter_counts(32, k, heads * width), acc, 1.0, acc, 0.0)

    points = [point(1, 2, 0, 0.4), point(1, 2, 1, 1.0), point(4, 8, 0, 1.0), point(4, 8, 1, 1.0)]
    # attention alone: 4 x 8 heads (4096 parameters); the MLP: m = d beside the 1 x 2 heads
    assert storage_thresholds(points) == (4096, 2048)
    assert storage_thresholds(points[:1]) == (None, None)


def test_recall_dynamics_small_starts_above_the_relation_only_baseline(small_runs):
    result, out, _ = small_runs["recall-dynamics"]
    assert result.baseline_loss == pytest.approx(1.1105722, abs=1e-4)  # relation-only loss of the facts
    assert result.uniform_loss == pytest.approx(1.3862944, abs=1e-6)
    assert [r.seed for r in result.runs] == [0, 1]
    assert all(r.steps == [0, 10, 20, 30, 40, 50, 60] for r in result.runs)
    # at initialization the answer loss is far above the relation-only baseline
    assert all(r.answer_loss[0] > result.baseline_loss for r in result.runs)
    assert (out / "recall_dynamics.png").exists()


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


def _summary(out, run: str) -> dict:
    return json.loads((out / RUNS / run / "summary.json").read_text())


def test_layers_small_table(small_runs):
    result, out, lines = small_runs["layers"]
    payload = json.loads((out / "result.json").read_text())["result"]
    assert set(payload["table"]) == {"2L", "1L"}
    for key, row in payload["table"].items():
        # the table is the final in-context accuracy of each depth's runs, as their runs report it
        finals = [_summary(out, f"{key}-seed0")["final/eval/icl_acc"]]
        assert row["icl_acc"] == finals and len(row["icl_acc"]) == 1
        assert (row["icl_acc_mean"], row["icl_acc_std"]) == pytest.approx(mean_std(finals))
        # 4 steps of a d=16 model: no induction head yet at either depth (measured 0.0 and 0.0)
        assert row["icl_acc_mean"] < 0.2
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
    # the crossings are each run's first evaluation with the probe >= 0.9, the order count theirs
    for seed_order in order.per_seed:
        history = [
            json.loads(line) for line in (out / RUNS / f"seed{seed_order.seed}" / "metrics.jsonl").open()
        ]
        steps = [row["step"] for row in history]
        for memory in MEMORIES:
            curve = [row[f"probes/{memory}"] for row in history]
            assert seed_order.order[memory] == first_crossing(steps, curve, THRESHOLD)
    assert order.paper_order_count == sum(paper_order(s.order) for s in order.per_seed)
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
    stats, base = load_stats(), get("ood").small().train
    for train in ("uniform", "bigram"):
        for evaluated in ("uniform", "bigram"):
            # an accuracy over the counter >= 2 targets of the evaluated law's held-out batch
            _, batch = eval_batch(base.replace(output_mode=evaluated), stats)
            targets = int((batch.counter >= 2).sum())
            assert targets > 0
            assert ood.icl_acc[train][evaluated] * targets == pytest.approx(
                round(ood.icl_acc[train][evaluated] * targets), abs=1e-4
            )
        # in distribution, the held-out batch is the one the training loop evaluated last
        summary = json.loads((out / RUNS / train / "summary.json").read_text())
        assert ood.icl_acc[train][train] == summary["final/eval/icl_acc"]


def test_theory_small_runs(small_runs):
    memories, _, _ = small_runs["memories"]
    assert len(memories.rows) == 2 * 2  # one seed, with and without the fix, two scales
    assert memories.best["with_fix"][0] in (1.0, 30.0)
    # d = 32: the key-query memories are recalled exactly, the 65 pairs of W_OV2 cross-talk (0.62)
    # and the accuracy stays far from the paper's 99% (0.12 at best), which needs d = 256
    for row in memories.rows:
        assert row.probes["W_KQ2"] == row.probes["W_KQ1"] == 1.0 and 0.3 < row.probes["W_OV2"] < 1.0
        assert row.icl_acc < 0.5
    assert not memories.all_probes_one
    assert memories.best["with_fix"][1] == max(r.icl_acc for r in memories.rows if r.first_position_fix)

    steps, _, _ = small_runs["gradient-steps"]
    assert [r.label for r in steps.runs] == ["paper", "reverse", "orthogonal"]
    config = get("gradient-steps").small()
    assert steps.run("orthogonal").d_model == 256  # 3 * 65 + 2 * 24 = 243, rounded up to 128
    assert steps.run("orthogonal").n_sequences == config.orthogonal_factor * config.sequences
    reverse = steps.run("reverse").records
    assert reverse[1].grad_norm == 0.0 and reverse[2].grad_norm == 0.0  # W_O² = 0 blocks both
    assert reverse[2].probes == reverse[0].probes  # so nothing moved
    # the paper order: each step raises the recall of the memory it steps (init 0.015, 0.2, 0.04;
    # measured 0.05, 0.6, 0.17); orthogonal embeddings recover W_KQ2 better (0.8)
    paper = steps.run("paper").records
    for i, memory in enumerate(("W_OV2", "W_KQ2", "W_KQ1"), start=1):
        assert paper[i].matrix == memory and paper[i].probes[memory] > paper[0].probes[memory]
    assert paper[2].probes["W_KQ2"] >= 0.4  # chance: 1/5 triggers
    assert steps.run("orthogonal").records[2].probes["W_KQ2"] >= paper[2].probes["W_KQ2"]

    three, _, _ = small_runs["three-steps"]
    theorem = three.run("theorem")
    # the theorem's setting: a working induction head after three steps, even at T = 16
    assert theorem.recalls[:2] == [1.0, 1.0] and theorem.recalls[2] >= 0.9
    assert theorem.icl_acc >= three.target == 0.9

    lemma, _, _ = small_runs["lemma"]
    n = lemma.n_tokens
    assert math.isclose(lemma.summary["orthonormal"].relative_error, 1 / n, rel_tol=1e-9)
    assert lemma.summary["sampled"].n_samples == 200 * n
    assert len(lemma.summary["population"].measured) == n
    # v_kᵀ W₁ u_z vs (η/N) 1{f*(z)=k}: the stored pairs are recovered (argmax) and the error is the
    # O(1/√d) cross-talk of N(0, I/d) embeddings at d = 64 (0.47 η/N), below the stored η/N
    population = lemma.summary["population"]
    assert population.argmax_accuracy == 1.0 and 1 / n < population.relative_error < 0.6

    noisy, _, _ = small_runs["noisy-lemma"]
    # the population step is the formula exactly; the noise cancels with orthonormal embeddings;
    # the cross-talk shrinks with d (theory d^-1/2; two widths at N = 8: measured d^-0.79)
    assert noisy.summary["population"].formula_error < 1e-9
    orthonormal = noisy.summary["orthonormal"]
    assert math.isclose(orthonormal.relative_error, 1 / noisy.n_tokens, rel_tol=1e-9)
    assert orthonormal.noise_spread < 1e-9
    assert noisy.widths[1].relative_error < noisy.widths[0].relative_error and noisy.slope < 0

    toy, _, _ = small_runs["toy"]
    draws = toy_draws(get("toy").small())
    assert (toy.mean, toy.std) == (float(draws.mean()), float(draws.std()))


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
