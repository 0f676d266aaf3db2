"""The configuration of a training run: four frozen sections and the named presets.

    TrainConfig(task=TaskConfig(...), model=ModelConfig(...), optim=OptimConfig(...), run=RunConfig(...))

Field names are unique across the sections, so the command line flattens them (`--seq-len`,
`--d-model`, `--lr`, `--seed`) and `TrainConfig.replace(lr=0.1, d_model=64)` takes them flat too.
Every section validates itself in `__post_init__` with a message naming the flag; the checks that
need the vocabulary size are in `TrainConfig.validate(vocab_size)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

import torch
from torch import nn

from birth.base.config_io import config_from_dict
from birth.base.seeds import check_seed
from birth.base.validate import check_float, check_int
from birth.models.transformer import FULL_MODEL, ModelConfig, build_model
from tasks.triggered_bigram import TaskConfig

Optimizer = Literal["sgd", "adamw"]
LossOn = Literal["outputs", "all"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
LOSS_ON: tuple[str, ...] = get_args(LossOn)


@dataclass(frozen=True)
class OptimConfig:
    """What is trained and how."""

    optimizer: Optimizer = "sgd"  # SGD with momentum, or AdamW
    lr: float = 0.03  # learning rate
    momentum: float = 0.9  # SGD momentum (AdamW uses --betas)
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW betas (the reference full model's)
    weight_decay: float = 1e-4  # decoupled for AdamW, L2 for SGD
    batch_size: int = 512  # sequences per step (fresh data every step)
    steps: int = 1000  # optimizer steps
    loss_on: LossOn = "outputs"  # outputs: targets with counter >= 2 (paper Fig. 3); all: every target
    schedule: str = ""  # when each matrix trains: "W_K1:300,W_O2:0-500,W_K2:off" (unnamed ones: always)
    init_at_target: str = ""  # matrices (W_O2, W_K2, W_K1) that start at their hand-built target memory
    target_scale: float = 30.0  # --init-at-target: logit (W_O2) or attention score (W_K) of a stored pair

    def __post_init__(self) -> None:
        from training.schedule import parse_schedule, parse_targets

        parse_schedule(self.schedule)
        parse_targets(self.init_at_target)
        check_float("target_scale", self.target_scale, 0.0, open_low=True)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"--loss-on must be one of {LOSS_ON}, got {self.loss_on!r}")
        check_float("lr", self.lr, 0.0, open_low=True)
        check_float("momentum", self.momentum, 0.0, 1.0, open_high=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        if len(self.betas) != 2:
            raise ValueError(f"--betas takes two numbers, got {self.betas!r}")
        for beta in self.betas:
            check_float("betas", beta, 0.0, 1.0, open_high=True)
        check_int("batch_size", self.batch_size, 1)
        check_int("steps", self.steps, 0)


@dataclass(frozen=True)
class RunConfig:
    """Seeds, evaluation and checkpoints."""

    seed: int = 0  # model init; the batch of step t is drawn from a generator seeded by (seed, t)
    eval_seed: int = 1_000_003  # seed of the fixed held-out batch
    eval_every: int = 10  # evaluate (metrics and probes) every this many steps, and at the end
    eval_batch_size: int = 512  # held-out sequences
    checkpoint_every: int = 100  # checkpoint every this many steps, and at the end
    heatmap_every: int = 0  # W&B attention heatmaps every this many steps (0: never)
    fast_path: bool = True  # fused forward (tested equal to the TransformerLens forward)
    attention_probes: bool = True  # evaluations: score_acc, score2_acc, ... (TransformerLens forward, hooks)

    def __post_init__(self) -> None:
        check_seed(self.seed, "--seed")
        check_seed(self.eval_seed, "--eval-seed")
        for name in ("eval_every", "eval_batch_size", "checkpoint_every"):
            check_int(name, getattr(self, name), 1)
        check_int("heatmap_every", self.heatmap_every, 0)


SECTIONS = ("task", "model", "optim", "run")


@dataclass(frozen=True)
class TrainConfig:
    """One training run of the triggered-bigram transformer."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.optim.loss_on == "outputs" and self.task.n_triggers == 0:
            raise ValueError(
                "--n-triggers 0 leaves no target for --loss-on outputs (targets after a trigger); "
                "use --loss-on all to train on the bigrams alone"
            )

    def validate(self, vocab_size: int) -> None:
        """The checks that need the vocabulary size (the others ran at construction)."""
        self.task.validate(vocab_size)

    def build_model(self, vocab_size: int = 65, device: str | torch.device = "cpu") -> nn.Module:
        """The run's model: its architecture, T positions, seeded by the run's seed."""
        return build_model(
            self.model, n_ctx=self.task.seq_len, vocab_size=vocab_size, seed=self.run.seed, device=device
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

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: _section_dict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, obj: Any, source: str = "config") -> TrainConfig:
        """Parse a nested dict (as written by to_dict), checking names and types."""
        return config_from_dict(cls, obj, source)


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

# CPU-friendly (about a minute on 2 cores): the paper preset's optimizer, embedding scale and loss at
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
