"""`--compile auto|on|off`: which steps run compiled, and the compiled step's function."""

from __future__ import annotations

import pytest
import torch

import training.compilation
from birth.models.transformer import (
    ModelConfig,
    build_model,
    fast_cross_entropy,
    fast_logits,
    trainable_parameters,
)
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


def test_auto_never_compiles_where_the_compiled_step_is_not_faster():
    assert COMPILE_GAIN <= 0  # measured on the CPU machine (docs/tuning.md)
    assert not worth_compiling(10**9, 10.0)


def test_auto_compiles_when_the_rest_of_the_run_repays_the_compile_time(monkeypatch):
    monkeypatch.setattr(training.compilation, "COMPILE_GAIN", 0.09)  # a machine where compiling pays
    break_even_seconds = COMPILE_SECONDS / training.compilation.COMPILE_GAIN  # of eager steps still to run
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
def test_compiled_fast_path_equals_the_eager_one():
    """The compiled step computes the same loss, logits and gradients (CPU inductor: compiles once
    per sequence length; two lengths in one process, the second one's in causal blocks). At the
    default thread count: inductor's code for more than one thread is what a symbolic sequence
    length once broke."""
    gen = torch.Generator().manual_seed(0)
    for seq_len in (64, 128):
        model = build_model(ModelConfig(d_model=16), n_ctx=seq_len, seed=1)
        params = trainable_parameters(model)
        tokens = torch.randint(0, 65, (40, seq_len), generator=gen)
        targets = torch.randint(0, 65, (40, seq_len), generator=gen)
        positions = torch.rand(40, seq_len, generator=gen) < 0.3
        results = []
        for compiled in (False, True):
            logits = fast_logits(model, tokens, positions, compiled=compiled)
            loss = fast_cross_entropy(model, tokens, positions, targets, compiled=compiled)
            results.append((logits, loss, torch.autograd.grad(loss, params)))
        (eager, eager_loss, eager_grads), (got, loss, grads) = results
        torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=0.0)
        for g, e in zip(grads, eager_grads):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
