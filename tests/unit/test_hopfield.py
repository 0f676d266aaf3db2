"""Linear, Hopfield, modern Hopfield, ReLU and nearest-neighbour memories; capacity search."""

import pytest
import torch

from birth.memories.hopfield import (
    RecallSetup,
    capacity_from_recall,
    hopfield_auto,
    hopfield_onestep,
    linear_scores,
    nearest_neighbour,
    recall_curves,
    relu_scores,
    size_grid,
    softmax_memory,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def hadamard(d: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def test_orthogonal_patterns_recalled_by_linear_memory():
    d = n = 16
    keys = torch.eye(d, dtype=torch.float64)[None]
    labels = torch.arange(n)[None]
    outputs = torch.eye(d, dtype=torch.float64)[None]
    scores = linear_scores(keys, labels, outputs, keys)
    assert torch.equal(scores.argmax(-1), labels)
    relu = relu_scores(keys, labels, outputs, keys, eta=0.5)
    assert torch.equal(relu.argmax(-1), labels)


def test_orthogonal_patterns_recalled_by_hopfield_memories():
    h = hadamard(16)[None]  # 16 mutually orthogonal ±1 patterns
    values = torch.flip(h, dims=[1])
    assert torch.equal(hopfield_onestep(h, values, h), values)
    stored = h[:, :4]
    final, _ = hopfield_auto(stored, stored)
    assert torch.equal(final, stored)
    # a corrupted pattern (one bit flipped) goes back to the stored one
    noisy = stored.clone()
    noisy[0, :, 3] *= -1
    final, steps = hopfield_auto(stored, noisy)
    assert torch.equal(final, stored) and steps >= 1


def test_softmax_with_large_beta_is_nearest_neighbour():
    gen = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 2, (3, 40, 12), generator=gen).double() * 2 - 1
    values = torch.randint(0, 2, (3, 40, 12), generator=gen).double() * 2 - 1
    queries = torch.randint(0, 2, (3, 25, 12), generator=gen).double() * 2 - 1
    nearest, unique = nearest_neighbour(keys, values, queries)
    soft = softmax_memory(keys, values, queries, beta=50.0)
    assert unique.sum() > 10
    assert torch.equal(soft[unique], nearest[unique])
    # a small β averages many values: different outputs somewhere
    assert not torch.equal(softmax_memory(keys, values, queries, beta=0.01), nearest)


def test_capacity_is_monotone_on_a_small_grid():
    dims = [16, 32, 64, 128]
    sizes = size_grid(64)
    setup = RecallSetup("hopfield", dims, sizes, num_trials=4, num_queries=64, delta=0.0, seed=1)
    recall = recall_curves(setup)["recall"]
    capacity = capacity_from_recall(recall.nanmean(0), sizes)
    assert all(a <= b for a, b in zip(capacity, capacity[1:])), capacity
    assert capacity[0] >= 1 and capacity[-1] > capacity[0]


def test_capacity_grows_faster_for_nearest_neighbour():
    sizes = size_grid(512)
    linear = RecallSetup("linear", [16], sizes, num_trials=3, num_queries=64)
    nearest = RecallSetup("nearest", [16], sizes, num_trials=3, num_queries=64, delta=0.0)
    cap_lin = capacity_from_recall(recall_curves(linear)["recall"].nanmean(0), sizes)[0]
    cap_nn = capacity_from_recall(recall_curves(nearest)["recall"].nanmean(0), sizes)[0]
    assert cap_lin < 16 < cap_nn


def test_capacity_from_recall_rules():
    sizes = [1, 2, 4, 8]
    recall = torch.tensor([[1.0, 1.0, 0.5, 1.0], [0.2, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert capacity_from_recall(recall, sizes) == [2, 0, 8]


def test_bad_setup_raises():
    with pytest.raises(ValueError):
        recall_curves(RecallSetup("hopfield", [8], [1], delta=0.7))
    with pytest.raises(ValueError):
        recall_curves(RecallSetup("bogus", [8], [1]))
