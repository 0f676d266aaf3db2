"""Pieces the factual-recall experiments share (recall-tradeoff, recall-dynamics): the one-layer
transformer they train on the task `factual-recall` (tasks/factual_recall.py) through the one
trainer, and its exact accuracy over every fact, whole or with a component ablated.

The model: one layer of multi-head self-attention followed by a ReLU MLP (the full model's options:
`--variant full`, no LayerNorm, no biases), token and positional embeddings random and frozen (the
associative-memory view: the trained matrices store the facts), the output layer trained. The
relation is the last input by default (layout "relation-last"): its embedding is then the
attention's query, through which the value path can store facts of (subject, relation) pairs; with
both at random positions only the MLP can combine them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from birth.base.validate import Int, Validated
from birth.experiments.common import Positive, experiment_train
from birth.models.config import ModelConfig
from tasks.factual_recall import FACT_ACC, RELATION_ACC, FactualRecall, FactualRecallConfig, Layout
from training.config import OptimConfig, RunConfig, TrainConfig

Ablation = Literal["none", "mlp", "value"]
# what each ablation zeroes: the MLP's output, or the attention's values (so its whole output)
ABLATION_HOOKS: dict[str, str] = {"mlp": "blocks.0.hook_mlp_out", "value": "blocks.0.attn.hook_v"}
ALL_FACTS_SEED = 7_000_003  # noise and positions of the sequences that enumerate every fact
# the task and run length of the experiments' small(): a few seconds, for the tests
SMALL_FACTS = dict(n_subjects=8, n_relations=2, answers_per_relation=4, n_noise=4, seq_len=4, steps=60)


@dataclass(frozen=True)
class FactsConfig(Validated):
    """The task and the training shared by the factual-recall experiments."""

    n_subjects: Annotated[int, Int(1)] = 32  # S subjects
    n_relations: Annotated[int, Int(1)] = 4  # R relations (S R facts)
    answers_per_relation: Annotated[int, Int(2)] = 8  # D answers per relation
    n_noise: Annotated[int, Int(1)] = 16  # noise tokens
    seq_len: Annotated[int, Int(2)] = 8  # T input tokens
    layout: Layout = "relation-last"  # where the relation sits (random: anywhere, like the subject)
    n_heads: Annotated[int, Int(1)] = 2  # attention heads (head width d / heads)
    lr: Positive = 0.01  # AdamW learning rate (no weight decay)
    batch_size: Annotated[int, Int(1)] = 128  # sequences per step (fresh every step)
    steps: Annotated[int, Int(1)] = 400  # training steps per run
    eval_every: Annotated[int, Int(1)] = 50  # evaluation cadence of each run
    seed: Annotated[int, Int(0)] = 0  # model seed of the first run (and the fact table's)

    def task(self) -> FactualRecallConfig:
        return FactualRecallConfig(
            n_subjects=self.n_subjects,
            n_relations=self.n_relations,
            answers_per_relation=self.answers_per_relation,
            n_noise=self.n_noise,
            seq_len=self.seq_len,
            layout=self.layout,
            facts_seed=self.seed,
        )

    def train_config(
        self,
        d_model: int,
        mlp_multiple: int,
        seed: int,
        *,
        n_heads: int | None = None,
        head_width: int | None = None,
    ) -> TrainConfig:
        """The run of a model of width d with an MLP of width mlp_multiple x d (0: no MLP) and an
        attention of n_heads (default --n-heads) heads of width head_width (default d / heads)."""
        heads = self.n_heads if n_heads is None else n_heads
        if head_width is None and d_model % heads:
            raise ValueError(f"--n-heads {heads} must divide every d, got d = {d_model}")
        model = ModelConfig(
            n_layers=1,
            d_model=d_model,
            variant="full",
            n_heads=heads,
            head_width=head_width,
            mlp="relu" if mlp_multiple else "none",
            mlp_width=max(mlp_multiple, 1),
            normalization="none",
            embeddings="frozen",
            biases=False,
        )
        optim = OptimConfig(
            optimizer="adamw", lr=self.lr, weight_decay=0.0, batch_size=self.batch_size, steps=self.steps
        )
        run = RunConfig(seed=seed, eval_every=self.eval_every, eval_batch_size=512, attention_probes=False)
        return experiment_train(TrainConfig(task=self.task(), model=model, optim=optim, run=run))


def parameter_counts(d_model: int, mlp_multiple: int, attention_width: int | None = None) -> dict[str, int]:
    """Trained parameters of the attention (W_Q, W_K, W_V, W_O: 4 d a, with a = heads x head
    width, d by default), of its value path (W_V, W_O: 2 d a) and of the MLP (2 m d with
    m = multiple x d)."""
    width = d_model if attention_width is None else attention_width
    return {
        "attention": 4 * d_model * width,
        "value_path": 2 * d_model * width,
        "mlp": 2 * mlp_multiple * d_model * d_model,
    }


@torch.no_grad()
def fact_accuracy(model: nn.Module, task: FactualRecall, ablation: Ablation = "none") -> dict[str, float]:
    """Exact accuracy over the S R facts (one sequence each) and the fraction of answers in the
    relation's answer set, with a component's output zeroed."""
    batch = task.all_facts(task.generator(ALL_FACTS_SEED))
    hooks = [] if ablation == "none" else [(ABLATION_HOOKS[ablation], lambda x, hook: torch.zeros_like(x))]
    logits = model.run_with_hooks(batch.inputs, fwd_hooks=hooks)
    metrics = task.metrics(logits, batch)
    return {"fact_acc": metrics[FACT_ACC], "relation_acc": metrics[RELATION_ACC]}
