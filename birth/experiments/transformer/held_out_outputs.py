"""`held-out-outputs`: outputs from the first 75% of the token ids in training, evaluated on the other
25% (the reference's `train_test`): does the induction head copy tokens it never copied?"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch

from birth.base.io import new_figure, save_figure
from birth.base.runtime import Device
from birth.base.validate import Int, Validated
from birth.experiments.common import (
    RUNS,
    Seeds,
    Train,
    TrainedRun,
    eval_batch,
    probe_triggers,
    run_seeds,
    train_run,
)
from birth.experiments.registry import ExperimentResult, register
from birth.experiments.transformer.common import (
    STUDY_SEEDS,
    check_studied_model,
    mean_or_nan,
    paper,
    quick,
    study_tiny,
)
from birth.models.weights import native
from probes.recall import memory_recall
from tasks.protocol import MemoryTargets
from tasks.shakespeare import load_stats
from tasks.triggered_bigram import ICL_ACC, OutputSplit, output_split_range
from training.checkpoint import list_checkpoints, load_checkpoint, load_model_state
from training.evaluation import ATTENTION, evaluate, standard_groups

SPLITS: tuple[OutputSplit, ...] = (
    "train",
    "test",
)  # outputs from the first 75% of the ids (seen) / the other 25% (held out)


@dataclass(frozen=True)
class HeldOutConfig(Validated):
    train: Train = field(default_factory=lambda: quick(steps=1000))  # base run (on --output-split train)
    points: Annotated[int, Int(1)] = 10  # checkpoints evaluated on both splits along the run
    seeds: Seeds = 1  # runs, seeds --seed, --seed + 1, ...
    device: Device = "auto"  # where the runs train (auto: CUDA when present)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_studied_model(self.train)
        if self.train.task.output_mode == "bigram":
            raise ValueError("--output-mode bigram cannot be split into seen and held-out outputs")


@dataclass(frozen=True)
class HeldOutRun:
    run: TrainedRun
    steps: list[int]  # checkpoint steps
    icl: dict[str, list[float]]  # split -> in-context accuracy at each checkpoint
    ov2_recall: dict[str, list[float]]  # split -> W_OV2 recall over that split's token ids
    # split -> layer 2's argmax follows an earlier occurrence of the trigger (attn/score2_acc) and
    # the token it attends to is the prediction (attn/pred_attended_acc): where the head looks vs
    # whether it copies what it finds
    score2: dict[str, list[float]]
    pred_attended: dict[str, list[float]]


@dataclass(frozen=True)
class HeldOutResult(ExperimentResult):
    runs: list[HeldOutRun]
    final_icl: dict[str, float]  # split -> seed mean at the last checkpoint
    final_ov2: dict[str, float]  # split -> seed mean W_OV2 recall over the split's ids
    final_score2: dict[str, float]  # split -> seed mean attn/score2_acc at the last checkpoint
    final_pred_attended: dict[str, float]  # split -> seed mean attn/pred_attended_acc

    def headline(self) -> str:
        return (
            f"in-context accuracy on outputs seen in training {self.final_icl['train']:.3f}, on held-out "
            f"outputs {self.final_icl['test']:.3f}; layer 2 attends after the previous trigger "
            f"{self.final_score2['train']:.2f} vs {self.final_score2['test']:.2f}, predicts the attended "
            f"token {self.final_pred_attended['train']:.2f} vs {self.final_pred_attended['test']:.2f}; W_OV2 "
            f"recall over those tokens {self.final_ov2['train']:.2f} vs {self.final_ov2['test']:.2f}"
        )


def plot_held_out(result: HeldOutResult, out_dir: Path) -> list[Path]:
    fig, axes = new_figure(1, 2)
    panels = (
        (axes[0][0], "icl", "-", "in-context accuracy"),
        (axes[0][0], "score2", ":", "layer 2 attends after the trigger"),
        (axes[0][0], "pred_attended", "--", "prediction = attended token"),
        (axes[0][1], "ov2_recall", "-", "W_OV2 recall over the split's tokens"),
    )
    for split, color in zip(SPLITS, ("tab:blue", "tab:red")):
        name = "seen outputs" if split == "train" else "held-out outputs"
        for i, r in enumerate(result.runs):
            for ax, key, style, what in panels:
                label = f"{what}, {name}" if i == 0 else None
                ax.plot(r.steps, getattr(r, key)[split], style, marker="o", ms=3, color=color, label=label)
    axes[0][1].set_ylabel("W_OV2 recall over the split's tokens")
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "held_out_outputs")


def _ov2_recall_over(model, ids: torch.Tensor) -> float:
    layer = model.cfg.n_layers - 1
    ids = ids.to(model.W_E.device)
    return memory_recall(model.OV[layer, 0], model.W_E[ids], model.W_U.T, ids)


@register(
    "held-out-outputs",
    family="transformer",
    summary="outputs from 75% of the tokens in training, the other 25% at test: both in-context accuracies",
    config=HeldOutConfig,
    plot=plot_held_out,
    full=lambda: HeldOutConfig(train=paper(), seeds=STUDY_SEEDS),
    small=lambda: HeldOutConfig(train=study_tiny(), points=2, device="cpu"),
)
def run_held_out(config: HeldOutConfig, out_dir: Path, *, log=print, progress: bool = True) -> HeldOutResult:
    stats = load_stats()
    steps = config.train.optim.steps
    base = config.train.replace(output_split="train", checkpoint_every=max(1, steps // config.points))
    batches = {split: eval_batch(base.replace(output_split=split), stats) for split in SPLITS}
    ids = {split: torch.arange(*output_split_range(split, stats.vocab_size)) for split in SPLITS}
    runs = []
    for seed in run_seeds(base, config.seeds):
        train = base.replace(seed=seed)
        log(f"[held-out-outputs] training outputs: token ids {int(ids['train'][0])}-{int(ids['train'][-1])}, "
            f"held out: {int(ids['test'][0])}-{int(ids['test'][-1])}; seed {seed}")  # fmt: skip
        run = train_run(train, out_dir, f"seed{seed}", device=config.device, progress=progress, log=log)
        model = train.build_model(stats.vocab_size)
        model.eval()
        curve_steps = []
        icl, ov2, score2, attended = ({s: [] for s in SPLITS} for _ in range(4))
        for step, path in list_checkpoints(Path(out_dir) / RUNS / f"seed{seed}"):
            load_model_state(native(model), load_checkpoint(path)["model"], path)
            curve_steps.append(step)
            for split, (task, batch) in batches.items():
                targets = MemoryTargets(probe_triggers(train, task))
                row = evaluate(model, batch, standard_groups(task, targets=targets, attention=True))
                icl[split].append(row[ICL_ACC])
                ov2[split].append(_ov2_recall_over(model, ids[split]))
                score2[split].append(row[ATTENTION + "score2_acc"])
                attended[split].append(row[ATTENTION + "pred_attended_acc"])
        runs.append(HeldOutRun(run, curve_steps, icl, ov2, score2, attended))
        log(f"[held-out-outputs] seed {seed}: in-context accuracy seen {icl['train'][-1]:.3f}, "
            f"held out {icl['test'][-1]:.3f}")  # fmt: skip

    def final(curve: str) -> dict[str, float]:  # seed mean at the last checkpoint, per split
        return {s: mean_or_nan([getattr(r, curve)[s][-1] for r in runs]) for s in SPLITS}

    return HeldOutResult(runs, final("icl"), final("ov2_recall"), final("score2"), final("pred_attended"))
