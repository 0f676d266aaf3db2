"""Gradient dynamics of associative memories (birth/memories/problem.py, birth/memories/dynamics.py,
trained by training/memories.py) and the registered dynamics experiments."""

from __future__ import annotations

import json
import math

import pytest
import torch

from birth.base.seeds import generator
from birth.experiments.dynamics.common import descend, sphere_problem, stacked_problem
from birth.experiments.dynamics.phase_diagram import phase_diagram
from birth.experiments.dynamics.sharpness import sharpness_along
from birth.experiments.dynamics.transformer_wo2 import ov_margins
from birth.memories import dynamics as dyn
from birth.memories import problem as mp
from birth.memories.problem import sample_batches, token_frequencies
from tasks.zipf import zipf_probs


def _random_problem(n: int = 5, d: int = 3, m: int = 4, seed: int = 0) -> mp.MemoryProblem:
    gen = generator(seed, 1)
    return mp.MemoryProblem(
        mp.sphere_embeddings(n, d, gen),
        mp.sphere_embeddings(m, d, gen),
        zipf_probs(n, 1.0),
        torch.arange(n) % m,
    )


# --------------------------------------------------------------------------------------------
# model, loss, gradient


def test_gradient_matches_autograd_and_large_margins_keep_their_gradient(one_thread):
    problem = _random_problem()
    gen = generator(0, 2)
    for scale in (1.0, 40.0):  # at 40 the margins exceed the ~37 where 1 - softmax rounds to 0
        W = (scale * torch.randn(3, 3, generator=gen, dtype=torch.float64)).requires_grad_(True)
        z = mp.scores(W, problem.inputs, problem.outputs)
        direct = (problem.probs * (torch.logsumexp(z, -1) - z[torch.arange(5), problem.targets])).sum()
        (grad,) = torch.autograd.grad(direct, W)
        assert torch.allclose(mp.memory_gradient(W.detach(), problem), grad, atol=1e-12)
        assert math.isclose(
            float(mp.memory_loss(W.detach(), problem)), float(direct.detach()), rel_tol=1e-9, abs_tol=1e-12
        )
    # a margin of 50: the loss is e^{-50}-small but not 0, and so is the gradient
    one = mp.MemoryProblem(
        torch.eye(2, dtype=torch.float64),
        torch.eye(2, dtype=torch.float64),
        torch.tensor([1.0, 0.0], dtype=torch.float64),
        torch.arange(2),
    )
    W = torch.diag(torch.tensor([50.0, 0.0], dtype=torch.float64))
    assert math.isclose(float(mp.memory_loss(W, one)), math.exp(-50.0), rel_tol=1e-9)
    assert math.isclose(-float(mp.memory_gradient(W, one)[0, 0]), math.exp(-50.0), rel_tol=1e-9)


def test_batched_problems_train_like_separate_runs(one_thread):
    problems = [_random_problem(seed=s) for s in range(3)]
    stacked = mp.MemoryProblem(
        torch.stack([p.inputs for p in problems]),
        torch.stack([p.outputs for p in problems]),
        problems[0].probs,
        problems[0].targets,
    )
    lrs = torch.tensor([0.5, 5.0], dtype=torch.float64)[:, None]
    batched = descend(stacked, lrs, 30)
    for r, problem in enumerate(problems):
        for k, lr in enumerate((0.5, 5.0)):
            alone = descend(problem, lr, 30)
            assert torch.allclose(batched.loss[:, k, r], alone.loss, atol=1e-12)
            assert torch.allclose(batched.margins[:, k, r], alone.margins, atol=1e-10)


def test_margins_and_accuracy_by_brute_force(one_thread):
    problem = _random_problem(n=6, d=4, m=3)
    W = torch.randn(4, 4, generator=generator(3), dtype=torch.float64)
    z = mp.scores(W, problem.inputs, problem.outputs)
    for x in range(6):
        y = int(problem.targets[x])
        others = max(float(z[x, j]) for j in range(3) if j != y)
        assert math.isclose(float(mp.margins(W, problem)[x]), float(z[x, y]) - others, abs_tol=1e-12)
    recalled = [int(z[x].argmax()) == int(problem.targets[x]) for x in range(6)]
    expected = sum(float(problem.probs[x]) for x in range(6) if recalled[x])
    assert math.isclose(float(mp.accuracy(W, problem)), expected, abs_tol=1e-12)


def test_minibatch_sgd_is_seeded_and_unbiased(one_thread):
    problem = _random_problem()
    a = descend(problem, 1.0, 20, batch_size=4, seed=7)
    b = descend(problem, 1.0, 20, batch_size=4, seed=7)
    c = descend(problem, 1.0, 20, batch_size=4, seed=8)
    assert torch.equal(a.memory, b.memory)
    assert not torch.equal(a.memory, c.memory)
    weights = token_frequencies(sample_batches(problem.probs, 1, 1, 20_000, seed=9)[0, 0], 5)
    assert math.isclose(float(weights.sum()), 1.0, abs_tol=1e-12)
    # 20000 draws: each frequency within 5 standard deviations of p
    std = (problem.probs * (1 - problem.probs) / 20_000).sqrt()
    assert bool(((weights - problem.probs).abs() < 5 * std).all())


# --------------------------------------------------------------------------------------------
# 1. margins grow like log t with orthogonal embeddings


def test_orthogonal_margins_follow_the_scalar_recursion_and_grow_like_log_t(one_thread):
    n, m = 6, 3
    inputs = mp.orthonormal_embeddings(n, 8, generator(0, 4))
    outputs = mp.orthonormal_embeddings(m, 8, generator(0, 5))
    assert torch.allclose(inputs @ inputs.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    problem = mp.MemoryProblem(inputs, outputs, zipf_probs(n, 1.0), torch.arange(n) % m)
    steps = 3000
    record = dyn.log_spaced_steps(steps, 40)
    for lr in (1.0, 10.0):
        traj = descend(problem, lr, steps, eval_steps=record)
        exact = dyn.orthogonal_margin_recursion(steps, lr, problem.probs, m)[traj.steps]
        assert torch.allclose(traj.margins, exact, atol=1e-9)
        flow = torch.stack(
            [dyn.orthogonal_margin_theory(traj.steps, lr, float(p), m) for p in problem.probs], -1
        )
        assert torch.allclose(traj.margins[-1], flow[-1], atol=0.02)  # gradient flow at large t
        for x in range(n):
            fit = dyn.fit_log_growth(traj.steps, traj.margins[:, x], steps / 10)
            assert 0.9 < fit.slope < 1.2, (lr, x, fit.slope)  # log t growth, slope → 1
        # margins keep increasing at every step (no plateau for these η p)
        assert bool((traj.margins[1:] > traj.margins[:-1]).all())


def test_fit_log_growth_recovers_a_known_curve():
    t = torch.arange(1, 1000, dtype=torch.float64)
    fit = dyn.fit_log_growth(t, 2.5 * t.log() - 1.0, 10)
    assert math.isclose(fit.slope, 2.5, rel_tol=1e-10) and math.isclose(fit.intercept, -1.0, abs_tol=1e-9)


# --------------------------------------------------------------------------------------------
# 2. spikes and first steps


def test_count_spikes_on_constructed_series():
    assert dyn.count_spikes([5.0, 4.0, 3.0, 1.0, 0.5]) == 0
    assert dyn.count_spikes([1.0, 3.0, 1.0, 3.0, 1.0]) == 2  # two rises above 2 x the running minimum
    assert dyn.count_spikes([1.0, 3.0, 4.0, 5.0, 0.5]) == 1  # one run above the level is one spike
    assert dyn.count_spikes([1.0, 1.9, 1.0, 1.9]) == 0  # never above 2 x the minimum
    assert dyn.count_spikes([1.0, 1.6, 1.0], factor=1.5) == 1
    assert dyn.count_spikes([1e-9, 1e-7, 1e-9], floor=1e-3) == 0  # relative wobbles near 0
    assert dyn.count_spikes([1.0, math.nan, 0.5, math.inf]) == 2  # a non-finite loss is a spike
    with pytest.raises(ValueError):
        dyn.count_spikes([1.0], factor=1.0)


def test_first_step_at_and_stays():
    steps, values = [0, 1, 2, 3, 4], [0.0, 1.0, 0.5, 1.0, 1.0]
    assert dyn.first_step_at(steps, values, 1.0) == 1
    assert dyn.first_step_at(steps, values, 1.0, stays=True) == 3
    assert dyn.first_step_at(steps, [0.0, 0.5], 1.0) is None
    assert dyn.first_step_at(steps, values[:4], 1.0, stays=True) == 3


def test_large_steps_on_correlated_imbalanced_tokens_reach_accuracy_one_sooner_with_spikes(one_thread):
    problem = mp.two_token_problem(0.95, 0.75)
    first, spikes = {}, {}
    for lr in (1.0, 10.0):
        traj = descend(problem, lr, 200)
        perfect = mp.all_recalled(traj.margins, problem.probs).double()
        first[lr] = dyn.first_step_at(traj.steps, perfect, 1.0, stays=True)
        spikes[lr] = dyn.count_spikes(traj.loss)
    assert first[10.0] < first[1.0] and spikes[1.0] == 0 and spikes[10.0] >= 1


# --------------------------------------------------------------------------------------------
# 3. landscapes


def test_landscape_equals_the_direct_loss_and_plane_gd_equals_autograd(one_thread):
    problem = mp.two_token_problem(0.5, 0.75)
    basis = dyn.memory_basis(problem)
    g0 = torch.linspace(-3, 3, 7, dtype=torch.float64)
    g1 = torch.linspace(-2, 4, 5, dtype=torch.float64)
    loss, per_token = dyn.landscape(problem, basis, g0, g1)
    i, j = 2, 4
    W = g0[i] * torch.outer(problem.outputs[0], problem.inputs[0]) + g1[j] * torch.outer(
        problem.outputs[1], problem.inputs[1]
    )
    assert math.isclose(float(loss[i, j]), float(mp.memory_loss(W, problem)), rel_tol=1e-12)
    assert torch.allclose(per_token[:, i, j], mp.token_losses(W, problem), atol=1e-12)
    # with U = I, f*(x) = x: the margins on this plane are γ₀ - c γ₁ and γ₁ - c γ₀
    assert torch.allclose(mp.margins(W, problem), torch.stack([g0[i] - 0.5 * g1[j], g1[j] - 0.5 * g0[i]]))
    # one plane step equals one autograd step on γ
    path = dyn.plane_trajectory(problem, basis, 2.0, 1, start=(0.3, -0.2))
    gamma = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(mp.memory_loss(dyn.plane_matrices(basis, gamma), problem), gamma)
    assert torch.allclose(path[1], gamma.detach() - 2.0 * grad, atol=1e-12)
    diag = dyn.diagonal_basis(2)
    assert torch.equal(
        dyn.plane_matrices(diag, torch.tensor([2.0, 3.0])),
        torch.diag(torch.tensor([2.0, 3.0], dtype=torch.float64)),
    )


# --------------------------------------------------------------------------------------------
# 4. sharpness


def test_power_iteration_equals_the_dense_hessian_top_eigenvalue(one_thread):
    problem = _random_problem(n=5, d=3, m=4)
    W = torch.randn(3, 3, generator=generator(0, 6), dtype=torch.float64)
    dense = torch.autograd.functional.hessian(lambda w: mp.memory_loss(w, problem), W).reshape(9, 9)
    eig = torch.linalg.eigvalsh(dense)
    value, vec = dyn.top_hessian_eigenvalue(lambda w: mp.memory_loss(w, problem), W, iters=2000, tol=1e-14)
    assert math.isclose(float(value), float(eig.abs().max()), rel_tol=1e-6)
    assert math.isclose(float(value), float(eig[-1]), rel_tol=1e-6)  # convex: the largest is the top
    hv = dyn.hessian_vector_product(lambda w: mp.memory_loss(w, problem), W, vec)
    assert torch.allclose(hv, float(value) * vec, atol=1e-6 * float(value))
    # batched: every problem gets its own eigenvalue
    Ws = torch.stack([W, 2 * W, -W])
    values, _ = dyn.top_hessian_eigenvalue(
        lambda w: mp.memory_loss(w, problem), Ws, batch_dims=1, iters=2000, tol=1e-14
    )
    for k in range(3):
        dense_k = torch.autograd.functional.hessian(lambda w: mp.memory_loss(w, problem), Ws[k]).reshape(9, 9)
        assert math.isclose(float(values[k]), float(torch.linalg.eigvalsh(dense_k)[-1]), rel_tol=1e-6)


def test_sharpness_of_a_fitting_memory_decays_and_an_overflowing_one_sits_near_two_over_eta(one_thread):
    # 30 tokens, d = 2, f*(x) = x mod 2: more associations than W can store, a finite minimizer
    gen = generator(0, 0xE1, 30, 2, 2, 0)
    overflow = mp.MemoryProblem(
        mp.sphere_embeddings(30, 2, gen),
        torch.eye(2, dtype=torch.float64),
        zipf_probs(30, 1.0),
        torch.arange(30) % 2,
    )
    _, _, small = sharpness_along(overflow, 1.0, 200, tol=1e-5)
    _, _, large = sharpness_along(overflow, 10.0, 200, tol=1e-5)
    lam = float(small[-1])  # the minimizer's sharpness (converged at η = 1)
    assert 10.0 > 2.0 / lam  # η = 10 cannot settle at that minimizer ...
    assert 0.8 < float(large[100:].median()) * 10.0 / 2.0 < 2.0  # ... and hovers at the edge 2/η
    # two orthogonal tokens: the loss goes to 0 and so does the curvature
    fit = mp.MemoryProblem(
        torch.eye(2, dtype=torch.float64),
        torch.eye(2, dtype=torch.float64),
        torch.tensor([0.75, 0.25], dtype=torch.float64),
        torch.arange(2),
    )
    _, _, values = sharpness_along(fit, 10.0, 100, tol=1e-6)
    assert float(values[-1]) < 1e-2 * float(values[0])


# --------------------------------------------------------------------------------------------
# 5-7. forgetting, phase diagram, early stopping


def test_forgetting_events_and_early_stopping_on_constructed_series():
    recall = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1], [1, 0]], dtype=torch.bool)
    assert dyn.forgetting_events(recall).tolist() == [2, 1]
    stop = dyn.early_stopping([1, 2, 4, 8], [0.5, 0.3, 0.3, 0.4])
    assert (stop.best_step, stop.best_error, stop.final_error) == (2, 0.3, 0.4)


def test_phase_diagram_first_steps_equal_direct_runs(one_thread):
    cosines, p_first, lrs = [0.5, 0.9, 0.95, 1.0], [0.4, 0.75], [0.3, 3.0, 30.0]
    diagram = phase_diagram(cosines, p_first, lrs, 60)
    assert int(diagram.spikes.sum()) > 0  # the grid has spiking runs to compare
    for a, c in enumerate(cosines):
        for i, p in enumerate(p_first):
            for k, lr in enumerate(lrs):
                if c == 1.0:  # identical embeddings, different targets: never both recalled
                    assert int(diagram.first_step[a, i, k]) == -1
                    continue
                traj = descend(mp.two_token_problem(c, p), lr, 60)
                perfect = mp.all_recalled(traj.margins, traj.margins.new_tensor([p, 1 - p]))
                direct = dyn.first_step_at(traj.steps, perfect.double(), 1.0)
                assert int(diagram.first_step[a, i, k]) == (-1 if direct is None else direct)
                assert int(diagram.spikes[a, i, k]) == dyn.count_spikes(traj.loss, 2.0, 1e-3)
                assert math.isclose(
                    float(diagram.final_accuracy[a, i, k]), float(traj.accuracy[-1]), abs_tol=1e-12
                )


def test_under_parameterized_cross_entropy_overshoots_its_best_error(one_thread):
    # d = 2 < N = 20 (20 outputs on the circle), 16 draws: trained on, the error rises past its best
    problem = stacked_problem([sphere_problem(20, 2, 20, 1.5, 0, trial) for trial in range(16)])
    traj = descend(problem, 1.0, 2000, eval_steps=dyn.log_spaced_steps(2000, 40))
    stops = [dyn.early_stopping(traj.steps[1:], 1 - traj.accuracy[1:, r]) for r in range(16)]
    best = sum(s.best_error for s in stops) / 16
    final = sum(s.final_error for s in stops) / 16
    assert final > best + 0.05, (best, final)
    # with d = 32 >= N every token gets stored and training on never hurts
    wide = stacked_problem([sphere_problem(20, 32, 20, 1.5, 0, trial) for trial in range(4)])
    traj = descend(wide, 1.0, 2000, eval_steps=dyn.log_spaced_steps(2000, 40))
    assert float((1 - traj.accuracy[-1]).max()) == 0.0


# --------------------------------------------------------------------------------------------
# 8. the birth transformer


def test_ov_margins_match_the_transformer_lens_ov_circuit():
    from birth.models.transformer import ModelConfig, build_model

    model = build_model(ModelConfig(d_model=16), n_ctx=16, vocab_size=65, seed=3)
    scores = (model.W_E @ model.OV[1, 0].AB @ model.W_U).detach().double()  # [k, j], TL's own product
    n = scores.shape[0]
    expected = torch.tensor(
        [float(scores[k, k]) - max(float(scores[k, j]) for j in range(n) if j != k) for k in range(n)],
        dtype=torch.float64,
    )
    assert torch.allclose(ov_margins(model), expected, atol=1e-5)


# --------------------------------------------------------------------------------------------
# the registered experiments


def test_every_dynamics_experiment_runs_small_into_result_json_and_png(tmp_path, monkeypatch, one_thread):
    from birth.experiments import registry

    # only this family's modules: the test does not depend on (or pay for importing) the others
    names = registry.names("dynamics")
    assert set(names) == {
        "margins",
        "spikes",
        "landscape",
        "sharpness",
        "forgetting",
        "phase-diagram",
        "underparameterized",
        "transformer-wo2",
    }
    lines: list[str] = []
    for name in names:
        exp = registry.REGISTRY[name]
        assert exp.full is not None and exp.small is not None
        out = tmp_path / name
        result = registry.run_experiment(exp, exp.small(), out, progress=False, log=lines.append)
        data = json.loads((out / "result.json").read_text())
        assert data["experiment"] == name and data["result"] == json.loads(json.dumps(result.to_dict()))
        assert any(p.suffix == ".png" for p in out.iterdir()), name
        assert result.headline()
    assert sum(line.startswith(tuple(names)) and "(" in line for line in lines) >= len(names)


@pytest.mark.parametrize(
    ("name", "field", "value", "flag"),
    [
        ("margins", "dim", 2, "--dim"),
        ("spikes", "cosines", (1.0,), "--cosines"),
        ("sharpness", "lrs", (math.nan,), "--lrs"),
        ("forgetting", "outputs", "ball", "--outputs"),
        ("phase-diagram", "lr_max", 0.01, "--lr-max"),
        ("underparameterized", "dims", (0,), "--dims"),
        ("transformer-wo2", "fit_from", 1.0, "--fit-from"),
        ("landscape", "grid", 2, "--grid"),
    ],
)
def test_configs_reject_bad_values_naming_the_flag(name, field, value, flag, monkeypatch):
    import dataclasses

    from birth.experiments import registry

    registry.load("dynamics")
    config = registry.REGISTRY[name].config
    with pytest.raises(ValueError, match=flag):
        dataclasses.replace(config(), **{field: value})
