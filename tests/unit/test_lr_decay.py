"""`--lr-decay`: the learning rate of each step (training/schedule.py)."""

from __future__ import annotations

import math

import pytest
import torch

from training.config import OptimConfig
from training.schedule import decayed_lr, set_lr


def test_cosine_and_linear_go_from_lr_to_zero():
    assert decayed_lr(0.1, 0, 100, "cosine") == pytest.approx(0.1)
    assert decayed_lr(0.1, 50, 100, "cosine") == pytest.approx(0.05)
    assert decayed_lr(0.1, 25, 100, "cosine") == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert decayed_lr(0.1, 100, 100, "cosine") == pytest.approx(0.0, abs=1e-15)
    assert decayed_lr(0.1, 75, 100, "linear") == pytest.approx(0.025)
    assert decayed_lr(0.1, 150, 100, "linear") == 0.0  # past the end: held at 0, never negative
    assert [decayed_lr(0.1, s, 100, "none") for s in (0, 50, 100)] == [0.1, 0.1, 0.1]
    values = [decayed_lr(1.0, s, 10, "cosine") for s in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing


def test_set_lr_writes_every_group_and_none_leaves_the_optimizer_alone():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    set_lr(optimizer, 0.1, 3, 4, "none")
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.5]  # untouched
    set_lr(optimizer, 0.2, 3, 4, "linear")
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.05])


@pytest.mark.parametrize("bad", ["sideways", "", "Cosine"])
def test_an_unknown_decay_names_the_flag(bad):
    with pytest.raises(ValueError, match="lr.decay"):
        OptimConfig(lr_decay=bad)
