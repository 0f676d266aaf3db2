"""`probe-validity`: are the memory-recall probes causal? For each memory, ablate the heads the probe
says store it, then the heads it says do not, and read the in-context accuracy.

A trained full model (the `full` preset at T = 64) and the simplified model with its three memories
written at their hand-built targets (`--init-at-target`, a few steps) are each probed
(`probes.recall.all_probes`: the layer readings for the full model, the paper's for the simplified
one) and the heads named from the weights alone:

- W_KQ1 (previous-token memory): the layer-0 heads whose attention from t+1 on t
  (`probes.recall.previous_token_weights`) is at least half the best head's;
- W_KQ2 and W_OV2 (induction memories): the last layer's heads whose induction attention
  (`probes.recall.induction_weights`) is at least half the best head's.

Each memory is then removed from those heads on the held-out batch, as the memory is stored: an
attention memory (W_KQ1, W_KQ2) by replacing the heads' attention pattern with the uniform causal
one, the copy memory (W_OV2) by replacing the heads' values with their mean over the batch and
positions. The in-context accuracy must fall when the named heads lose the memory, and stay when
the other heads of the same layer do.
"""

from __future__ import annotations

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
from probes.recall import all_probes, in_context_trigger_shares, induction_weights, previous_token_weights
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import Batch

MEMORIES = ("W_OV2", "W_KQ2", "W_KQ1")
NAMED_FRACTION = 0.5  # a head is named when its weight is at least this fraction of the best head's
Ablation = Literal["pattern", "values"]
ABLATION: dict[str, Ablation] = {"W_OV2": "values", "W_KQ2": "pattern", "W_KQ1": "pattern"}


def _full_quick() -> Train:
    """The full preset at T = 64, trained until its in-context accuracy is past 0.9."""
    return full_train().replace(seq_len=64, steps=400, eval_every=50)


def _simplified_at_target() -> Train:
    """The quick preset's simplified model with its three memories at their targets, fixed triggers."""
    return quick(init_at_target="W_O2,W_K2,W_K1", trigger_mode="fixed", steps=10, eval_every=10)


@dataclass(frozen=True)
class ProbeValidityConfig(Validated):
    full: Train = field(default_factory=_full_quick)  # the full model's training run
    simplified: Train = field(default_factory=_simplified_at_target)  # the simplified model's run
    device: Device = "auto"  # where the runs train (auto: CUDA when present); ablations run on the CPU


@dataclass(frozen=True)
class MemoryAblation:
    probe: float  # the probe's value (the reading `all_probes` reports)
    named_heads: list[str]  # heads the probe's weights say store the memory ("l1h0")
    other_heads: list[str]  # the other heads of that layer
    acc_named_ablated: float  # in-context accuracy with the memory removed from the named heads
    acc_others_ablated: float | None  # ... from the other heads (None: every head is named)


@dataclass(frozen=True)
class ModelAblations:
    icl_acc: float  # in-context accuracy of the intact model on the held-out batch
    memories: dict[str, MemoryAblation]
    head_weights: dict[str, list[float]]  # "previous_token" (layer 0), "induction" (last layer)

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
    models: dict[str, ModelAblations]  # "full", "simplified"

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


def _hook(ablation: Ablation, heads: list[int]):
    def pattern(p: torch.Tensor, hook) -> torch.Tensor:  # [B, H, T, T]
        T = p.shape[-1]
        uniform = torch.ones(T, T, device=p.device).tril()
        uniform = uniform / uniform.sum(dim=-1, keepdim=True)
        p = p.clone()
        p[:, heads] = uniform
        return p

    def values(v: torch.Tensor, hook) -> torch.Tensor:  # [B, T, H, d_head]
        v = v.clone()
        v[:, :, heads] = v[:, :, heads].mean(dim=(0, 1), keepdim=True)
        return v

    return pattern if ablation == "pattern" else values


@torch.no_grad()
def ablated_icl_acc(
    model: nn.Module, batch: Batch, layer: int, heads: list[int], ablation: Ablation
) -> float:
    """In-context accuracy (counter >= 2) with heads `heads` of `layer` ablated: "pattern" replaces
    their attention with the uniform causal pattern, "values" their values with the mean value."""
    name = f"blocks.{layer}.attn.hook_pattern" if ablation == "pattern" else f"blocks.{layer}.attn.hook_v"
    hooks = [(name, _hook(ablation, heads))] if heads else []
    logits = model.run_with_hooks(batch.inputs, fwd_hooks=hooks)
    mask = batch.counter >= 2
    return (logits.argmax(dim=-1) == batch.targets)[mask].float().mean().item()


def named_heads(weights: torch.Tensor) -> list[int]:
    """The heads whose weight is at least NAMED_FRACTION of the best head's."""
    return [h for h, w in enumerate(weights.tolist()) if w >= NAMED_FRACTION * float(weights.max())]


def ablate_memories(model: nn.Module, batch: Batch, triggers: torch.Tensor | None) -> ModelAblations:
    """The probes of `model`, the heads they name and the accuracy with each memory ablated."""
    config = model_config(model)
    last = config.n_layers - 1
    trigger_weights = None
    if triggers is None:  # random triggers: W_KQ2 weighs the tokens as the training run logs it
        trigger_weights = in_context_trigger_shares(batch.inputs, batch.counter, model.W_E.shape[0])
    probes = all_probes(model, triggers, None, trigger_weights)
    weights = {
        "previous_token": previous_token_weights(model),
        "induction": induction_weights(model, triggers),
    }
    layers = {"W_OV2": (last, "induction"), "W_KQ2": (last, "induction"), "W_KQ1": (0, "previous_token")}
    memories = {}
    for memory, (layer, kind) in layers.items():
        named = named_heads(weights[kind])
        others = [h for h in range(config.n_heads) if h not in named]
        ablation = ABLATION[memory]
        memories[memory] = MemoryAblation(
            probe=probes[memory],
            named_heads=[f"l{layer}h{h}" for h in named],
            other_heads=[f"l{layer}h{h}" for h in others],
            acc_named_ablated=ablated_icl_acc(model, batch, layer, named, ablation),
            acc_others_ablated=ablated_icl_acc(model, batch, layer, others, ablation) if others else None,
        )
    return ModelAblations(
        icl_acc=ablated_icl_acc(model, batch, 0, [], "values"),
        memories=memories,
        head_weights={k: v.tolist() for k, v in weights.items()},
    )


def plot_probe_validity(result: ProbeValidityResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, len(result.models))
    for ax, (name, m) in zip(axes[0], result.models.items()):
        x = np.arange(len(m.memories))
        named = [a.acc_named_ablated for a in m.memories.values()]
        others = [
            np.nan if a.acc_others_ablated is None else a.acc_others_ablated for a in m.memories.values()
        ]
        probes = [a.probe for a in m.memories.values()]
        ax.bar(x - 0.27, probes, 0.27, color="tab:gray", label="probe")
        ax.bar(x, named, 0.27, color="tab:red", label="accuracy, named heads ablated")
        ax.bar(x + 0.27, others, 0.27, color="tab:blue", label="accuracy, other heads ablated")
        ax.axhline(m.icl_acc, color="k", ls="--", lw=1, label=f"intact accuracy {m.icl_acc:.3f}")
        labels = [f"{k}\n{'+'.join(a.named_heads)}" for k, a in m.memories.items()]
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name} model")
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("probe / in-context accuracy")
    return save_figure(fig, out_dir, "probe_validity")


@register(
    "probe-validity",
    family="transformer",
    summary="ablating the heads each probe names removes in-context accuracy; ablating the others does not",
    config=ProbeValidityConfig,
    plot=plot_probe_validity,
    small=lambda: ProbeValidityConfig(
        full=tiny(full_train()),
        simplified=_simplified_at_target().replace(steps=2, eval_every=2, batch_size=8, eval_batch_size=64),
        device="cpu",
    ),
)
def run_probe_validity(
    config: ProbeValidityConfig, out_dir: Path, *, log=print, progress: bool = True
) -> ProbeValidityResult:
    stats = load_stats()
    models = {}
    for name, train in (("full", config.full), ("simplified", config.simplified)):
        log(f"[probe-validity] {name} model: {train.optim.steps} steps")
        train_run(train, out_dir, name, device=config.device, progress=progress, log=log)
        model = trained_model(out_dir, name)
        task, batch = eval_batch(train, stats)
        models[name] = ablate_memories(model, batch, probe_triggers(train, task))
        log(f"[probe-validity] {name}: {models[name]}")
    return ProbeValidityResult(models=models)
