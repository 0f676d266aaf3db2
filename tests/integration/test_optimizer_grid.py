"""The optimizer-grid experiment: the trainer's grid settings against its closed-form gradient, the
relu memory, the claims table against a brute-force recomputation, and a grid split into points and
merged again."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import torch
import yaml

from birth.experiments import grid
from birth.experiments.registry import REGISTRY
from birth.experiments.scaling import optimizer_grid as og
from birth.memories.problem import from_task, sample_batches
from birth.memories.scaling_laws import draw_embeddings
from tasks.zipf import ZipfAssociations
from training.memories import MemoryTrainConfig, initial_memory, relu_features, train_memory

TASK = ZipfAssociations(100, 5, 2.0)
MODULE_TARGET = "birth.experiments.scaling.optimizer_grid:optimizer-grid"


def train_grid_memory(
    task,
    model,
    dim,
    num_trials,
    *,
    optimizer,
    lr,
    layer_norm,
    batches,
    eval_steps,
    seed,
    init="gaussian",
    threshold=0.5,
):
    """One model of the grid, trained as run_grid trains it: {"steps", "error" (R, C), "memory"}."""
    config = MemoryTrainConfig(
        optimizer,
        lr,
        batches.shape[2],
        batches.shape[1],
        layer_norm=layer_norm,
        features=model,
        relu_threshold=threshold,
        init=init,
        adam_scaling="width",
        eval_steps=tuple(eval_steps),
    )
    run = train_memory(from_task(task, dim, num_trials, seed=seed), config, seed=seed, batches=batches)
    return {"steps": run.steps, "error": run.error.T, "memory": run.memory}


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("init", ["zero", "gaussian"])
def test_grid_trainer_equals_the_closed_form_gradient(init, one_thread):
    """The matrix memory of the grid (autograd, SGD) takes the steps of the closed-form gradient
    W ← W − γ Uᵀ Gᵀ E on the same samples (float64: equal to rounding), from 0 or a Gaussian W."""
    batches = sample_batches(TASK.probs(), 2, 60, 4, seed=3)
    problem = from_task(TASK, 8, 2, seed=3, dtype=torch.float64)
    kwargs = dict(lr=1.0, batch_size=4, num_steps=60, init=init, eval_steps=(0, 20))
    ours = train_memory(
        problem, MemoryTrainConfig("sgd", adam_scaling="width", **kwargs), seed=3, batches=batches
    )
    closed = MemoryTrainConfig("sgd", gradient="closed-form", **kwargs)
    theirs = train_memory(problem, closed, seed=3, batches=batches)
    assert ours.steps.tolist() == theirs.steps.tolist() == [0, 20, 60]
    torch.testing.assert_close(ours.memory, theirs.memory, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.error, theirs.error, rtol=0, atol=1e-12)
    assert ours.error[-1].mean() < ours.error[0].mean()  # it learned something


@pytest.mark.parametrize(("model", "layer_norm"), [("matrix", True), ("learned", False)])
def test_grid_settings_from_zero_equal_the_plain_trainer_settings(model, layer_norm, one_thread):
    """With W = 0 and SGD the grid's settings (Adam scaling, Gaussian-init option) change nothing."""
    batches = sample_batches(TASK.probs(), 2, 60, 4, seed=3)
    ours = train_grid_memory(
        TASK,
        model,
        8,
        2,
        optimizer="sgd",
        lr=1.0,
        layer_norm=layer_norm,
        batches=batches,
        eval_steps=[0, 20, 60],
        seed=3,
        init="zero",
    )
    config = MemoryTrainConfig(
        optimizer="sgd",
        lr=1.0,
        batch_size=4,
        num_steps=60,
        layer_norm=layer_norm,
        features=model,
        eval_steps=(0, 20),
    )
    theirs = train_memory(from_task(TASK, 8, 2, seed=3), config, seed=3, batches=batches)
    assert ours["steps"].tolist() == theirs.steps.tolist() == [0, 20, 60]
    torch.testing.assert_close(ours["memory"], theirs.memory, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours["error"], theirs.error.T)
    assert ours["error"][:, -1].mean() < ours["error"][:, 0].mean()  # it learned something


def test_a_diverged_run_counts_as_wrong(one_thread):
    """SGD at lr 2 on the trilinear learned model blows up to NaN; NaN scores compare false, and
    would count every token as right, but a diverged run has error 1."""
    batches = sample_batches(TASK.probs(), 2, 60, 4, seed=3)
    out = train_grid_memory(
        TASK,
        "learned",
        8,
        2,
        optimizer="sgd",
        lr=2.0,
        layer_norm=False,
        batches=batches,
        eval_steps=[],
        seed=3,
        init="zero",
    )
    assert out["memory"].isnan().all()
    assert out["error"][:, -1].tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_relu_features_and_initial_memory_by_brute_force():
    inputs, _ = draw_embeddings(range(2), 7, 3, [5], seed=1, dtype=torch.float64).at(0)
    features = relu_features(inputs, 0.3)
    for r, i, j in itertools.product(range(2), range(7), range(7)):
        cos = float(inputs[r, i] @ inputs[r, j] / (inputs[r, i].norm() * inputs[r, j].norm()))
        assert features[r, i, j].item() == pytest.approx(max(cos - 0.3, 0.0), abs=1e-12)
    assert torch.allclose(
        torch.diagonal(features, dim1=1, dim2=2), torch.full((2, 7), 0.7, dtype=torch.float64)
    )

    w = initial_memory(3, 40, 50, "gaussian", seed=0, device="cpu", dtype=torch.float64)
    assert w.shape == (3, 40, 50)
    assert w.var().item() == pytest.approx(1 / 40, rel=0.05)  # N(0, 1/d) entries
    # a trial's draw depends on (seed, trial) only, not on how many trials are drawn
    assert torch.equal(initial_memory(1, 40, 50, "gaussian", 0, "cpu", torch.float64)[0], w[0])
    assert not torch.equal(w[0], w[1])
    assert not initial_memory(1, 4, 4, "zero", 0, "cpu", torch.float32).any()


def test_relu_memory_stores_more_than_the_matrix_at_small_d(one_thread):
    """At d = 10 the d × d matrix stores about d of the 100 associations; the thresholded memory's
    nearly orthogonal features store far more (the seed's exponential-capacity claim)."""
    batches = sample_batches(TASK.probs(), 3, 640, 16, seed=0)  # T = 10240
    kw = dict(optimizer="sgd", lr=100.0, layer_norm=False, batches=batches, eval_steps=[], seed=0)
    matrix = train_grid_memory(TASK, "matrix", 10, 3, **kw)["error"][:, -1]
    relu = train_grid_memory(TASK, "relu", 10, 3, threshold=0.5, **kw)["error"][:, -1]
    assert matrix.min() > 0.02  # over capacity (measured: 0.029 to 0.036)
    assert relu.max() < 0.25 * matrix.min()  # measured: 0.0034 to 0.0052


def _brute_force_claims(runs: list[og.GridRun]) -> dict[str, tuple[float, float, int]]:
    """(ratio, wins, settings) of each claim, by explicit loops over the grid axes."""
    err = {
        (r.model, r.optimizer, r.layer_norm, r.d, r.lr, r.batch_size, r.num_samples): r.error_mean
        for r in runs
    }
    axes = [sorted({k[i] for k in err}) for i in range(7)]

    def compare(pairs):
        worse = sum(a for a, _ in pairs)
        better = sum(b for _, b in pairs)
        wins = sum(1.0 if b < a else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
        return worse / better, wins, len(pairs)

    out = {}
    lr_pairs, batch_pairs, adam_pairs, ln_pairs = [], [], [], []
    for m, o, ln, d, b, t in itertools.product(axes[0], axes[1], axes[2], axes[3], axes[5], axes[6]):
        lr_pairs.append((err[(m, o, ln, d, axes[4][0], b, t)], err[(m, o, ln, d, axes[4][-1], b, t)]))
    for m, o, ln, d, lr, t in itertools.product(axes[0], axes[1], axes[2], axes[3], axes[4], axes[6]):
        batch_pairs.append((err[(m, o, ln, d, lr, axes[5][-1], t)], err[(m, o, ln, d, lr, axes[5][0], t)]))

    def best(m, o, ln, d, b, t):
        return min(err[(m, o, ln, d, lr, b, t)] for lr in axes[4])

    for m, ln, d, b, t in itertools.product(axes[0], axes[2], axes[3], axes[5], axes[6]):
        adam_pairs.append((best(m, "sgd", ln, d, b, t), best(m, "adam", ln, d, b, t)))
    for m, o, d, b, t in itertools.product(axes[0], axes[1], axes[3], axes[5], axes[6]):
        ln_pairs.append((best(m, o, False, d, b, t), best(m, o, True, d, b, t)))
    out["large learning rates are better"] = compare(lr_pairs)
    out["small batches are better"] = compare(batch_pairs)
    out["Adam works best"] = compare(adam_pairs)
    out["LayerNorm helps"] = compare(ln_pairs)
    same_lr = [
        (err[(m, o, False, d, lr, b, t)], err[(m, o, True, d, lr, b, t)])
        for m, o, d, lr, b, t in itertools.product(axes[0], axes[1], axes[3], axes[4], axes[5], axes[6])
    ]
    out["LayerNorm helps (same lr)"] = compare(same_lr)
    return out


def test_claims_table_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    runs = []
    for m, o, ln, d, lr, b, t in itertools.product(
        ("matrix", "relu"), ("sgd", "adam"), (False, True), (10, 30), (0.1, 1.0, 10.0), (16, 64), (1024,)
    ):
        e = float(torch.rand((), generator=gen)) * 0.2 + 0.01
        runs.append(og.GridRun(m, o, ln, d, lr, b, t, e, 0.0, [e]))
    # a tie, counted as half a win
    runs[0] = dataclasses.replace(runs[0], error_mean=runs[2].error_mean)
    expected = _brute_force_claims(runs)
    claims = {c.claim: c for c in og.claims_of(runs)}
    assert set(claims) == set(expected)
    for name, (ratio, wins, settings) in expected.items():
        assert claims[name].ratio == pytest.approx(ratio, rel=1e-12)
        assert claims[name].wins == pytest.approx(wins, rel=1e-12)
        assert claims[name].settings == settings
    # within a model: only that model's settings
    only_relu = [r for r in runs if r.model == "relu"]
    assert claims["LayerNorm helps"].by["relu"] == pytest.approx(
        _brute_force_claims(only_relu)["LayerNorm helps"][0], rel=1e-12
    )
    # a claim that cannot be measured (one batch size) says so
    one_batch = [r for r in runs if r.batch_size == 16]
    small = {c.claim: c for c in og.claims_of(one_batch)}["small batches are better"]
    assert small.ratio is None and small.settings == 0
    # zero error on the better side: an infinite ratio, shown as such
    zero = [dataclasses.replace(r, error_mean=0.0) if r.lr == 10.0 else r for r in runs]
    assert {c.claim: c for c in og.claims_of(zero)}["large learning rates are better"].ratio == math.inf


def test_split_grid_merges_into_the_whole_grid(tmp_path, one_thread):
    """The small grid run whole, and run as two `birth grid` points (SGD, Adam) then combined,
    give the same runs and the same claims table."""
    small = og.OptimizerGridConfig(
        dims=(10,),
        lrs=(0.1, 10.0),
        batch_sizes=(16, 64),
        num_samples=(256, 1024),
        seeds=2,
        models=("matrix", "relu"),
    )
    whole = og.run_optimizer_grid(small, tmp_path / "whole", log=lambda _: None, progress=False)
    assert len(whole.runs) == 2 * 2 * 2 * 1 * 2 * 2 * 2
    assert all(0.0 <= r.error_mean <= 1.0 and len(r.errors) == 2 for r in whole.runs)

    spec = grid.parse_spec(
        {
            "experiment": MODULE_TARGET,
            "fixed": {
                "dims": [10],
                "lrs": [0.1, 10],
                "batch_sizes": [16, 64],
                "num_samples": [256, 1024],
                "seeds": 2,
                "models": ["matrix", "relu"],
            },
            "grid": {"optimizers": [["sgd"], ["adam"]]},
            "out": str(tmp_path / "grid"),
            "executor": {"cluster": "debug", "threads": 1},
        }
    )
    assert [p.name for p in spec.points] == ["optimizers=sgd", "optimizers=adam"]
    report = grid.run_grid(spec, log=lambda _: None)
    assert len(report.ok) == 2, report.failed
    merged = og.combine([spec.results])
    key = lambda r: (r.model, r.optimizer, r.layer_norm, r.d, r.lr, r.batch_size, r.num_samples)  # noqa: E731
    assert sorted(merged.runs, key=key) == sorted(whole.runs, key=key)
    assert merged.claims == whole.claims
    assert og.main(["combine", str(spec.results), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "combined.json").is_file() and (
        tmp_path / "merged" / "optimizer_grid.png"
    ).is_file()


def test_shipped_spec_covers_the_reference_grid():
    raw = yaml.safe_load((REPO / "scripts" / "grids" / "optimizer_grid.yaml").read_text())
    assert raw["experiment"] == "optimizer-grid"
    # the module form: this test must not depend on every registered module importing
    spec = grid.parse_spec({**raw, "experiment": MODULE_TARGET})
    full = REGISTRY["optimizer-grid"].full()
    assert spec.base == "full"
    assert len(spec.points) == 3 * 2 * 2 * 7
    configs = [dataclasses.replace(full, **p.overrides) for p in spec.points]
    covered = {
        (m, o, ln, d)
        for c in configs
        for m, o, ln, d in itertools.product(c.models, c.optimizers, c.layer_norms, c.dims)
    }
    assert covered == set(itertools.product(full.models, full.optimizers, full.layer_norms, full.dims))
    assert full.dims == (10, 20, 50, 100, 200, 500, 1000) and full.seeds == 10
    assert full.lrs == (0.1, 1.0, 10.0, 100.0) and full.batch_sizes == (16, 64, 256, 1024)
    assert full.num_samples == (1024, 10240, 102400)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lrs": (0.1, float("nan"))}, "--lrs must be"),
        ({"dims": ()}, "--dims must be"),
        ({"num_samples": (1000,)}, "--num-samples 1000 is not a multiple of --batch-sizes 16"),
        ({"models": ("matrix", "mlp")}, "--models must be"),
        ({"layer_norms": (0, 1)}, "--layer-norms must be"),
        ({"optimizers": ("sign",)}, "--optimizers must be"),
        ({"relu_threshold": 1.0}, "--relu-threshold must be"),
        ({"init": "ones"}, "--init must be"),
        ({"seeds": 0}, "--seeds must be"),
        ({"device": "tpu"}, "--device must be"),
    ],
)
def test_config_errors_name_the_flag(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        og.OptimizerGridConfig(**changes)
