"""The configuration of a training run: four frozen sections and the named presets.

    TrainConfig(task=TaskConfig(...), model=ModelConfig(...), optim=OptimConfig(...), run=RunConfig(...))

Field names are unique across the sections, so the command line flattens them (`--seq-len`,
`--d-model`, `--lr`, `--seed`) and `TrainConfig.replace(lr=0.1, d_model=64)` takes them flat too.
Every section validates itself in `__post_init__` with a message naming the flag; the checks that
need the vocabulary size run when the task is built (`TrainConfig.build_task`, `validate`).
The task section is the config of any registered task (`tasks.registry`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any, Literal

import torch
from torch import nn

from birth.base.config_io import config_from_dict
from birth.base.seeds import check_seed
from birth.base.validate import Float, Floats, Int, Validated
from birth.models.transformer import FULL_MODEL, ModelConfig, build_model
from tasks.protocol import LossOn, Task
from tasks.registry import DEFAULT_TASK, build_task, get_task, task_of_config
from tasks.triggered_bigram import TaskConfig
from training.clamps import check_clamps, check_task_clamps, parse_clamps
from training.compilation import Compile
from training.schedule import LrDecay, parse_schedule, parse_targets

Optimizer = Literal["sgd", "adamw"]


@dataclass(frozen=True)
class OptimConfig(Validated):
    """What is trained and how."""

    optimizer: Optimizer = "sgd"  # SGD with momentum, or AdamW
    lr: Annotated[float, Float(0.0, open_low=True)] = 0.03  # learning rate
    lr_decay: LrDecay = "none"  # none: --lr throughout; cosine, linear: from --lr down to 0 at the end
    momentum: Annotated[float, Float(0.0, 1.0, open_high=True)] = 0.9  # SGD momentum (AdamW uses --betas)
    betas: Annotated[tuple[float, float], Floats(0.0, 1.0, open_high=True)] = (0.9, 0.99)  # AdamW betas
    weight_decay: Annotated[float, Float(0.0)] = 1e-4  # decoupled for AdamW, L2 for SGD
    batch_size: Annotated[int, Int(1)] = 512  # sequences per step (fresh data every step)
    steps: Annotated[int, Int(0)] = 1000  # optimizer steps
    loss_on: LossOn = "outputs"  # outputs: targets with counter >= 2 (paper Fig. 3); all: every target
    schedule: str = ""  # when each matrix trains: "W_K1:300,W_O2:0-500,W_K2:off" (unnamed ones: always)
    init_at_target: str = ""  # matrices (W_O2, W_K2, W_K1) that start at their hand-built target memory
    # --init-at-target: logit (W_O2) or attention score (W_K) of a stored pair
    target_scale: Annotated[float, Float(0.0, open_low=True)] = 30.0
    # parts of the circuit held at their ideal form while the rest trains: prev_token, induction
    # (attention patterns), W_O2, W_K2, W_K1 (target memories, frozen); training.clamps
    clamp: str = ""  # e.g. prev_token,W_O2 (pattern clamps need --no-fast-path)

    def __post_init__(self) -> None:
        parse_schedule(self.schedule)
        parse_targets(self.init_at_target)
        parse_clamps(self.clamp)
        super().__post_init__()
        if len(self.betas) != 2:
            raise ValueError(f"--betas takes two numbers, got {self.betas!r}")


@dataclass(frozen=True)
class RunConfig(Validated):
    """Seeds, evaluation and checkpoints."""

    seed: int = 0  # model init; the batch of step t is drawn from a generator seeded by (seed, t)
    eval_seed: int = 1_000_003  # seed of the fixed held-out batch
    # evaluate (metrics and probes) every this many steps, and at the end
    eval_every: Annotated[int, Int(1)] = 10
    eval_batch_size: Annotated[int, Int(1)] = 512  # held-out sequences
    checkpoint_every: Annotated[int, Int(1)] = 100  # checkpoint every this many steps, and at the end
    heatmap_every: Annotated[int, Int(0)] = 0  # W&B attention heatmaps every this many steps (0: never)
    fast_path: bool = True  # fused forward (tested equal to the TransformerLens forward)
    # torch.compile the training step: on, off, or auto (on iff the run is long enough that the
    # measured gain repays the compile time: training/compilation.py)
    compile: Compile = "auto"
    attention_probes: bool = True  # evaluations: score_acc, score2_acc, ... (attention patterns)

    def __post_init__(self) -> None:
        check_seed(self.seed, "--seed")
        check_seed(self.eval_seed, "--eval-seed")
        super().__post_init__()


SECTIONS = ("task", "model", "optim", "run")


TASK_NAME = "task_name"  # the key of `to_dict` naming the task (absent in older run configs: the default)


@dataclass(frozen=True)
class TrainConfig:
    """One training run: a task, a transformer, an optimizer and the run's seeds and cadences.

    `task` is the config of any registered task (`tasks.registry`); its type says which task. The
    annotation names the default task's config, whose flags `birth train` shows flat."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        task_of_config(self.task)  # a config no task registered is refused here
        check_clamps(self.optim.clamp, self.model, self.run.fast_path)
        if (
            self.optim.loss_on == "outputs"
            and isinstance(self.task, TaskConfig)
            and self.task.n_triggers == 0
        ):
            raise ValueError(
                "--n-triggers 0 leaves no target for --loss-on outputs (targets after a trigger); "
                "use --loss-on all to train on the bigrams alone"
            )

    @property
    def task_name(self) -> str:
        """The registered name of the run's task (`birth train --task NAME`)."""
        return task_of_config(self.task).name

    def build_task(self, device: str | torch.device = "cpu") -> Task:
        """The run's task on `device`; the checks that need its vocabulary run here."""
        return build_task(self.task, device)

    def validate(self, vocab_size: int | None = None) -> None:
        """The checks that need the vocabulary size N (the others ran at construction): building
        the task, or for the triggered-bigram task checking against a given N."""
        if vocab_size is not None and isinstance(self.task, TaskConfig):
            self.task.validate(vocab_size)
        else:
            task = self.build_task()
            check_task_clamps(parse_clamps(self.optim.clamp), task)

    def build_model(self, vocab_size: int | None = None, device: str | torch.device = "cpu") -> nn.Module:
        """The run's model: its architecture, T positions, the task's N tokens (`vocab_size`
        overrides it), seeded by the run's seed."""
        n = self.build_task().vocab_size if vocab_size is None else vocab_size
        return build_model(
            self.model, n_ctx=self.task.seq_len, vocab_size=n, seed=self.run.seed, device=device
        )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with fields changed by their flat names (`lr=0.1, d_model=64`) or whole sections."""
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in changes.items():
            if key in SECTIONS:
                sections[key] = {"__whole__": value}
                continue
            owner = [s for s in SECTIONS if key in _field_names(getattr(self, s))]
            if not owner:
                raise ValueError(f"unknown config field {key!r}")
            sections[owner[0]][key] = value
        new = {}
        for name, fields in sections.items():
            current = getattr(self, name)
            if "__whole__" in fields:
                current = fields.pop("__whole__")
            new[name] = dataclasses.replace(current, **fields) if fields else current
        return TrainConfig(**new)

    def to_dict(self) -> dict[str, Any]:
        """{"task_name": NAME, "task": {...}, "model": {...}, "optim": {...}, "run": {...}}."""
        return {TASK_NAME: self.task_name, **{name: _section_dict(getattr(self, name)) for name in SECTIONS}}

    @classmethod
    def from_dict(cls, obj: Any, source: str = "config") -> TrainConfig:
        """Parse a nested dict (as written by to_dict), checking names and types; the task section
        is read as the config of the task `task_name` names (default: triggered-bigram)."""
        if not isinstance(obj, dict):
            raise ValueError(f"{source}: expected a mapping, got {type(obj).__name__}")
        name = obj.get(TASK_NAME, DEFAULT_TASK)
        if not isinstance(name, str):
            raise ValueError(f"{source}.{TASK_NAME} must be a string, got {name!r}")
        try:
            spec = get_task(name)
        except ValueError as err:
            raise ValueError(f"{source}.{TASK_NAME}: {err}") from None
        sections = {k: v for k, v in obj.items() if k != TASK_NAME}
        task = config_from_dict(spec.config, sections.pop("task", {}), f"{source}.task")
        rest = config_from_dict(_WithoutTask, sections, source)
        return cls(task=task, model=rest.model, optim=rest.optim, run=rest.run)


@dataclass(frozen=True)
class _WithoutTask:
    """The sections of a TrainConfig other than its task (what `from_dict` reads with their types)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _field_names(section: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(section)}


def _section_dict(section: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# The paper's Fig. 3 setting (README of the reference code), with its embedding scale: token and
# positional embeddings N(0, 1) per coordinate, which its SGD learning rate of 0.03 assumes.
PAPER = TrainConfig(model=ModelConfig(unit_embeddings=True))

# CPU-friendly: the paper preset's optimizer, embedding scale and loss at
# d=128, T=64, batch 128, zero-initialized W_K¹, W_K², W_O², random triggers (for which the W_KQ2
# probe ranks all 65 tokens). docs/tuning.md has the settings tried and what they gave.
QUICK = PAPER.replace(
    d_model=128,
    seq_len=64,
    batch_size=128,
    trigger_mode="random",
    trainable_init="zero",
    steps=2000,
    eval_every=10,
    eval_batch_size=256,
    checkpoint_every=500,
)

# The reference full model (`birth.models.transformer.FULL_MODEL`: 2 layers, 4 heads, pre-LayerNorm, ReLU MLPs of
# width 4d, trained embeddings) with its optimizer (AdamW lr 0.01, weight decay 0.01, betas
# (0.9, 0.99), batch 64, loss on all tokens) at a CPU size: d = 64 (4 heads of width 16) and T = 128
# instead of d = 128 and T = 256. docs/results.md has the sizes tried, what they reach and how fast.
FULL = TrainConfig(
    task=TaskConfig(seq_len=128),
    model=dataclasses.replace(FULL_MODEL, d_model=64),
    optim=OptimConfig(
        optimizer="adamw",
        lr=0.01,
        betas=(0.9, 0.99),
        weight_decay=0.01,
        batch_size=64,
        steps=1500,
        loss_on="all",
    ),
    run=RunConfig(eval_every=25, eval_batch_size=256, checkpoint_every=500),
)

# The simplified model of the quick preset plus a trainable linear W_F after the second attention
# layer (`birth.models.transformer.SIMPLIFIED_FFN`), trained on all tokens: W_F can hold the global bigrams,
# which the attention-only model has to squeeze into W_O² next to the induction head's copy. Fixed
# triggers (the paper's): the W_F probe then leaves out the K triggers, whose next token is never a
# bigram, as the reference's does.
SIMPLIFIED_FFN_PRESET = QUICK.replace(mlp="linear", mlp_layers="final", loss_on="all", trigger_mode="fixed")

PRESETS: MappingProxyType[str, TrainConfig] = MappingProxyType(
    {"quick": QUICK, "paper": PAPER, "full": FULL, "simplified-ffn": SIMPLIFIED_FFN_PRESET}
)
PresetName = Literal["quick", "paper", "full", "simplified-ffn"]
