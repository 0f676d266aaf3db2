"""Clamps: parts of the induction circuit held at their ideal form while the rest trains
(`--clamp NAME[,NAME]`; Singh et al., "What needs to go right for an induction head?", ICML 2024).

    prev_token   layer 1's attention is the previous-token pattern: query t on key t - 1
                 (`tasks.circuits.previous_token_pattern`; every head of the layer)
    induction    layer 2's attention is the task's ideal induction pattern at the queries the task
                 constrains (`tasks.circuits.InductionTask.induction_pattern`); other queries keep
                 the model's own pattern
    W_O2, W_K2, W_K1
                 the matrix starts at its hand-built target memory (`--init-at-target`, scaled by
                 `--target-scale`) and never trains (memory names W_OV2, W_KQ2, W_KQ1 accepted)

A pattern clamp is a forward hook on TransformerLens' `blocks.{l}.attn.hook_pattern` that replaces
the pattern the layer uses (its value reaches the rest of the forward; no gradient flows into that
layer's scores, every other parameter gets its usual gradient). The hook reads the input tokens from
`embed.hook_in`. The hooks stay on the model for the whole run, evaluations included: the clamped
model is the model being measured. The fast path (`birth.models.fast`) computes attention without
hooks, so a pattern clamp needs `--no-fast-path` (the config refuses it otherwise, in one line). A
clamp is part of the run's config, re-installed when a run resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import nn

from birth.models.transformer import ModelConfig, attn_linear, supports_fast_path
from tasks.circuits import InductionTask, previous_token_pattern
from tasks.protocol import Task, memory_targets
from training.schedule import TARGETS, canonical, init_at_target

PatternClamp = Literal["prev_token", "induction"]
PATTERN_CLAMPS: tuple[str, ...] = get_args(PatternClamp)
CLAMPS: tuple[str, ...] = PATTERN_CLAMPS + TARGETS  # every name --clamp accepts (canonical form)
OPTION = "--clamp"
# which linear of the simplified model holds each clamped matrix: (layer, name)
MATRIX_LINEAR = {"W_O2": (1, "o"), "W_K2": (1, "k"), "W_K1": (0, "k")}


def parse_clamps(text: str) -> tuple[str, ...]:
    """Parse "prev_token,W_OV2" into canonical names (ValueError naming --clamp)."""
    if not isinstance(text, str):
        raise ValueError(f"{OPTION} must be a string, got {text!r}")
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name = part if part in PATTERN_CLAMPS else _matrix_name(part)
        if name in names:
            raise ValueError(f"{OPTION} names {name} twice")
        names.append(name)
    return tuple(names)


def _matrix_name(part: str) -> str:
    try:
        name = canonical(part, OPTION)
    except ValueError:
        name = None
    if name not in TARGETS:
        raise ValueError(f"{OPTION}: {part!r} is not a clamp; choose from {', '.join(CLAMPS)}")
    return name


def check_clamps(text: str, model: ModelConfig, fast_path: bool) -> tuple[str, ...]:
    """The clamps of `text` if `model` can take them (ValueError, one line naming --clamp)."""
    clamps = parse_clamps(text)
    patterns = [c for c in clamps if c in PATTERN_CLAMPS]
    if patterns and fast_path and supports_fast_path(model):
        raise ValueError(
            f"{OPTION} {patterns[0]} forces an attention pattern through TransformerLens hooks, which "
            f"the fast path skips: add --no-fast-path"
        )
    if "induction" in clamps and model.n_layers < 2:
        raise ValueError(
            f"{OPTION} induction forces layer 2's attention: the model has {model.n_layers} layer"
        )
    matrices = [c for c in clamps if c in TARGETS]
    if matrices and (model.variant != "simplified" or model.n_layers != 2):
        raise ValueError(
            f"{OPTION} {matrices[0]} holds a hand-built target memory of the 2-layer simplified model, "
            f"got --variant {model.variant} with {model.n_layers} layer(s)"
        )
    return clamps


def check_task_clamps(clamps: tuple[str, ...], task: Task) -> None:
    """The clamps the task must define: `induction` needs the task's ideal induction pattern."""
    if "induction" not in clamps:
        return
    if not isinstance(task, InductionTask):
        raise ValueError(
            f"{OPTION} induction: the task {type(task).__name__} defines no ideal induction pattern"
        )
    task.induction_pattern(torch.zeros(1, 2, dtype=torch.long, device=task.device))  # its own ValueError


def _replace_rows(ideal: torch.Tensor, rows: torch.Tensor | None) -> Callable:
    """A forward hook that puts `ideal` [B, T, T] into the pattern [B, H, T, T] (at `rows` [B, T])."""

    def hook(module: nn.Module, inputs: tuple, pattern: torch.Tensor) -> torch.Tensor:
        forced = ideal.to(pattern.dtype)[:, None]
        if rows is None:
            return forced.expand_as(pattern).clone()
        return torch.where(rows[:, None, :, None], forced, pattern)

    return hook


class Clamps:
    """The pattern clamps of one model: hooks on its hook points, removed by `remove`."""

    def __init__(self, model: nn.Module, task: Task, patterns: tuple[str, ...]) -> None:
        self.task = task
        self.patterns = patterns
        self.tokens: torch.Tensor | None = None
        self.handles = [model.embed.hook_in.register_forward_hook(self._keep_tokens)]
        for name in patterns:
            layer = 0 if name == "prev_token" else 1
            point = model.blocks[layer].attn.hook_pattern
            self.handles.append(point.register_forward_hook(self._hook(name)))

    def _keep_tokens(self, module: nn.Module, inputs: tuple, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, pattern: torch.Tensor) -> torch.Tensor:
            return _replace_rows(*self.ideal(name))(module, inputs, pattern)

        return hook

    def ideal(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pattern [B, T, T], rows [B, T] or None for every row) of clamp `name` on the tokens of
        the current forward."""
        tokens = self.tokens
        if name == "prev_token":
            return previous_token_pattern(*tokens.shape, device=tokens.device), None
        return self.task.induction_pattern(tokens)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def install_clamps(model: nn.Module, task: Task, text: str, target_scale: float) -> Clamps | None:
    """Install the clamps of `text` on `model` (before the optimizer is built): the matrices at
    their target memories, frozen; the pattern hooks. None when `text` names no clamp."""
    clamps = parse_clamps(text)
    if not clamps:
        return None
    check_task_clamps(clamps, task)
    matrices = tuple(c for c in clamps if c in TARGETS)
    if matrices:
        try:
            init_at_target(model, matrices, memory_targets(task).triggers, target_scale)
        except ValueError as err:
            raise ValueError(f"{OPTION}: {err}") from None
        for name in matrices:
            attn_linear(model, *MATRIX_LINEAR[name]).weight.requires_grad_(False)
    patterns = tuple(c for c in clamps if c in PATTERN_CLAMPS)
    return Clamps(model, task, patterns) if patterns else None
