"""`probe-validity`: are the memory-recall probes causal? For each memory, remove it from the heads
the probe says store it, then from the heads it says do not, and read the in-context accuracy.

Four models are trained and probed (`probes.recall.all_probes`: the layer readings for the full
model, the paper's for the simplified one), with fixed and with random triggers: the full model
(the `full` preset at T = 64; random triggers at d = 128, where its induction head forms) and the
simplified model with its three memories written at their hand-built targets (`--init-at-target`,
a few steps). The heads are named from the weights alone:

- W_KQ1 (previous-token memory): the layer-0 heads whose attention from t+1 on t
  (`probes.recall.previous_token_weights`) is at least half the best head's;
- W_KQ2 and W_OV2 (induction memories): the last layer's heads whose induction attention
  (`probes.recall.induction_weights`) is at least half the best head's.

Each memory is removed on the held-out batch as the probe defines it, and nothing else of the
heads: an attention memory loses the attention it puts on the keys it names (W_KQ1: query t on key
t - 1; W_KQ2: query t on the keys after the earlier occurrences of its token), that mass spread
uniformly over the causal window, the rest of the heads' pattern kept; the copy memory (W_OV2)
loses the heads' values (replaced by their mean over the batch and positions). The in-context
accuracy must fall when the named heads lose the memory and stay when the other heads of the
layer do. The whole heads' ablation (pattern replaced by the uniform causal one, or the mean
values) is reported beside it, not judged: a head that stores no part of a memory can still carry
something else the circuit needs (docs/model.md, "Probes of the full model").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Validated
from birth.experiments.common import Train, eval_batch, probe_triggers, train_run, trained_model
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import full_train, quick, tiny
from birth.models.transformer import model_config
from probes.attention import after_earlier_occurrences, head_patterns
from probes.recall import all_probes, in_context_trigger_shares, induction_weights, previous_token_weights
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import Batch

MEMORIES = ("W_OV2", "W_KQ2", "W_KQ1")
NAMED_FRACTION = 0.5  # a head is named when its weight is at least this fraction of the best head's
# what an ablation removes: the memory's attention on its keys ("previous_token": query t on key
# t - 1; "induction": query t on the keys after its token's earlier occurrences), the whole pattern
# ("pattern": uniform causal), or the values ("values": their mean)
Ablation = Literal["previous_token", "induction", "pattern", "values"]
MEMORY_ABLATION: dict[str, Ablation] = {"W_OV2": "values", "W_KQ2": "induction", "W_KQ1": "previous_token"}
WHOLE_HEAD_ABLATION: dict[str, Ablation] = {"W_OV2": "values", "W_KQ2": "pattern", "W_KQ1": "pattern"}


def _full_quick() -> Train:
    """The full preset at T = 64, trained until its in-context accuracy is past 0.9."""
    return full_train().replace(seq_len=64, steps=400, eval_every=50)


def _full_random() -> Train:
    """The full preset with random triggers at d = 128, T = 64 (the issue's run), trained until its
    in-context accuracy is past 0.9: random triggers need more steps and, at d = 64, more width."""
    return full_train().replace(seq_len=64, d_model=128, trigger_mode="random", steps=1500, eval_every=250)


def _simplified_at_target(trigger_mode: Literal["fixed", "random"] = "fixed") -> Train:
    """The quick preset's simplified model with its three memories at their targets."""
    return quick(init_at_target="W_O2,W_K2,W_K1", trigger_mode=trigger_mode, steps=10, eval_every=10)


def _small_simplified(trigger_mode: Literal["fixed", "random"]) -> Train:
    return _simplified_at_target(trigger_mode).replace(
        steps=2, eval_every=2, batch_size=8, eval_batch_size=64
    )


@dataclass(frozen=True)
class ProbeValidityConfig(Validated):
    full: Train = field(default_factory=_full_quick)  # the full model, fixed triggers
    full_random: Train = field(default_factory=_full_random)  # the full model, random triggers
    simplified: Train = field(default_factory=_simplified_at_target)  # the simplified model, fixed
    simplified_random: Train = field(default_factory=lambda: _simplified_at_target("random"))  # ... random
    device: Device = "auto"  # where the runs train (auto: CUDA when present); ablations run on the CPU

    def runs(self) -> dict[str, Train]:
        """The models by the name the result reports them under."""
        return {
            "full": self.full,
            "full-random": self.full_random,
            "simplified": self.simplified,
            "simplified-random": self.simplified_random,
        }


@dataclass(frozen=True)
class MemoryAblation:
    probe: float  # the probe's value (the reading `all_probes` reports)
    named_heads: list[str]  # heads the probe's weights say store the memory ("l1h0")
    other_heads: list[str]  # the other heads of that layer
    acc_named_ablated: float  # in-context accuracy with the memory removed from the named heads
    acc_others_ablated: float | None  # ... from the other heads (None: every head is named)
    acc_named_heads_removed: float  # ... with the named heads removed whole (reported, not judged)
    acc_other_heads_removed: float | None  # ... the other heads removed whole


@dataclass(frozen=True)
class ModelAblations:
    icl_acc: float  # in-context accuracy of the intact model on the held-out batch
    memories: dict[str, MemoryAblation]
    head_weights: dict[str, list[float]]  # "previous_token" (layer 0), "induction" (last layer)
    # the layer-0 heads' held-out attention: "previous_token" (query t on key t - 1) and
    # "own_token" (on the positions holding the query's token: itself and its earlier occurrences)
    first_layer_attention: dict[str, list[float]]

    def holds(self, fall: float = 0.2, keep: float = 0.05) -> bool:
        """Every named ablation costs at least `fall` of accuracy, every other one at most `keep`."""
        for m in self.memories.values():
            if self.icl_acc - m.acc_named_ablated < fall:
                return False
            if m.acc_others_ablated is not None and self.icl_acc - m.acc_others_ablated > keep:
                return False
        return True


@dataclass(frozen=True)
class ProbeValidityResult(ExperimentResult):
    models: dict[str, ModelAblations]  # "full", "full-random", "simplified", "simplified-random"

    def headline(self) -> str:
        parts = []
        for name, m in self.models.items():
            rows = ", ".join(
                f"{k} {a.probe:.2f} (named {'+'.join(a.named_heads)} → {a.acc_named_ablated:.2f}, others "
                + ("none" if a.acc_others_ablated is None else f"→ {a.acc_others_ablated:.2f}")
                + ")"
                for k, a in m.memories.items()
            )
            parts.append(f"{name}: accuracy {m.icl_acc:.3f}; {rows}; {'holds' if m.holds() else 'FAILS'}")
        return "probe validity by ablation — " + " | ".join(parts)


# ---------------------------------------------------------------------------------------------
# ablations
# ---------------------------------------------------------------------------------------------


def memory_keys(ablation: Ablation, tokens: torch.Tensor) -> torch.Tensor:
    """[B, T, T] bool: the keys an attention memory names for each query of `tokens` [B, T] —
    "previous_token" (W_KQ1) the key t - 1, "induction" (W_KQ2) the keys after the earlier
    occurrences of the query's token (`probes.attention.after_earlier_occurrences`)."""
    if ablation == "induction":
        return after_earlier_occurrences(tokens)
    if ablation != "previous_token":
        raise ValueError(f"{ablation!r} names no keys")
    B, T = tokens.shape
    return torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril(-1).triu(-1).expand(B, T, T)


def _uniform_causal(T: int, device: torch.device) -> torch.Tensor:
    causal = torch.ones(T, T, device=device).tril()
    return causal / causal.sum(dim=-1, keepdim=True)


def remove_keys(pattern: torch.Tensor, heads: list[int], keys: torch.Tensor) -> torch.Tensor:
    """`pattern` [B, H, T, T] with the attention heads `heads` put on `keys` ([B, T, T] bool)
    removed and spread uniformly over each query's causal window: the memory those keys stand for
    is gone, the rest of what the heads attend to is kept, and every row still sums to 1."""
    out = pattern.clone()
    part = out[:, heads]
    on_keys = part * keys.unsqueeze(1)
    removed = on_keys.sum(dim=-1, keepdim=True)
    out[:, heads] = part - on_keys + removed * _uniform_causal(pattern.shape[-1], pattern.device)
    return out


def _hook(ablation: Ablation, heads: list[int], tokens: torch.Tensor):
    def pattern(p: torch.Tensor, hook) -> torch.Tensor:  # [B, H, T, T]
        p = p.clone()
        p[:, heads] = _uniform_causal(p.shape[-1], p.device)
        return p

    def values(v: torch.Tensor, hook) -> torch.Tensor:  # [B, T, H, d_head]
        v = v.clone()
        v[:, :, heads] = v[:, :, heads].mean(dim=(0, 1), keepdim=True)
        return v

    def keys(p: torch.Tensor, hook) -> torch.Tensor:
        return remove_keys(p, heads, memory_keys(ablation, tokens).to(p.device))

    return {"pattern": pattern, "values": values}.get(ablation, keys)


@torch.no_grad()
def ablated_icl_acc(
    model: nn.Module, batch: Batch, layer: int, heads: list[int], ablation: Ablation
) -> float:
    """In-context accuracy (counter >= 2) with heads `heads` of `layer` ablated (`Ablation`)."""
    name = f"blocks.{layer}.attn.hook_v" if ablation == "values" else f"blocks.{layer}.attn.hook_pattern"
    hooks = [(name, _hook(ablation, heads, batch.inputs))] if heads else []
    logits = model.run_with_hooks(batch.inputs, fwd_hooks=hooks)
    mask = batch.counter >= 2
    return (logits.argmax(dim=-1) == batch.targets)[mask].float().mean().item()


def named_heads(weights: torch.Tensor) -> list[int]:
    """The heads whose weight is at least NAMED_FRACTION of the best head's."""
    return [h for h, w in enumerate(weights.tolist()) if w >= NAMED_FRACTION * float(weights.max())]


@torch.no_grad()
def first_layer_attention(model: nn.Module, tokens: torch.Tensor) -> dict[str, list[float]]:
    """Per layer-0 head, its mean held-out attention from query t (t >= 1) on key t - 1
    ("previous_token") and on the positions s <= t holding query t's token ("own_token")."""
    _, patterns = head_patterns(model, tokens)
    pattern = patterns[0][:, :, 1:]  # [B, H, T-1, T]: queries t >= 1
    previous = torch.diagonal(patterns[0], offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))
    own = (tokens.unsqueeze(2) == tokens.unsqueeze(1)).tril()[:, 1:].unsqueeze(1)
    return {
        "previous_token": previous.tolist(),
        "own_token": (pattern * own).sum(dim=-1).mean(dim=(0, 2)).tolist(),
    }


def _memory_ablation(
    model: nn.Module, batch: Batch, memory: str, layer: int, named: list[int], probe: float
) -> MemoryAblation:
    others = [h for h in range(model_config(model).n_heads) if h not in named]

    def acc(heads: list[int], ablation: Ablation) -> float:
        return ablated_icl_acc(model, batch, layer, heads, ablation)

    memory_ablation, whole = MEMORY_ABLATION[memory], WHOLE_HEAD_ABLATION[memory]
    return MemoryAblation(
        probe=probe,
        named_heads=[f"l{layer}h{h}" for h in named],
        other_heads=[f"l{layer}h{h}" for h in others],
        acc_named_ablated=acc(named, memory_ablation),
        acc_others_ablated=acc(others, memory_ablation) if others else None,
        acc_named_heads_removed=acc(named, whole),
        acc_other_heads_removed=acc(others, whole) if others else None,
    )


def ablate_memories(model: nn.Module, batch: Batch, triggers: torch.Tensor | None) -> ModelAblations:
    """The probes of `model`, the heads they name and the accuracy with each memory ablated."""
    last = model_config(model).n_layers - 1
    trigger_weights = None
    if triggers is None:  # random triggers: W_KQ2 weighs the tokens as the training run logs it
        trigger_weights = in_context_trigger_shares(batch.inputs, batch.counter, model.W_E.shape[0])
    probes = all_probes(model, triggers, None, trigger_weights)
    weights = {
        "previous_token": previous_token_weights(model),
        "induction": induction_weights(model, triggers),
    }
    layers = {"W_OV2": (last, "induction"), "W_KQ2": (last, "induction"), "W_KQ1": (0, "previous_token")}
    memories = {
        memory: _memory_ablation(model, batch, memory, layer, named_heads(weights[kind]), probes[memory])
        for memory, (layer, kind) in layers.items()
    }
    return ModelAblations(
        icl_acc=ablated_icl_acc(model, batch, 0, [], "values"),
        memories=memories,
        head_weights={k: v.tolist() for k, v in weights.items()},
        first_layer_attention=first_layer_attention(model, batch.inputs),
    )


def plot_probe_validity(result: ProbeValidityResult, out_dir: Path) -> list[Path]:
    cols = min(2, len(result.models))
    fig, axes = new_figure(math.ceil(len(result.models) / cols), cols)
    for ax, (name, m) in zip(axes.flat, result.models.items()):
        x = np.arange(len(m.memories))
        named = [a.acc_named_ablated for a in m.memories.values()]
        others = [
            np.nan if a.acc_others_ablated is None else a.acc_others_ablated for a in m.memories.values()
        ]
        whole = [
            np.nan if a.acc_other_heads_removed is None else a.acc_other_heads_removed
            for a in m.memories.values()
        ]
        probes = [a.probe for a in m.memories.values()]
        ax.bar(x - 0.3, probes, 0.2, color="tab:gray", label="probe")
        ax.bar(x - 0.1, named, 0.2, color="tab:red", label="accuracy, memory removed from named heads")
        ax.bar(x + 0.1, others, 0.2, color="tab:blue", label="accuracy, memory removed from other heads")
        ax.bar(x + 0.3, whole, 0.2, color="tab:cyan", alpha=0.6, label="accuracy, other heads removed whole")
        ax.axhline(m.icl_acc, color="k", ls="--", lw=1, label="intact accuracy")
        labels = [f"{k}\n{'+'.join(a.named_heads)}" for k, a in m.memories.items()]
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name} model: intact accuracy {m.icl_acc:.3f}", fontsize=10)
        ax.set_ylabel("probe / in-context accuracy")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    return save_figure(fig, out_dir, "probe_validity")


@register(
    "probe-validity",
    family="transformer",
    summary="a memory removed from the heads its probe names costs in-context accuracy, from the others not",
    config=ProbeValidityConfig,
    plot=plot_probe_validity,
    small=lambda: ProbeValidityConfig(
        full=tiny(full_train()),
        full_random=tiny(full_train()).replace(trigger_mode="random"),
        simplified=_small_simplified("fixed"),
        simplified_random=_small_simplified("random"),
        device="cpu",
    ),
)
def run_probe_validity(
    config: ProbeValidityConfig, out_dir: Path, *, log=print, progress: bool = True
) -> ProbeValidityResult:
    stats = load_stats()
    models = {}
    for name, train in config.runs().items():
        log(f"[probe-validity] {name} model: {train.optim.steps} steps")
        train_run(train, out_dir, name, device=config.device, progress=progress, log=log)
        model = trained_model(out_dir, name)
        task, batch = eval_batch(train, stats)
        models[name] = ablate_memories(model, batch, probe_triggers(train, task))
        log(f"[probe-validity] {name}: {models[name]}")
    return ProbeValidityResult(models=models)
