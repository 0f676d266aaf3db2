"""Zipf association data: probabilities, targets, seeded sampling, nested counts."""

import pytest
import torch

from birth.base.seeds import generator
from tasks.zipf import ZipfAssociations, zipf_probs


def test_probs_are_normalized_zipf():
    task = ZipfAssociations(50, 5, 1.5)
    p = task.probs()
    assert p.shape == (50,)
    assert torch.isclose(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    # p(x) ∝ (x+1)^-α: the ratio of two tokens is fixed by α
    assert torch.isclose(p[0] / p[3], torch.tensor(4.0**1.5, dtype=torch.float64))
    offset = ZipfAssociations(50, 5, 2.0, offset=3.0).probs()
    assert torch.isclose(offset[0] / offset[1], torch.tensor((5.0 / 4.0) ** 2, dtype=torch.float64))


def test_targets_mod_and_random_map():
    assert ZipfAssociations(12, 5, 1.0).targets().tolist() == [x % 5 for x in range(12)]
    random_map = ZipfAssociations(200, 7, 1.0, mapping="random", mapping_seed=3).targets()
    assert random_map.min() >= 0 and random_map.max() < 7
    assert torch.equal(random_map, ZipfAssociations(200, 7, 1.0, mapping="random", mapping_seed=3).targets())
    assert not torch.equal(
        random_map, ZipfAssociations(200, 7, 1.0, mapping="random", mapping_seed=4).targets()
    )


def test_sampling_is_seeded_and_follows_p():
    task = ZipfAssociations(10, 3, 1.0)
    x1, y1 = task.sample(20_000, generator(0, 1))
    x2, _ = task.sample(20_000, generator(0, 1))
    x3, _ = task.sample(20_000, generator(0, 2))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert torch.equal(y1, x1 % 3)
    freq = torch.bincount(x1, minlength=10).double() / 20_000
    assert (freq - task.probs()).abs().max() < 0.015


def test_nested_counts_are_prefixes_of_one_stream():
    task = ZipfAssociations(30, 4, 1.2)
    counts = task.nested_counts([100, 10, 1000], num_trials=3, seed=5)
    assert counts.shape == (3, 3, 30)
    assert counts.sum(-1).tolist() == [[100, 10, 1000]] * 3
    # a prefix never has more of any token than a longer prefix
    assert (counts[:, 1] <= counts[:, 0]).all() and (counts[:, 0] <= counts[:, 2]).all()
    stream, _ = task.sample(1000, generator(5, 2))
    assert torch.equal(counts[2, 0], torch.bincount(stream[:100], minlength=30).double())
    # trial r does not depend on how many trials are drawn
    assert torch.equal(task.nested_counts([100], 1, seed=5)[0, 0], counts[0, 0])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_inputs=0, num_outputs=2, alpha=1.0),
        dict(num_inputs=5, num_outputs=1, alpha=1.0),
        dict(num_inputs=5, num_outputs=2, alpha=-1.0),
        dict(num_inputs=5, num_outputs=2, alpha=1.0, mapping="bad"),
    ],
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        ZipfAssociations(**kwargs)


def test_one_zipf_law_for_tasks_and_problems():
    # the memory problems' input law is the task's: p(x) ∝ (x + 1)^-α, exactly
    assert torch.equal(zipf_probs(40, 1.5), ZipfAssociations(40, 3, 1.5).probs())
    assert torch.equal(zipf_probs(7, 0.0), torch.full((7,), 1 / 7, dtype=torch.float64))
