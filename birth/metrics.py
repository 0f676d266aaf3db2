"""Curve metrics shared by training, plots and experiments."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tasks.triggered_bigram import Batch


def first_crossing(steps: Sequence[int], values: Iterable[float | None], threshold: float) -> int | None:
    """First step whose value is >= `threshold` (None if never; missing or NaN values never count)."""
    for step, value in zip(steps, values):
        if value is not None and not math.isnan(value) and value >= threshold:
            return int(step)
    return None


def first_crossing_below(
    steps: Sequence[int], values: Iterable[float | None], threshold: float
) -> int | None:
    """First step whose value is <= `threshold` (a loss reaching its floor); None if never."""
    return first_crossing(steps, (None if v is None else -v for v in values), -threshold)


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and population standard deviation of the values that exist (None and NaN skipped)."""
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return float("nan"), float("nan")
    return statistics.fmean(clean), statistics.pstdev(clean) if len(clean) > 1 else 0.0


# --- held-out metrics of the triggered-bigram task (paper Fig. 3) -------------------------------

LossOn = Literal["outputs", "all"]


def loss_mask(batch: Batch, loss_on: LossOn) -> torch.Tensor:
    """Targets the loss is taken on: counter >= 2 (outputs after a repeated trigger) or all."""
    if loss_on == "outputs":
        return batch.counter >= 2
    return torch.ones_like(batch.counter, dtype=torch.bool)


@torch.no_grad()
def bigram_floor(batch: Batch, bigram: torch.Tensor) -> float:
    """The Bayes loss of the bigram targets (counter == 0): the mean entropy H(π_b(·|z_t)) in nats
    over the batch's counter-0 positions t, `bigram` [N, N] the rows π_b(·|k) (NaN without such a
    position). There the next token is drawn from π_b(·|z_t) whatever came before, so no model's
    expected cross-entropy on those targets (`eval/bigram_loss`) is below it."""
    mask = batch.counter == 0
    if not mask.any():
        return float("nan")
    rows = bigram.to(device=batch.inputs.device, dtype=torch.float64)
    entropy = -torch.special.xlogy(rows, rows).sum(dim=-1)  # [N]; 0 log 0 = 0
    return entropy[batch.inputs[mask]].mean().item()


def named_matrices(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every weight matrix of a `birth.models.transformer` transformer by its name (layers numbered from 1):
    W_Q1, W_K1, W_V1, W_O1, ... per attention layer, W_in1, W_out1, ... per feed-forward layer
    (a linear W_F is W_out of its layer), and W_E, W_U, W_pos (absent with rotary positions).

    The names are those of `--schedule` and of the `norm/` and `grad_norm/` metrics."""
    from birth.models.transformer import attn_linear, mlp_linear, model_config, native

    config = model_config(model)
    out: dict[str, nn.Parameter] = {}
    for layer in range(config.n_layers):
        for name in ("q", "k", "v", "o"):
            out[f"W_{name.upper()}{layer + 1}"] = attn_linear(model, layer, name).weight
        if config.has_mlp(layer):
            out[f"W_in{layer + 1}"] = mlp_linear(model, layer, "in").weight
            out[f"W_out{layer + 1}"] = mlp_linear(model, layer, "out").weight
    nm = native(model)
    out["W_E"] = nm.tok_embed.weight
    out["W_U"] = nm.head.weight
    if nm.pos is not None:
        out["W_pos"] = nm.pos.weight
    return out


@torch.no_grad()
def gradient_norms(matrices: Mapping[str, nn.Parameter]) -> dict[str, float]:
    """`grad_norm/NAME`: the Frobenius norm of each matrix's gradient, for those that hold one (a
    matrix frozen at this step by `--schedule` has none)."""
    return {f"grad_norm/{name}": p.grad.norm().item() for name, p in matrices.items() if p.grad is not None}


def trained_matrices(model: nn.Module) -> dict[str, nn.Parameter]:
    """The matrices of `named_matrices` that train (requires_grad), e.g. W_K1, W_K2, W_O2."""
    return {name: p for name, p in named_matrices(model).items() if p.requires_grad}


def _reads_raw_embeddings(model: nn.Module) -> bool:
    """One head per layer, no LayerNorm, additive positions: the margin and position readings
    (`probes.margins`) read the raw embeddings, as the simplified model's memories store them."""
    from birth.models.transformer import model_config

    config = model_config(model)
    return config.n_heads == 1 and config.normalization == "none" and config.positions != "rotary"


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batch: Batch,
    *,
    loss_on: LossOn = "outputs",
    fast_path: bool = True,
    probe_triggers: torch.Tensor | None = None,
    attention_probes: bool = False,
    matrices: Mapping[str, nn.Parameter] | None = None,
    bigram: torch.Tensor | None = None,
) -> dict[str, float]:
    """Held-out metrics: loss on the trained targets, in-context accuracy (counter >= 2),
    first-occurrence accuracy (counter == 1), accuracy after any trigger (counter >= 1), bigram
    loss and accuracy (counter == 0), and the memory-recall probes (`probes/`).

    With one head per layer and no LayerNorm, also the non-saturating readings of the probes
    (`probes.margins`): `margin/W_OV2`, `margin/W_KQ2`, `margin/W_KQ1` (normalized margins over all
    candidates), `recall_all/W_KQ2` (W_KQ² against all N tokens) and the W_KQ¹ probe by position,
    `kq1/W_KQ1_64` (the reference's wk0_64) and `kq1/pos_LLL-HHH`.

    `attention_probes` (2+ layers, one head each): the attention probes of the reference code on
    this batch, from one TransformerLens forward with hooks that replaces the fast path:
    `attn/score_acc`, `attn/score2_acc`, `attn/pred_attended_acc` and the attention masses
    `attn/prev_mass`, `attn/induction_mass` (`probes.attention.circuit_probes`).

    `matrices` (name -> parameter, e.g. `trained_matrices(model)`): `norm/NAME`, the Frobenius
    norm (the training loop adds `grad_norm/NAME`, `gradient_norms`, once it has the gradient of
    the step that starts from these parameters).

    `bigram` (the [N, N] table π_b): `probes/W_F_kl`, the W_F probe (`probes.recall.ff_bigram_kl`,
    over the tokens outside `probe_triggers`), when the last layer has a feed-forward layer.

    `fast_path` applies to the architectures `birth.models.transformer.supports_fast_path` accepts; the others
    are evaluated through the TransformerLens forward.
    """
    from birth.models.transformer import fast_logits, model_config, supports_fast_path
    from probes.recall import all_probes

    config = model_config(model)
    circuit = attention_probes and config.n_layers >= 2 and config.n_heads == 1
    patterns: list[torch.Tensor] = []
    if circuit:
        from probes.attention import forward_with_patterns

        logits, patterns = forward_with_patterns(model, batch.inputs)
    else:
        fast = fast_path and supports_fast_path(config)
        logits = fast_logits(model, batch.inputs) if fast else model(batch.inputs)
    targets, counter = batch.targets, batch.counter
    predictions = logits.argmax(dim=-1)
    correct = predictions == targets

    def acc(mask: torch.Tensor) -> float:
        return correct[mask].float().mean().item() if mask.any() else float("nan")

    def ce(mask: torch.Tensor) -> float:
        return F.cross_entropy(logits[mask], targets[mask]).item() if mask.any() else float("nan")

    row = {
        "eval/loss": ce(loss_mask(batch, loss_on)),
        "eval/icl_acc": acc(counter >= 2),
        "eval/first_acc": acc(counter == 1),
        "eval/trigger_acc": acc(counter >= 1),
        "eval/bigram_loss": ce(counter == 0),
        "eval/bigram_acc": acc(counter == 0),
    }
    for name, value in all_probes(model, probe_triggers, bigram).items():
        row[f"probes/{name}"] = value
    if _reads_raw_embeddings(model):
        from probes.margins import kq1_position_recall, margin_probes, recall_all_kq2

        for name, value in margin_probes(model, probe_triggers).items():
            row[f"margin/{name}"] = value
        if config.n_layers >= 2:
            row["recall_all/W_KQ2"] = recall_all_kq2(model, probe_triggers)
            for name, value in kq1_position_recall(model).items():
                row[f"kq1/{name}"] = value
    if circuit:
        from probes.attention import circuit_probes

        for name, value in circuit_probes(
            patterns[0], patterns[1], batch.inputs, counter, predictions
        ).items():
            row[f"attn/{name}"] = value
    for name, p in (matrices or {}).items():
        row[f"norm/{name}"] = p.detach().norm().item()
    return row
