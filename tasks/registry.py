"""Tasks by name: `birth train --task NAME`, and the task a run's config.json names.

Each task registers its name, its config dataclass (frozen, `birth.base.validate.Validated`) and
how to build it from that config on a device. A config class belongs to one task, so a run's
config says which task it trains on through the type of its `task` section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tasks.factual_recall import FactualRecall, FactualRecallConfig
from tasks.markov_icl import MarkovICL, MarkovICLConfig
from tasks.protocol import Task
from tasks.triggered_bigram import TaskConfig, TriggeredBigram

DEFAULT_TASK = "triggered-bigram"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    config: type  # the task's config dataclass
    build: Callable[[Any, torch.device], Task]  # (config, device) -> the task
    summary: str = ""


_TASKS: dict[str, TaskSpec] = {}


def register_task(
    name: str, config: type, build: Callable[[Any, torch.device], Task], summary: str = ""
) -> TaskSpec:
    """Register a task (ValueError when the name or the config class is taken by another task)."""
    spec = TaskSpec(name, config, build, summary)
    for other in _TASKS.values():
        if other.name == name and other != spec:
            raise ValueError(f"task {name!r} is already registered")
        if other.config is config and other.name != name:
            raise ValueError(f"{config.__name__} is already the config of task {other.name!r}")
    _TASKS[name] = spec
    return spec


def task_names() -> tuple[str, ...]:
    return tuple(_TASKS)


def get_task(name: str) -> TaskSpec:
    if name not in _TASKS:
        raise ValueError(f"--task must be one of {', '.join(_TASKS)}, got {name!r}")
    return _TASKS[name]


def task_of_config(config: Any) -> TaskSpec:
    """The task whose config `config` is (ValueError for a config no task registered)."""
    for spec in _TASKS.values():
        if type(config) is spec.config:
            return spec
    raise ValueError(f"{type(config).__name__} is the config of no registered task (tasks.registry)")


def build_task(config: Any, device: str | torch.device = "cpu") -> Task:
    """The task of `config` on `device` (its checks that need the vocabulary run here)."""
    return task_of_config(config).build(config, torch.device(device))


register_task(
    DEFAULT_TASK,
    TaskConfig,
    lambda config, device: TriggeredBigram(config, device=device),
    "character bigrams of tiny Shakespeare with K triggers followed by per-sequence outputs",
)
register_task(
    "factual-recall",
    FactualRecallConfig,
    lambda config, device: FactualRecall(config, device=device),
    "S subjects x R relations -> answers, with the subject and relation among noise tokens",
)
register_task(
    "markov-icl",
    MarkovICLConfig,
    lambda config, device: MarkovICL(config, device=device),
    "in-context Markov chains: per-sequence transition rows ~ Dirichlet(alpha), k states",
)
