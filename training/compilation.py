"""Whether a run's training step goes through `torch.compile` (`--compile auto|on|off`).

Compiling (CPU inductor: fused softmax, masks and gathers around the same matmuls) costs seconds
to minutes at the first compiled step and saves a fraction of every later one, so it pays only for
long runs. `auto` decides with a measured rule: the run's first `PROBE_STEPS` steps run eager and
are timed (after one warm-up step), and the step is compiled from then on iff the rest of the run,
at that speed, would save more than compiling costs:

    remaining steps x eager step seconds x COMPILE_GAIN  >  COMPILE_SECONDS

`COMPILE_GAIN` (the fraction of a step compiling saves) and `COMPILE_SECONDS` (what the first
compiled step costs) are measured by `python scripts/bench_train.py --compile` (docs/tuning.md has
the numbers and the machine); the rule errs towards eager, which is what short runs and the tests
get. A run that `auto` compiles runs its first steps eager and the rest compiled (the same function
to float rounding); a resumed one times its first steps again, so for bit-exact resumes of runs
that long choose `on` or `off`. Compiling applies where the compiled function runs: the fast path
of a two-layer model with the loss on the selected targets (`birth.models.fast`); everything else
runs eager whatever the flag.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from birth.models.transformer import supports_fast_path

if TYPE_CHECKING:  # training.config imports this module
    from training.config import TrainConfig

Compile = Literal["auto", "on", "off"]

PROBE_STEPS = 3  # eager steps timed by `auto`, after one warm-up step
# measured on the 2-core CPU machine (docs/tuning.md, "Compiling the step"): the best gain seen, the
# longest compile (an empty inductor cache). The compiled step is slower than the eager one there
# (whose hand-written backwards it cannot fuse further), so `auto` never compiles on it; measure
# with `scripts/bench_train.py --compile` elsewhere
COMPILE_GAIN = -0.12  # fraction of an eager step's time the compiled step saves
COMPILE_SECONDS = 135.0  # seconds the first compiled step costs


def compilable(config: TrainConfig) -> bool:
    """Whether `config`'s training step has a compiled form (two layers on the fast path, loss on
    the selected targets)."""
    return (
        config.run.fast_path
        and supports_fast_path(config.model)
        and config.model.n_layers == 2
        and config.optim.loss_on == "outputs"
    )


def worth_compiling(remaining_steps: int, eager_seconds: float) -> bool:
    """The `auto` rule: compiling saves more than it costs over the rest of the run (never when
    the compiled step is not faster)."""
    return COMPILE_GAIN > 0 and remaining_steps * eager_seconds * COMPILE_GAIN > COMPILE_SECONDS


@dataclass
class StepCompilation:
    """Per step of a run: whether to run the compiled step (`use`), from the `--compile` choice and,
    for `auto`, the times of the first steps (`record`)."""

    mode: Compile
    last_step: int  # the run's number of steps
    applies: bool = True
    times: list[float] = field(default_factory=list)
    decided: bool | None = None  # auto, once decided

    @classmethod
    def for_run(cls, config: TrainConfig) -> StepCompilation:
        return cls(config.run.compile, config.optim.steps, compilable(config))

    def use(self, step: int) -> bool:
        if not self.applies or self.mode == "off":
            return False
        if self.mode == "on":
            return True
        if self.decided is None and len(self.times) > PROBE_STEPS:
            eager = statistics.median(self.times[1:])  # the first timed step is the warm-up
            self.decided = worth_compiling(self.last_step - step, eager)
        return bool(self.decided)

    def record(self, seconds: float) -> None:
        """The seconds of a step's forward and backward (kept until `auto` has decided)."""
        if self.mode == "auto" and self.decided is None:
            self.times.append(seconds)
