"""The scaling-law experiments of birth/experiments/scaling/ through the registry, on small configs."""

import dataclasses
import json
import math

import pytest
import torch

from birth.base.io import OutputError
from birth.experiments.registry import REGISTRY, load, names, run_experiment
from birth.experiments.scaling.d_and_t import run_d_and_t
from birth.experiments.scaling.heatmap import run_heatmap
from birth.experiments.scaling.learned_embeddings import (
    LearnedEmbeddingsConfig,
    largest_reaching,
    run_learned_embeddings,
    smallest_reaching,
)
from birth.experiments.scaling.memory_matrices import run_memory_matrices
from birth.experiments.scaling.per_token_q import PerTokenQConfig, run_per_token_q
from birth.memories.problem import from_task
from birth.memories.scaling_laws import coefficient_scores, errors_from_scores
from tasks.zipf import ZipfAssociations
from training.memories import MemoryTrainConfig, train_memory


def get(name: str):
    """A scaling or capacity experiment (only those families' modules are imported)."""
    load("scaling", "capacity")
    return REGISTRY[name]


pytestmark = pytest.mark.usefixtures("one_thread")


def silent(line: str) -> None:
    """A `log` that drops the experiment's printed lines."""


def test_every_scaling_and_capacity_experiment_runs_small_and_measures_its_claim(tmp_path):
    ran = names("scaling", "capacity")
    assert {
        "d-and-T",
        "heatmap",
        "schemes",
        "sgd",
        "optimizers",
        "memory-matrices",
        "learned-embeddings",
        "per-token-q",
        "capacity",
    } <= set(ran)
    results = {}
    for name in ran:
        exp = get(name)
        out = tmp_path / name
        result = results[name] = run_experiment(exp, exp.small(), out, progress=False, log=silent)
        assert isinstance(result.headline(), str) and result.headline()
        record = json.loads((out / "result.json").read_text())
        assert record["experiment"] == name and record["result"]
        assert any(p.suffix == ".png" and p.stat().st_size > 0 for p in out.iterdir()), name
        assert isinstance(exp.full(), exp.config)  # the --full size builds (and validates)
    # sgd's small size: 2 trials, 150 steps, float32
    out = tmp_path / "sgd"
    for name in ("sgd.png", "q_gamma.png", "q_gamma.pdf"):
        assert (out / name).exists()
    runs = json.loads((out / "result.json").read_text())["result"]["runs"]
    assert len(runs) == 4 and all(r["sgd_error"][-1] < r["sgd_error"][1] for r in runs)

    # each experiment's headline numbers at its small size: the claim it measures
    d_fit = results["d-and-T"].fits[0]  # error vs d at T = inf, theory -(alpha - 1)
    assert abs(d_fit.fit.slope - d_fit.theory) < 0.1 and d_fit.fit.ci_low <= d_fit.theory <= d_fit.fit.ci_high
    schemes = results["schemes"]
    for record in (schemes.fits[2], schemes.power_fits[0]):  # q = 1{x <= d/8}, q = p^0.5
        assert abs(record.fit.slope - record.theory) < 0.1, record
    assert results["heatmap"].fraction_q1_better == pytest.approx(2 / 9, abs=1e-6)
    gaps = {(r.d, r.batch, r.lr): r.mean_abs_gap for r in results["sgd"].runs}
    assert gaps[(100, 1, 1.0)] < 0.01 and gaps[(100, 16, 1.0)] < 0.01  # d = N: the q update holds
    assert gaps[(10, 1, 1.0)] > gaps[(100, 1, 1.0)]  # d = N/10: the memories interfere
    best = results["optimizers"].best()
    assert (best.optimizer, best.lr, best.batch) == ("adam", 10.0, 16)
    assert best.final_error_mean == pytest.approx(0.0649, abs=1e-4)
    sgd_matrices = [m for m in results["memory-matrices"].matrices if m.label.startswith("SGD")]
    assert sgd_matrices[-1].error < sgd_matrices[0].error  # training on stores more
    learned = results["learned-embeddings"]
    assert learned.d_learned == 8 and learned.d_random is None  # learned E, U reach the tolerance first
    (per_token,) = results["per-token-q"].per_gamma
    assert per_token.correlation > 0.9 and per_token.median_relative_gap < 0.2
    claims = {c.claim: c.ratio for c in results["optimizer-grid"].claims}
    assert all(ratio > 1 for ratio in claims.values()), claims  # the seed's four claims hold
    capacity = results["capacity"].memories
    assert 0.5 < capacity["linear"].fit.slope < 1.2  # n* ∝ d (theory 1)
    assert max(capacity["nearest"].capacity) > max(capacity["linear"].capacity)
    # trained memories: N* per seed at 100% accuracy (seeded), growing with the parameter count
    trained = results["capacity-vs-parameters"]
    linear = {p.dim: p.capacity["1"] for p in trained.points if p.kind == "linear"}
    mlp = {p.width: p.capacity["1"] for p in trained.points if p.kind == "mlp"}
    assert linear == {4: [7, 6], 8: [15, 15]} and mlp == {8: [12, 7], 16: [21, 24]}
    assert min(linear[8]) > max(linear[4]) and min(mlp[16]) > max(mlp[8])
    linear_fit, mlp_fit = trained.fits["linear"]["1"], trained.fits["mlp"]["1"]
    # d x d memory: N* ~ d^2 / (2 log N*), a slope under 1 in d^2; the MLP's about 1
    assert 0.5 < linear_fit.slope < 1.0 and linear_fit.ci_low <= linear_fit.slope <= linear_fit.ci_high
    assert 0.8 < mlp_fit.slope < 1.5
    assert all(0.5 < c < 1.0 for c in trained.linear_constant["1"])  # N* ln N* / d^2 near the sharp 1/2
    assert "linear slope" in trained.headline()


def test_schemes_writes_files_prints_slopes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "schemes"
    config = dataclasses.replace(get("schemes").config(), trials=2, float32=True)
    lines: list[str] = []
    run_experiment(get("schemes"), config, out, progress=False, log=lines.append)
    printed = "\n".join(lines)
    assert "slope" in printed and "theory -0.250" in printed and str(out) in printed
    for name in ("result.json", "schemes.png", "schemes.pdf"):
        assert (out / name).stat().st_size > 0
    record = json.loads((out / "result.json").read_text())
    assert len(record["result"]["fits"]) == 3 and record["config"]["trials"] == 2
    before = (out / "result.json").read_bytes()
    with pytest.raises(OutputError, match="--overwrite"):
        run_experiment(get("schemes"), config, out, progress=False, log=silent)
    assert (out / "result.json").read_bytes() == before


@pytest.mark.parametrize(
    "name, change, flag",
    [
        ("schemes", dict(trials=1), "--trials"),
        ("schemes", dict(top_fraction=0.0), "--top-fraction"),
        ("schemes", dict(top_fraction=math.nan), "--top-fraction"),
        ("schemes", dict(rhos=(math.inf,)), "--rhos"),
        ("d-and-T", dict(alpha=math.nan), "--alpha"),
        ("d-and-T", dict(seed=-1), "--seed"),
        ("d-and-T", dict(seed=2**63), "--seed"),
        ("d-and-T", dict(device="tpu"), "--device"),
        ("heatmap", dict(min_counts=(1,)), "--min-counts"),
        ("heatmap", dict(d_range=(100, 10)), "--d-range"),
        ("sgd", dict(steps=0), "--steps"),
        ("optimizers", dict(samples=100), "--samples"),
        ("optimizers", dict(lrs=(math.nan,)), "--lrs"),
        ("memory-matrices", dict(checkpoints=(5000,)), "--checkpoints"),
        ("learned-embeddings", dict(tolerance=math.inf), "--tolerance"),
        ("per-token-q", dict(d=50), "--d"),
        ("per-token-q", dict(gammas=(-1.0,)), "--gammas"),
    ],
)
def test_bad_configs_name_the_flag(name, change, flag):
    with pytest.raises(ValueError, match=flag):
        dataclasses.replace(get(name).config(), **change)


def test_cuda_asked_without_cuda_is_refused_at_run_time():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from birth.base.runtime import resolve_device

    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_extra_heatmap_schemes_leave_q0_q1_unchanged(tmp_path):
    small = get("heatmap").small()
    alone = run_heatmap(
        dataclasses.replace(small, min_counts=(), rhos=()), tmp_path, log=silent, progress=False
    )
    both = run_heatmap(small, tmp_path, log=silent, progress=False)
    assert both.schemes[:2] == alone.schemes and len(both.schemes) == 4
    for s in alone.schemes:
        assert both.mean_error[s] == alone.mean_error[s]
    assert math.isclose(sum(both.best_fraction.values()), 1.0)


def test_d_and_t_overlay_uses_the_fitted_constant(tmp_path):
    result = run_d_and_t(get("d-and-T").small(), tmp_path, log=silent, progress=False)
    assert (
        result.theory_c is not None and result.theory_c.c_low <= result.theory_c.c <= result.theory_c.c_high
    )
    predicted = torch.tensor(result.predicted_error)
    assert predicted.shape == (len(result.sizes) + 1, len(result.dims))
    # more data never raises the prediction; T = inf is the memory term alone
    assert (predicted[1:] <= predicted[:-1] + 1e-12).all()


def test_memory_matrices_sgd_errors_match_the_trained_memory(tmp_path):
    config = get("memory-matrices").small()
    result = run_memory_matrices(config, tmp_path, log=silent, progress=False)
    schemes, sgd = result.matrices[:6], result.matrices[6:]
    assert len(sgd) == len(set(config.checkpoints) | {config.samples})
    # a scheme memory is stored on the target entries only
    target = torch.tensor(result.target)
    for m in schemes:
        q = torch.tensor(m.coefficients)
        assert (q[target == 0] == 0).all() and (q >= 0).all()
    # the SGD matrices' errors are those train_memory measures on the real W at the same steps
    task = ZipfAssociations(config.num_inputs, config.num_outputs, config.alpha)
    train = MemoryTrainConfig("sgd", config.lr, 1, config.samples, eval_steps=config.checkpoints)
    problem = from_task(task, config.d, 1, seed=config.seed, dtype=torch.float64)
    trained = train_memory(problem, train, seed=config.seed)
    assert [m.error for m in sgd] == pytest.approx(trained.error[:, 0].tolist(), abs=1e-12)
    # and the scores are u_yᵀ W e_x of that W
    last = torch.tensor(sgd[-1].scores, dtype=torch.float64)
    direct = trained.outputs[0] @ trained.memory[0] @ trained.inputs[0].T
    assert torch.allclose(last, direct, atol=1e-9)
    _, err = errors_from_scores(
        coefficient_scores(
            torch.tensor(sgd[-1].coefficients, dtype=torch.float64),
            trained.inputs[0],
            trained.outputs[0],
        ),
        task.targets(),
        task.probs(),
        0,
    )
    assert float(err) == pytest.approx(sgd[-1].error)


def test_learned_embeddings_beat_random_ones_at_equal_d(tmp_path):
    # M = 5 classes in d = 3: random embeddings with a trained W cannot separate N = 30 tokens,
    # learned ones cluster the inputs by class
    config = LearnedEmbeddingsConfig(
        trials=2, num_inputs=30, alpha=1.0, dims=(3,), outputs_grid=(5,), d_for_outputs=3, steps=400
    )
    result = run_learned_embeddings(config, tmp_path, log=silent, progress=False)
    learned, random = result.vs_d.learned_mean[0], result.vs_d.random_mean[0]
    assert learned < 0.05 and random > 0.2, (learned, random)
    assert result.vs_outputs.learned_mean == result.vs_d.learned_mean  # the same point, twice


def test_capacity_gain_rules():
    assert smallest_reaching([1, 2, 5, 10], [0.5, 0.2, 0.01, 0.0], 0.05) == 5
    assert smallest_reaching([1, 2], [0.5, 0.2], 0.05) is None
    assert largest_reaching([2, 5, 10, 20], [0.0, 0.01, 0.2, 0.0], 0.05) == 5
    assert largest_reaching([2, 5], [0.3, 0.0], 0.05) is None


def test_per_token_q_follows_f_for_small_steps(tmp_path):
    config = PerTokenQConfig(num_inputs=20, d=60, steps=400, gammas=(0.1,))
    (record,) = run_per_token_q(config, tmp_path, log=silent, progress=False).per_gamma
    assert len(record.counts) == len(record.coefficients) == 20
    # quasi-orthogonal (d = 3N) and small steps: the decoupled prediction holds token by token
    assert record.median_relative_gap < 0.1 and record.correlation > 0.95, record
    # tokens never sampled keep a zero coefficient, and F(0) = 0
    for n, q, f in zip(record.counts, record.coefficients, record.predicted):
        if n == 0:
            assert abs(q) < 1e-12 and f == 0
