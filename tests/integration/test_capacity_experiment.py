"""The capacity experiment through the registry, its validation, and the growth fits it reports."""

import dataclasses
import json
import math

import pytest
import torch

from birth.base.io import OutputError
from birth.experiments.capacity.capacity import CapacityConfig
from birth.experiments.registry import REGISTRY, load, run_experiment
from birth.memories.hopfield import fit_growth, fit_growth_with_ci, theory_exponent

pytestmark = pytest.mark.usefixtures("one_thread")


def silent(line: str) -> None:
    """A `log` that drops the experiment's printed lines."""


def test_capacity_small_writes_both_figures_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "cap"
    config = CapacityConfig(memories=("linear", "nearest"), trials=2, queries=32)
    lines: list[str] = []
    load("capacity")
    result = run_experiment(REGISTRY["capacity"], config, out, progress=False, log=lines.append)
    record = json.loads((out / "result.json").read_text())
    assert set(record["result"]["memories"]) == {"linear", "nearest"}
    assert (out / "capacity_summary.png").exists() and (out / "capacity.png").exists()
    assert any("n*(d) =" in line for line in lines) and "capacity growth" in result.headline()
    with pytest.raises(OutputError):  # refuses to overwrite
        run_experiment(REGISTRY["capacity"], config, out, progress=False, log=silent)
    # exponential memories store more than the linear one at a smaller d
    linear, nearest = result.memories["linear"], result.memories["nearest"]
    assert max(nearest.capacity) > max(linear.capacity)


@pytest.mark.parametrize(
    "change, flag",
    [
        (dict(memories=("nope",)), "--memories"),
        (dict(memories=()), "--memories"),
        (dict(eta=1.5), "--eta"),  # η >= 1: the theory rate −½ ln(1 − η²) is undefined
        (dict(eta=math.nan), "--eta"),
        (dict(beta=math.nan), "--beta"),
        (dict(beta=0.0), "--beta"),
        (dict(delta=0.5), "--delta"),
        (dict(threshold=0.0), "--threshold"),
        (dict(trials=1), "--trials"),
        (dict(outputs=1), "--outputs"),
        (dict(seed=1.5), "--seed"),
        (dict(seed=-3), "--seed"),
        (dict(device="gpu"), "--device"),
        (dict(polynomial_dims=(1, 8)), "--polynomial-dims"),
    ],
)
def test_bad_config_names_the_flag(change, flag):
    with pytest.raises(ValueError, match=flag):
        dataclasses.replace(CapacityConfig(), **change)


def test_growth_fit_recovers_a_known_rate_and_ignores_censored_points():
    dims = [8, 12, 16, 20, 24]
    capacities = [round(3 * math.exp(0.25 * d)) for d in dims[:-1]] + [4096]  # the last one censored
    fit = fit_growth("nearest", dims, capacities, max_size=4096)
    assert fit.points == 4 and fit.slope == pytest.approx(0.25, abs=0.01)
    poly = fit_growth("linear", [32, 64, 128], [16, 32, 64], max_size=1024)
    assert poly.slope == pytest.approx(1.0)
    assert fit_growth("linear", [32, 64], [0, 1024], max_size=1024) is None


def test_growth_ci_brackets_the_fit_and_uses_a_fixed_number_of_draws():
    sizes = [1, 2, 4, 8, 16, 32, 64]
    dims = [8, 16, 32]
    # trial r recalls perfectly up to n = 2^(level + jitter_r) at dimension index level
    recall = torch.ones(6, len(dims), len(sizes), dtype=torch.float64)
    for r in range(6):
        for a in range(len(dims)):
            recall[r, a, a + 2 + (r % 2) :] = 0.5
    gen = torch.Generator().manual_seed(0)
    capacities, fit = fit_growth_with_ci("linear", dims, sizes, recall, 0.99, gen, num_boot=50)
    assert capacities == [2, 4, 8]  # the mean recall fails where the earliest trials fail
    assert fit.ci_low <= fit.slope <= fit.ci_high
    reference = torch.Generator().manual_seed(0)
    for _ in range(50):
        torch.randint(0, 6, (6,), generator=reference)
    assert torch.equal(gen.get_state(), reference.get_state())


def test_theory_exponents():
    assert theory_exponent("linear", [32, 64], 0.1, 0.5) == (1.0, "log-log slope")
    rate, _ = theory_exponent("relu", [8], 0.1, 0.5)
    assert rate == pytest.approx(-0.5 * math.log(0.75))
    rate, _ = theory_exponent("nearest", [8], 0.0, 0.5)
    assert rate == pytest.approx(math.log(2))
    slope, _ = theory_exponent("hopfield", [32, 64, 128, 256, 512], 0.1, 0.5)
    assert 0.7 < slope < 0.85  # d / log d is a little slower than d on this range
