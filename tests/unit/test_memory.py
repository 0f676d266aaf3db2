"""Linear associative memory: schemes, exact error vs brute force, vectorization, scaling slope."""

import numpy as np
import pytest
import torch

from birth.memories.scaling_laws import (
    _sparse_enough,
    coefficient_scores,
    draw_embeddings,
    fit_power_law,
    fit_theory_constant,
    memory_coefficients,
    memory_errors,
    memory_scores_bruteforce,
    memory_term,
    predicted_error,
    q_frequency,
    q_power,
    q_seen,
    q_sgd,
    q_threshold,
    scheme_coefficients,
    sgd_scheme_table,
    storage_weights,
    unseen_mass,
)
from tasks.zipf import ZipfAssociations

COUNTS = torch.tensor([5.0, 0.0, 3.0, 3.0, 1.0, 0.0, 8.0])  # T = 20


pytestmark = pytest.mark.usefixtures("one_thread")


def test_schemes_on_hand_made_counts():
    assert torch.allclose(q_frequency(COUNTS), COUNTS / 20)
    assert q_seen(COUNTS).tolist() == [1, 0, 1, 1, 1, 0, 1]
    expected = torch.where(COUNTS > 0, (COUNTS / 20) ** 0.5, torch.zeros(7))
    assert torch.allclose(q_power(COUNTS, 0.5), expected)
    assert torch.equal(q_power(COUNTS, 0.0), q_seen(COUNTS))
    # top 3 seen: counts 8 (x=6), 5 (x=0), then a tie 3/3 between x=2 and x=3 -> the smaller index
    assert q_threshold(COUNTS, 3).tolist() == [1, 0, 1, 0, 0, 0, 1]
    assert q_threshold(COUNTS, 4).tolist() == [1, 0, 1, 1, 0, 0, 1]
    # more slots than seen tokens: only seen tokens are stored
    assert q_threshold(COUNTS, 7).tolist() == q_seen(COUNTS).tolist()
    weighted = q_threshold(COUNTS, 2, rho=1.0)
    assert torch.allclose(weighted, torch.tensor([0.25, 0, 0, 0, 0, 0, 0.4]))
    # one P per d: shape (len(P), N), nested sets
    per_d = q_threshold(COUNTS, [1, 2, 5])
    assert per_d.shape == (3, 7) and per_d.sum(-1).tolist() == [1, 2, 5]


def test_sgd_scheme_iterates_the_update():
    gamma, m = 0.7, 5
    q, table = 0.0, sgd_scheme_table(6, gamma, m)
    for n in range(1, 7):
        q = q + gamma / (1 + np.exp(q) / m)
        assert table[n].item() == pytest.approx(q)
    assert table[0] == 0 and (table.diff() > 0).all()
    got = q_sgd(COUNTS, gamma, m)
    assert torch.allclose(got, sgd_scheme_table(8, gamma, m)[COUNTS.long()].float())
    assert torch.equal(storage_weights(COUNTS, "sgd", gamma=gamma, num_outputs=m), got)
    # a fresh iteration per call: a different γ first does not change the result
    sgd_scheme_table(10, 10.0, m)
    assert torch.equal(sgd_scheme_table(6, gamma, m), table)
    with pytest.raises(ValueError):
        q_sgd(torch.tensor([0.5, 0.25]), gamma, m)


@pytest.mark.parametrize("kind", ["gaussian", "sphere"])
@pytest.mark.parametrize("mode", ["truncate", "independent"])
def test_exact_error_matches_bruteforce_loop(kind, mode):
    task = ZipfAssociations(25, 4, 1.3)
    probs, targets = task.probs(), task.targets()
    dims = [12, 3, 7, 30]  # unsorted on purpose
    counts = task.nested_counts([4, 40], num_trials=3, seed=2)  # (3, 2, N)
    flat = torch.cat([q_frequency(counts), q_seen(counts)], 1)[:, :, None]  # (3, 4, 1, N)
    per_d = q_threshold(counts, [2, 1, 3, 4])  # (3, 2, 4, N): small support, block accumulation
    wide = q_threshold(counts, [20, 25, 22, 24])  # large support: one product per d
    shared = probs[None, None, None]  # (1, 1, 1, N): one q for every trial
    out = memory_errors(
        [flat, per_d, wide, shared],
        targets,
        probs,
        dims,
        num_trials=3,
        seed=4,
        num_outputs=4,
        kind=kind,
        mode=mode,
        head_size=5,
        trial_chunk=2,
    )
    assert out["error"].shape == (3, 4 + 2 + 2 + 1, 4)
    assert _sparse_enough(per_d, sorted(dims)) and not _sparse_enough(wide, sorted(dims))  # both paths
    emb = draw_embeddings(range(3), 25, 4, dims, seed=4, kind=kind, mode=mode)
    for r in range(3):
        for k, d in enumerate(dims):
            e, u = emb.at(k)
            qs = list(flat[r, :, 0]) + list(per_d[r, :, k]) + list(wide[r, :, k]) + [shared[0, 0, 0]]
            for b, q in enumerate(qs):
                scores = memory_scores_bruteforce(q, targets, e[r], u[r])
                assert e[r].shape == (25, d)
                wrong = [int(scores[:, x].argmax()) != int(targets[x]) for x in range(25)]
                error = sum(float(probs[x]) for x in range(25) if wrong[x])
                head = sum(float(probs[x]) for x in range(5) if wrong[x])
                assert out["error"][r, b, k].item() == pytest.approx(error, abs=1e-12)
                assert out["head"][r, b, k].item() == pytest.approx(head, abs=1e-12)
    assert torch.allclose(out["head"] + out["tail"], out["error"])


def test_results_do_not_depend_on_chunking_and_seed_matters():
    task = ZipfAssociations(40, 5, 2.0)
    w = task.probs()[None, None, None]
    args = (task.targets(), task.probs(), [5, 20])
    a = memory_errors(w, *args, num_trials=5, seed=1, trial_chunk=2)["error"]
    b = memory_errors(w, *args, num_trials=5, seed=1, trial_chunk=5)["error"]
    c = memory_errors(w, *args, num_trials=5, seed=2, trial_chunk=5)["error"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_one_hot_embeddings_with_all_tokens_seen_give_zero_error():
    # with d >= N and orthonormal e_x, u_y, q = 1{seen} recalls every seen token
    n_inputs, n_outputs = 12, 4
    task = ZipfAssociations(n_inputs, n_outputs, 1.0)
    counts = torch.ones(n_inputs)
    q = q_seen(counts)
    eye = torch.eye(16, dtype=torch.float64)
    scores = memory_scores_bruteforce(q, task.targets(), eye[:n_inputs], eye[:n_outputs])
    assert torch.equal(scores.argmax(0), task.targets())
    # unseen tokens are not recalled (a tie at 0 counts as wrong): one unseen -> error p(x)
    counts[7] = 0
    scores = memory_scores_bruteforce(q_seen(counts), task.targets(), eye[:n_inputs], eye[:n_outputs])
    assert (scores.argmax(0) != task.targets()).sum() <= 1 and scores[:, 7].abs().max() == 0


def test_zero_memory_is_always_wrong():
    task = ZipfAssociations(10, 3, 1.0)
    out = memory_errors(torch.zeros(1, 1, 1, 10), task.targets(), task.probs(), [4], num_trials=2, seed=0)
    assert torch.allclose(out["error"], torch.ones_like(out["error"]))


def test_q_equals_p_slope_near_theory():
    # figure 3, small: the error of q = p decays like d^{-(α-1)/(2α)} = d^{-1/4} for α = 2
    task = ZipfAssociations(1000, 5, 2.0)
    dims = [10, 18, 32, 56, 100, 178, 316, 562, 1000]
    err = memory_errors(
        task.probs()[None, None, None],
        task.targets(),
        task.probs(),
        dims,
        num_trials=12,
        seed=0,
        dtype=torch.float32,
    )["error"][:, 0]
    fit = fit_power_law(dims, err, num_boot=200)
    theory = -(2.0 - 1) / (2 * 2.0)
    assert abs(fit.slope - theory) < 0.1, fit
    assert fit.ci_low <= fit.slope <= fit.ci_high


def test_fit_power_law_recovers_a_known_slope():
    xs = [1, 2, 4, 8, 16]
    errors = torch.tensor([[3.0 * x**-0.5 for x in xs]] * 4)
    fit = fit_power_law(xs, errors, num_boot=50)
    assert fit.slope == pytest.approx(-0.5) and fit.intercept == pytest.approx(np.log(3.0))


def test_bad_inputs_raise():
    task = ZipfAssociations(10, 3, 1.0)
    with pytest.raises(ValueError):
        memory_errors(torch.ones(10), task.targets(), task.probs(), [4], num_trials=1, seed=0)
    with pytest.raises(ValueError):
        memory_errors(-torch.ones(1, 1, 1, 10), task.targets(), task.probs(), [4], num_trials=1, seed=0)
    with pytest.raises(ValueError):
        draw_embeddings([0], 5, 2, [3], seed=0, kind="cube")
    with pytest.raises(ValueError):
        storage_weights(COUNTS, "nope")
    with pytest.raises(ValueError):
        storage_weights(COUNTS, "power")


def test_storage_weights_dispatch():
    assert torch.equal(storage_weights(COUNTS, "threshold", top=3), q_threshold(COUNTS, 3))
    assert torch.equal(storage_weights(COUNTS, "power", rho=0.3), q_power(COUNTS, 0.3))
    assert torch.equal(storage_weights(COUNTS, "seen"), q_seen(COUNTS))
    assert torch.equal(storage_weights(COUNTS, "frequency"), q_frequency(COUNTS))


def test_all_computation_paths_agree_with_bruteforce():
    # truncated Gaussian: d-independent q (block prefix), sparse d-dependent q (block prefix over
    # all larger d), dense d-dependent q (one pass per d) must all equal the explicit W
    from birth.memories import scaling_laws as memory

    task = ZipfAssociations(40, 3, 1.0)
    probs, targets, dims = task.probs(), task.targets(), [4, 9, 17]
    dense = torch.stack([probs ** (d / 10) for d in dims])[None, None]  # every token stored
    sparse = q_threshold(probs, [1, 2, 4])[None, None]
    flat = probs[None, None, None]
    assert not memory._sparse_enough(dense, dims) and memory._sparse_enough(sparse, dims)
    out = memory_errors([flat, sparse, dense], targets, probs, dims, num_trials=2, seed=9)["error"]
    emb = draw_embeddings(range(2), 40, 3, dims, seed=9)
    for r in range(2):
        for k in range(len(dims)):
            e, u = emb.at(k)
            for b, q in enumerate([flat[0, 0, 0], sparse[0, 0, k], dense[0, 0, k]]):
                pred = memory_scores_bruteforce(q, targets, e[r], u[r]).argmax(0)
                assert out[r, b, k].item() == pytest.approx(
                    float((probs * (pred != targets)).sum()), abs=1e-12
                )


def test_draw_storage_is_reused_in_truncate_mode_and_ignored_for_independent_draws():
    args = ([0, 1], 30, 4, [3, 8])
    fresh = draw_embeddings(*args, seed=5, dtype=torch.float32)
    storage = torch.empty(2 * 8 * 34)
    reused = draw_embeddings(*args, seed=5, dtype=torch.float32, out=storage)
    assert reused.inputs.data_ptr() == storage.data_ptr()
    assert torch.equal(reused.inputs, fresh.inputs) and torch.equal(reused.outputs, fresh.outputs)
    # independent draws of several widths each keep their own numbers
    independent = draw_embeddings(*args, seed=5, mode="independent", dtype=torch.float32, out=storage)
    expected = draw_embeddings(*args, seed=5, mode="independent", dtype=torch.float32)
    for k in range(2):
        assert torch.equal(independent.inputs[k], expected.inputs[k])


def test_seen_at_least_s_times():
    assert q_seen(COUNTS, 3).tolist() == [1, 0, 1, 1, 0, 0, 1]
    assert q_seen(COUNTS, 6).tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert torch.equal(storage_weights(COUNTS, "seen", min_count=3), q_seen(COUNTS, 3))
    with pytest.raises(ValueError):
        q_seen(COUNTS, 0)


def test_orthonormal_sgd_table_is_the_exact_coefficient_of_one_hot_sgd():
    # orthonormal embeddings: the scores of x are its column Q[:, x], and one SGD step on x adds
    # γ (1{y = f*(x)} − softmax(Q[:, x])) to it; the table follows its target entry exactly
    gamma, m = 0.8, 4
    column = torch.zeros(m, dtype=torch.float64)
    table = sgd_scheme_table(12, gamma, m, orthonormal=True)
    slides = sgd_scheme_table(12, gamma, m)
    for n in range(1, 13):
        column = column + gamma * (torch.eye(m, dtype=torch.float64)[0] - torch.softmax(column, 0))
        assert table[n].item() == pytest.approx(column[0].item(), rel=1e-12)
    assert (slides[1:] != table[1:]).all()  # the slides' update is an approximation of it


def test_memory_term_against_a_loop_and_its_scale_invariance():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([1.0, 0.5, 0.2, 0.0], dtype=torch.float64)
    dims, c = [2, 5, 40], 1.3
    expected = []
    for d in dims:
        norm2 = sum(float(v) ** 2 for v in q)
        expected.append(sum(float(p) for p, v in zip(probs, q) if float(v) ** 2 * d < c * norm2))
    assert memory_term(q, probs, dims, c).tolist() == pytest.approx(expected)
    assert torch.equal(memory_term(7 * q, probs, dims, c), memory_term(q, probs, dims, c))
    assert memory_term(torch.zeros(4), probs, [10], c).item() == pytest.approx(1.0)  # nothing stored
    per_d = torch.stack([q, q, torch.tensor([1.0, 0, 0, 0])])  # one q per d
    assert memory_term(per_d, probs, dims, c)[2].item() == pytest.approx(0.6)
    with pytest.raises(ValueError):
        memory_term(q, probs, dims, float("nan"))


def test_unseen_mass_against_enumerating_every_sample_sequence():
    import itertools

    probs = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    size = 4
    exact = 0.0
    for sequence in itertools.product(range(3), repeat=size):
        weight = float(np.prod([probs[x] for x in sequence]))
        exact += weight * sum(float(probs[x]) for x in range(3) if x not in sequence)
    assert unseen_mass(probs, [size], exact=True).item() == pytest.approx(exact, rel=1e-12)
    # e^{-Tp} bounds (1-p)^T from above; T = inf sees everything
    assert unseen_mass(probs, [size]).item() >= exact
    assert unseen_mass(probs, [float("inf")]).item() == 0
    q = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    total = predicted_error(q, probs, [3, 30], 0.5, [size, float("inf")])
    assert total.shape == (2, 2)
    assert total[1].tolist() == memory_term(q, probs, [3, 30], 0.5).tolist()
    assert total[0, 1].item() == pytest.approx(
        min(1.0, memory_term(q, probs, [30], 0.5).item() + unseen_mass(probs, [size]).item())
    )


def test_theory_constant_is_recovered_and_gives_the_q_equals_p_slope():
    task = ZipfAssociations(20_000, 5, 2.0)
    probs = task.probs()
    dims = [10, 30, 100, 300, 1000]
    measured = memory_term(probs, probs, dims, 0.2)
    fit = fit_theory_constant(probs, probs, dims, measured)
    assert fit.c_low <= 0.2 <= fit.c_high and fit.log10_rms == pytest.approx(0.0, abs=1e-12)
    # with the square, q = p loses x > (d / c')^{1/(2α)}: the error decays like d^{-(α-1)/(2α)} = d^{-1/4}
    slope = np.polyfit(np.log(dims), np.log(measured.numpy()), 1)[0]
    assert abs(slope + 0.25) < 0.03, slope


def test_memory_coefficients_are_exact_on_a_hand_built_memory():
    gen = torch.Generator().manual_seed(3)
    n, m, d = 12, 4, 20
    inputs = torch.randn(n, d, generator=gen, dtype=torch.float64) / d**0.5
    outputs = torch.randn(m, d, generator=gen, dtype=torch.float64) / d**0.5
    q = torch.randn(m, n, generator=gen, dtype=torch.float64)
    memory = sum(q[y, x] * torch.outer(outputs[y], inputs[x]) for y in range(m) for x in range(n))
    assert torch.allclose(memory_coefficients(memory, inputs, outputs), q, atol=1e-10)
    assert torch.allclose(coefficient_scores(q, inputs, outputs), outputs @ memory @ inputs.T, atol=1e-12)
    # a scheme memory: q(x) on its target entry, the scores of memory_scores_bruteforce
    targets = torch.arange(n) % m
    weights = torch.rand(n, generator=gen, dtype=torch.float64)
    coefficients = scheme_coefficients(weights, targets, m)
    assert coefficients[targets, torch.arange(n)].tolist() == weights.tolist()
    assert coefficients.sum().item() == pytest.approx(weights.sum().item())
    assert torch.allclose(
        coefficient_scores(coefficients, inputs, outputs),
        memory_scores_bruteforce(weights, targets, inputs, outputs),
        atol=1e-12,
    )
    # d < N: not unique, but the least-squares coefficients still rebuild W
    small = inputs[:, :6], outputs[:, :6]
    w = small[1].T @ q @ small[0]
    rebuilt = memory_coefficients(w, *small)
    assert torch.allclose(small[1].T @ rebuilt @ small[0], w, atol=1e-10)


def test_errors_count_ties_and_non_finite_scores_as_wrong():
    """A diverged memory (NaN or inf scores) must not read as error 0."""
    from birth.memories.scaling_laws import errors_from_scores

    probs = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    targets = torch.tensor([0, 1, 0, 1])
    # scores [M=2 outputs, N=4 inputs]: input 0 right, 1 a tie, 2 NaN, 3 right
    scores = torch.tensor([[2.0, 1.0, float("nan"), -1.0], [1.0, 1.0, 0.0, 3.0]], dtype=torch.float64)
    head, tail = errors_from_scores(scores, targets, probs, head_size=2)
    assert head.item() == pytest.approx(0.3) and tail.item() == pytest.approx(0.2)
    inf_scores = torch.full((2, 4), float("inf"), dtype=torch.float64)
    assert sum(errors_from_scores(inf_scores, targets, probs, 2)).item() == pytest.approx(1.0)
    one_inf = scores.clone()
    one_inf[0, 0] = float("inf")  # input 0: its correct output's score overflowed
    assert sum(errors_from_scores(one_inf, targets, probs, 2)).item() == pytest.approx(0.9)
