"""The capacity search (birth.memories.capacity_search) and the trained memories it measures
(training.memory_capacity, the mlp map of training.memories)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from birth.base.seeds import generator
from birth.memories.capacity_search import random_associations, search_capacity
from training.memories import MemoryTrainConfig, train_memory
from training.memory_capacity import CAPACITY_TRAINING, MemorySize, memory_capacity, trained_accuracy


@pytest.mark.parametrize("true_capacity", [1, 7, 64, 100, 1000])
@pytest.mark.parametrize("start", [1, 50, 999])
def test_search_finds_a_threshold_exactly(true_capacity, start):
    asked = []

    def stores(n, attempt):
        asked.append(n)
        return n <= true_capacity

    found = search_capacity(stores, start=start, max_size=1000)
    assert found.capacity == true_capacity
    assert found.confirmed
    assert found.censored == (true_capacity == 1000)
    assert len(asked) <= 2 * 11 + 2  # doubling and bisection: logarithmic in max_size


def test_nothing_stored_gives_zero():
    found = search_capacity(lambda n, a: False, start=8, max_size=100)
    assert (found.capacity, found.confirmed) == (0, False)
    assert [n for n, _, _ in found.tried] == [8, 4, 2, 1]


def test_a_failed_confirmation_moves_the_capacity_down():
    # the search's runs store up to 40, the confirmation runs only up to 30
    found = search_capacity(lambda n, a: n <= (40 if a == 0 else 30), start=10, max_size=1000)
    assert (found.capacity, found.confirmed) == (30, True)
    assert (40, 1, False) in found.tried  # the first confirmation, which failed


def test_relative_tolerance_brackets_within_it():
    found = search_capacity(lambda n, a: n <= 500, start=10, max_size=4096, rel_tol=0.05)
    assert 500 * 0.95 <= found.capacity <= 500


def test_associations_are_seeded_and_on_the_sphere():
    a = random_associations(20, 8, generator(3, 1))
    b = random_associations(20, 8, generator(3, 1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.outputs, b.outputs)
    assert a.inputs.shape == (1, 20, 8)
    assert torch.allclose(a.inputs.norm(dim=-1), torch.ones(1, 20), atol=1e-5)
    basis = random_associations(10, 4, generator(0), "repeated-basis")
    assert torch.equal(basis.inputs[0, 4], basis.inputs[0, 0])  # input x is e_{x mod d}


@pytest.mark.parametrize("dim", [3, 4])
def test_orthogonal_inputs_store_exactly_d_associations(dim):
    """Inputs e_{x mod d} (orthonormal up to N = d, then repeated): a trained d x d linear memory
    stores every association up to N = d, and never N = d + 1 (two inputs share an embedding)."""
    training = replace(CAPACITY_TRAINING, num_steps=150)
    found = memory_capacity(
        MemorySize("linear", dim), 1.0, seed=0, max_size=64, training=training, embeddings="repeated-basis"
    )
    assert found.capacity == dim and found.confirmed and not found.censored


def test_mlp_memory_stores_more_than_a_linear_one_of_its_width():
    """16 random associations in d = 4: beyond a 4 x 4 matrix (16 parameters), within reach of an
    MLP 4 -> 32 -> 4 (256 parameters)."""
    training = replace(CAPACITY_TRAINING, num_steps=300)
    linear = trained_accuracy(MemorySize("linear", 4), 16, seed=0, training=training)
    mlp = trained_accuracy(MemorySize("mlp", 4, 32), 16, seed=0, training=training)
    assert mlp == 1.0
    assert linear < 1.0
    assert MemorySize("mlp", 4, 32).parameters == 256 and MemorySize("linear", 4).parameters == 16


def test_mlp_map_trains_both_layers_and_is_seeded():
    problem = random_associations(6, 4, generator(0))
    config = MemoryTrainConfig(
        features="mlp", mlp_width=8, optimizer="adam", lr=0.05, batch_size=6, num_steps=5
    )
    batches = torch.arange(6).expand(1, 5, 6)
    one = train_memory(problem, config, seed=1, batches=batches)
    two = train_memory(problem, config, seed=1, batches=batches)
    assert one.memory.shape == (1, 4, 8)  # W: d x m
    assert torch.equal(one.memory, two.memory)
    with pytest.raises(ValueError, match="--mlp-width"):
        MemoryTrainConfig(features="mlp", mlp_width=0)
