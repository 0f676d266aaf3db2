"""Shared test settings: nothing may touch the network or the user's home."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
TIERS = ("unit", "integration", "cli")  # tests/<tier>/: each test carries its folder's marker


def pytest_collection_modifyitems(config, items):
    """Mark every test with its tier (`pytest -m unit`, `-m "not cli"`); `slow` is set per test."""
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture
def one_thread():
    """Small tensors: one thread avoids synchronisation costs on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config():
    """A training config that runs in about a second on CPU."""
    from training.config import QUICK

    return QUICK.replace(
        d_model=16,
        seq_len=16,
        batch_size=8,
        eval_batch_size=16,
        eval_every=2,
        checkpoint_every=4,
        steps=12,
        lr=0.05,
    )
