"""Which matrices train, and when: a per-matrix schedule and initialization at the target memories.

`--schedule` (the reference code's `freeze_until`, with stop steps) names trainable matrices and
the steps during which each trains, comma-separated:

    W_K1:300            W_K1 trains from step 300 on (frozen before: freeze_until=300:...wk)
    W_O2:0-500          W_O2 trains during steps [0, 500), then stays where it is
    W_K2:off            W_K2 never trains (held at its initialization)

Matrices are named as in `training.matrices.named_matrices` (W_K1, W_K2, W_O2, ... layers from 1); the
memory names W_KQ1, W_KQ2, W_OV2 are accepted for W_K1, W_K2, W_O2 (with W_Q = I and a frozen
W_V those are the matrices that store them). A trainable matrix the schedule does not name trains
throughout.

A frozen matrix does not move at all: before each step the schedule turns `requires_grad` off for
the matrices outside their window, so the backward pass computes no gradient for them (and skips
the layers only they needed), and torch's SGD and AdamW leave a parameter without a gradient
untouched: no momentum step, no weight decay. Every scheduled matrix stays in the optimizer, so a
matrix whose window opens later starts with fresh optimizer state; one whose window closed keeps
its (unused) state.

`--init-at-target` names memories (W_O2, W_K2, W_K1) that start at their hand-built target
(`birth.models.targets.target_memories`), scaled so that a stored pair gets a score of `--target-scale`:
the logit of the stored output through W_OV² (W_V² is then set to the identity, as
`birth.models.targets.insert_memories` does, so that W_O² is the memory itself), or the attention score
x_t W_KQ x_sᵀ / √d of a stored (query, key) pair.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from birth.models.targets import target_memories
from birth.models.transformer import attn_linear, native
from tasks.protocol import Task, memory_targets
from training.matrices import trained_matrices

ALIASES = {"W_KQ": "W_K", "W_OV": "W_O"}  # memory name prefix -> the matrix that stores it
_NAME = re.compile(r"^W_(Q|K|V|O|KQ|OV|in|out)(\d+)$|^W_(E|U|pos)$")
TARGETS = ("W_O2", "W_K2", "W_K1")  # the memories `--init-at-target` can insert (2-layer simplified model)


def canonical(name: str, option: str = "--schedule") -> str:
    """W_KQ2 -> W_K2, W_OV2 -> W_O2; other valid names unchanged; ValueError for a malformed one."""
    name = name.strip()
    match = _NAME.match(name)
    if not match:
        raise ValueError(
            f"{option}: {name!r} is not a matrix name (W_Q1, W_K1, W_V1, W_O1, ..., W_in1, W_out1, "
            f"W_E, W_U, W_pos; W_KQ1, W_KQ2, W_OV2 for the memories)"
        )
    if match.group(2) is not None and int(match.group(2)) < 1:
        raise ValueError(f"{option}: layers are numbered from 1, got {name!r}")
    for alias, real in ALIASES.items():
        if name.startswith(alias) and name[len(alias) :].isdigit():
            return real + name[len(alias) :]
    return name


@dataclass(frozen=True)
class Window:
    """Matrix `matrix` trains at the steps in [start, stop) (stop None: to the end)."""

    matrix: str
    start: int
    stop: int | None

    def active(self, step: int) -> bool:
        return step >= self.start and (self.stop is None or step < self.stop)

    def __str__(self) -> str:
        if self.stop is not None and self.stop <= self.start:
            return f"{self.matrix}:off"
        return f"{self.matrix}:{self.start}" + ("" if self.stop is None else f"-{self.stop}")


def _step(text: str, item: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"--schedule: {item!r}: a step must be an integer >= 0, got {text!r}")
    return int(text)


def parse_schedule(text: str) -> tuple[Window, ...]:
    """Parse "W_K1:300,W_O2:0-500,W_K2:off" into windows (ValueError naming --schedule)."""
    if not isinstance(text, str):
        raise ValueError(f"--schedule must be a string, got {text!r}")
    windows: list[Window] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, when = item.partition(":")
        if not sep:
            raise ValueError(f"--schedule: {item!r} must be NAME:START, NAME:START-STOP or NAME:off")
        matrix = canonical(name)
        when = when.strip()
        if when == "off":
            window = Window(matrix, 0, 0)
        elif "-" in when:
            start_text, _, stop_text = when.partition("-")
            start, stop = _step(start_text, item), _step(stop_text, item)
            if stop < start:
                raise ValueError(f"--schedule: {item!r}: the stop step must be >= the start step")
            window = Window(matrix, start, stop)
        else:
            window = Window(matrix, _step(when, item), None)
        if any(w.matrix == matrix for w in windows):
            raise ValueError(f"--schedule names {matrix} twice")
        windows.append(window)
    return tuple(windows)


def parse_targets(text: str) -> tuple[str, ...]:
    """Parse --init-at-target "W_O2,W_K2" (memory names accepted) into canonical names."""
    if not isinstance(text, str):
        raise ValueError(f"--init-at-target must be a string, got {text!r}")
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name = canonical(part, "--init-at-target")
        if name not in TARGETS:
            raise ValueError(f"--init-at-target: {part!r} has no hand-built target; choose from {TARGETS}")
        if name in names:
            raise ValueError(f"--init-at-target names {name} twice")
        names.append(name)
    return tuple(names)


class Schedule:
    """The windows of one run, bound to the model's parameters."""

    def __init__(self, windows: tuple[Window, ...], matrices: dict[str, nn.Parameter]) -> None:
        self.windows = windows
        self.matrices = dict(matrices)  # every trainable matrix (what the norm metrics read)
        self.params = {w.matrix: matrices[w.matrix] for w in windows}
        self._unscheduled = [p for name, p in matrices.items() if name not in self.params]

    @classmethod
    def for_model(cls, text: str, model: nn.Module) -> Schedule:
        """The schedule `text` on `model`'s trainable matrices (ValueError naming --schedule if it
        names a matrix the model does not have or does not train). Call it before the schedule
        first changes `requires_grad`, i.e. before training."""
        windows = parse_schedule(text)
        trained = trained_matrices(model)
        for w in windows:
            if w.matrix not in trained:
                raise ValueError(
                    f"--schedule: {w.matrix} is not a trained matrix of this model "
                    f"(trained: {', '.join(trained) or 'none'})"
                )
        return cls(windows, trained)

    def active(self, step: int) -> dict[str, bool]:
        return {w.matrix: w.active(step) for w in self.windows}

    def apply(self, step: int) -> bool:
        """Set `requires_grad` of the scheduled matrices for `step`; whether anything trains."""
        anything = bool(self._unscheduled)
        for w in self.windows:
            on = w.active(step)
            self.params[w.matrix].requires_grad_(on)
            anything = anything or on
        return anything

    def __str__(self) -> str:
        return ",".join(str(w) for w in self.windows)


# ---------------------------------------------------------------------------------------------
# initialization at the hand-built target memories
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def init_at_target(
    model: nn.Module, names: tuple[str, ...], triggers: torch.Tensor | None, scale: float
) -> None:
    """Write the hand-built target memory of each named matrix (W_O2, W_K2, W_K1) into `model`.

    Each memory is normalized so that its stored pairs score `scale` on average: the logit of the
    stored output w_U(k) from w_E(k) through W_OV², and the attention score (divided by √d as the
    model does) of query w_E(q) and key W_OV¹ w_E(q) (W_K²) or of query p_{t+1} and key p_t (W_K¹).
    `triggers`: the fixed trigger set stored in W_KQ²; None stores every token (random triggers).
    """
    if not names:
        return
    try:
        memories = target_memories(model, triggers)
    except ValueError as err:
        raise ValueError(f"--init-at-target: {err}") from None
    W_E, W_U, P = model.W_E.detach(), model.W_U.T.detach(), model.W_pos.detach()
    d = model.cfg.d_model
    tokens = torch.arange(W_E.shape[0], device=W_E.device) if triggers is None else triggers.to(W_E.device)
    queries = W_E[tokens]
    pairs = {  # (inputs u_i, outputs v_i) of the stored pairs, rows
        "W_O2": (W_E, W_U),
        "W_K2": (queries, queries @ model.OV[0, 0].AB),
        "W_K1": (P[1:], P[:-1]),
    }
    memory_of = {"W_O2": "W_OV2", "W_K2": "W_KQ2", "W_K1": "W_KQ1"}
    for name in names:
        M = memories[memory_of[name]]
        u, v = pairs[name]
        stored = ((u @ M) * v).sum(dim=-1).mean()  # mean score u_i M v_iᵀ of the stored pairs
        M = M * (scale / stored)
        if name == "W_O2":
            attn_linear(model, 1, "v").weight.copy_(torch.eye(d))  # W_OV² = W_O² (row form)
            attn_linear(model, 1, "o").weight.copy_(M.T)  # nn.Linear holds the row-form map transposed
        else:
            layer = 1 if name == "W_K2" else 0
            # row-form QK of a W_Q = I layer is k.weight; the model divides scores by `attn.scale`
            # (√d, or 1 with --attn-scale none)
            attn_linear(model, layer, "k").weight.copy_(float(native(model).layers[layer].attn.scale) * M)


def prepare_schedule(
    model: nn.Module, schedule: str, init_at: str, target_scale: float, task: Task
) -> Schedule:
    """Set up a run's matrices: write the --init-at-target memories `init_at` (the trigger set of
    `task`'s memories, or every token: `tasks.protocol.memory_targets`) and bind the --schedule
    `schedule` to the model. Call it before building the optimizer."""
    triggers = memory_targets(task).triggers
    init_at_target(model, parse_targets(init_at), triggers, target_scale)
    return Schedule.for_model(schedule, model)


LrDecay = Literal["none", "cosine", "linear"]
"""How the learning rate moves over a run (`--lr-decay`): held at `--lr`, or from `--lr` at step 0
down to 0 at the end of the run (step `--steps`) along a half cosine or a line."""


def decayed_lr(lr: float, step: int, steps: int, decay: LrDecay) -> float:
    """The learning rate of step `step` of a run of `steps` steps: a function of the step alone, so a
    resumed run takes the steps an uninterrupted one would (a run resumed with more steps stretches
    the rest of its decay)."""
    if decay == "none" or steps <= 0:
        return lr
    progress = min(step / steps, 1.0)
    if decay == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr * (1.0 - progress)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, step: int, steps: int, decay: LrDecay) -> None:
    """Give every parameter group the learning rate of `step` (`decayed_lr`); without a decay the
    optimizer is left untouched, so a run without one takes exactly the steps it always took."""
    if decay == "none":
        return
    value = decayed_lr(lr, step, steps, decay)
    for group in optimizer.param_groups:
        group["lr"] = value
