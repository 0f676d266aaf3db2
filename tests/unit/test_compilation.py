"""`--compile auto|on|off`: which steps run compiled, and the compiled step's function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from birth.models.transformer import ModelConfig, build_model, fast_logits, trainable_parameters
from training.compilation import (
    COMPILE_GAIN,
    COMPILE_SECONDS,
    PROBE_STEPS,
    StepCompilation,
    compilable,
    worth_compiling,
)
from training.config import PRESETS


def test_compiling_applies_to_the_two_layer_fast_path_with_the_loss_on_selected_targets():
    assert compilable(PRESETS["quick"]) and compilable(PRESETS["paper"])
    assert not compilable(PRESETS["quick"].replace(fast_path=False))
    assert not compilable(PRESETS["quick"].replace(loss_on="all"))
    assert not compilable(PRESETS["quick"].replace(n_layers=1))
    assert not compilable(PRESETS["full"])  # 4 heads, LayerNorm: the TransformerLens forward


def test_auto_compiles_when_the_rest_of_the_run_repays_the_compile_time():
    break_even_seconds = COMPILE_SECONDS / COMPILE_GAIN  # of eager steps still to run
    assert worth_compiling(1000, 1.01 * break_even_seconds / 1000)
    assert not worth_compiling(1000, 0.99 * break_even_seconds / 1000)
    for eager_seconds, expected in ((1.0, True), (0.001, False)):
        steps = 100 + int(2 * break_even_seconds)
        compilation = StepCompilation("auto", last_step=steps)
        used = []
        for step in range(PROBE_STEPS + 3):
            used.append(compilation.use(step))
            compilation.record(eager_seconds if step else 50.0)  # a slow first (warm-up) step is ignored
        # eager while timing the first steps, then the decision for the rest of the run
        assert used == [False] * (PROBE_STEPS + 1) + [expected] * 2


@pytest.mark.parametrize("mode, expected", [("on", True), ("off", False)])
def test_on_and_off_decide_without_timing(mode, expected):
    compilation = StepCompilation(mode, last_step=10)
    assert [compilation.use(step) for step in range(3)] == [expected] * 3
    assert not StepCompilation(mode, last_step=10, applies=False).use(0)


@pytest.mark.slow
def test_compiled_fast_path_equals_the_eager_one(one_thread):
    """The compiled step computes the same logits and gradients (CPU inductor: compiles once)."""
    model = build_model(ModelConfig(d_model=16), n_ctx=12, seed=1)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 65, (40, 12), generator=gen)
    positions = torch.rand(40, 12, generator=gen) < 0.3
    targets = torch.randint(0, 65, (int(positions.sum()),), generator=gen)
    params = trainable_parameters(model)
    results = []
    for compiled in (False, True):
        logits = fast_logits(model, tokens, positions, compiled=compiled)
        results.append((logits, torch.autograd.grad(F.cross_entropy(logits, targets), params)))
    (eager, eager_grads), (got, grads) = results
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
