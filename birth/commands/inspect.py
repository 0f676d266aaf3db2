"""`birth inspect CHECKPOINT`: attention heatmaps, an offline circuitsvis page and induction scores.

CHECKPOINT is a `step_*.pt` file or a run directory (its latest checkpoint is used), of a run on
any task. Writes, into --out (default RUN_DIR/inspect/step_XXXXXX):
    attention_layer{1,2}.png   heatmaps of one held-out sequence (triggers red, outputs blue, when
                               the task has triggers); attention_layer{L}_head{H}.png, one per
                               head, with several heads
    attention.html             circuitsvis view with its JavaScript inlined (opens offline)
    scores.json                the scores printed on the terminal: previous-token and induction
                               scores of every head on the task's held-out batch (under the task's
                               name; the induction queries of `probes.attention.induction_targets`)
                               and on repeated random tokens, the task's headline metrics, the
                               previous-token and induction heads found, and the memory-recall
                               probes of the weights (`memory_probes`: the
                               values the run logs as probes/NAME, and for a full model the
                               per-head readings and the heads' weights, `probes.recall.probe_report`)

Files of an earlier inspection in a --out you name are kept unless --overwrite; the default folder
is the run's own and is re-made (the files replaced are named).

The figures show a typical sequence (`probes.attention.typical_sequence`: several repeated
occurrences, no trigger whose output is itself) unless --index picks one.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from birth.base.io import atomic_write_json, check_writable, refuse_replacing
from birth.cli import parse_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a step_*.pt file or a run directory")
    p.add_argument(
        "--out", type=Path, default=None, help="output directory (default: RUN_DIR/inspect/<checkpoint name>)"
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="held-out sequences the scores average over (default: 64)"
    )
    p.add_argument(
        "--index",
        type=int,
        default=None,
        help="which of those sequences the figures show (default: a typical one)",
    )
    p.add_argument(
        "--positions",
        type=int,
        default=64,
        help="positions shown in the PNG heatmaps (default: 64; the HTML shows all)",
    )
    p.add_argument(
        "--repeat-len",
        type=int,
        default=None,
        help="half length n of the repeated random sequences (default: T // 2)",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier inspection in --out (the default folder is re-made)",
    )


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run directory."""
    from training.checkpoint import latest_checkpoint  # torch: imported once a run is read (see execute)

    if path.is_dir():
        return latest_checkpoint(path)
    return path


def written_names(n_layers: int, n_heads: int) -> list[str]:
    """The files an inspection writes (`probes.attention.save_attention_heatmaps` names the PNGs)."""
    if n_heads == 1:
        pngs = [f"attention_layer{layer}.png" for layer in range(1, n_layers + 1)]
    else:
        pngs = [
            f"attention_layer{layer}_head{head}.png"
            for layer in range(1, n_layers + 1)
            for head in range(n_heads)
        ]
    return [*pngs, "attention.html", "scores.json"]


def default_out_dir(ckpt_path: Path) -> Path:
    if ckpt_path.parent.name == "checkpoints":  # RUN_DIR/checkpoints/step_000100.pt
        return ckpt_path.parent.parent / "inspect" / ckpt_path.stem
    return ckpt_path.parent / f"{ckpt_path.stem}_inspect"


def _fmt(value: float) -> str:
    return "  nan" if value is None or math.isnan(value) else f"{value:.3f}"


def task_section(task_name: str) -> str:
    """The key of scores.json holding the scores on the task's own sequences ("triggered_bigram")."""
    return task_name.replace("-", "_")


def format_scores(scores: dict) -> list[str]:
    """Terminal lines: the circuit's scores first (layer 1 previous token, last layer induction)."""
    lines = []
    n_layers = scores["n_layers"]
    task = scores["task"]
    for name, title in (
        (task_section(task), f"{task} sequences"),
        ("repeated_random", "repeated random tokens [x_1..x_n, x_1..x_n]"),
    ):
        part = scores[name]
        extra = (
            f"n={part['half_len']}, second-half acc {_fmt(part['repeat_acc'])}"
            if name == "repeated_random"
            else ", ".join(f"{metric} {_fmt(value)}" for metric, value in part["metrics"].items())
        )
        lines.append(f"{title} ({part['n_sequences']} sequences; {extra}):")
        for layer in range(1, n_layers + 1):
            if f"layer{layer}" not in part:  # several heads per layer: `_head_lines` has them
                break
            s = part[f"layer{layer}"]
            prev, ind = s["previous_token"], s["induction"]
            lines.append(
                f"  layer {layer}: previous-token {_fmt(prev['mass'])} (argmax {_fmt(prev['argmax'])})   "
                f"induction {_fmt(ind['mass'])} (argmax {_fmt(ind['argmax'])}, "
                f"attended = prediction {_fmt(ind['attended_is_prediction'])})"
            )
            if "induction_any" in s:
                anyo = s["induction_any"]
                lines.append(
                    f"           induction over all earlier occurrences {_fmt(anyo['mass'])} "
                    f"(argmax {_fmt(anyo['argmax'])})"
                )
        lines += _head_lines(part)
    if n_layers == 1:
        lines.append("  (1-layer model: no induction head is expected; its induction score is the baseline)")
    if "memory_probes" in scores:
        lines += _probe_lines(scores["memory_probes"])
    return lines


def _values(values: dict[str, float]) -> str:
    """NAME value pairs, the per-head entries ("W_OV2/l1h0") left out."""
    return "  ".join(f"{k} {_fmt(v)}" for k, v in values.items() if "/" not in k)


def _probe_lines(report: dict) -> list[str]:
    """The memory-recall probes (`probes.recall.probe_report`): the run's readings, then for a full
    model the per-head ones and the heads' weights (layers numbered from 1, as above)."""
    title = "per head, the paper's" if report["reading"] == "per_head" else "layer readings"
    lines = [f"memory probes ({title}; logged as probes/NAME): {_values(report['probes'])}"]
    if "head_probes" in report:
        lines.append(f"  per-head readings, best head (head_probes/NAME): {_values(report['head_probes'])}")
    for key, title in (
        ("previous_token_weights", "previous-token weight of each layer-1 head"),
        ("induction_weights", "induction weight of each last-layer head"),
    ):
        if key in report:
            lines.append(f"  {title}: " + " ".join(f"{w:.2f}" for w in report[key]))
    if "kq1_by_position" in report:
        stored = report["kq1_by_position"]
        lines.append(
            f"  W_KQ1 by position: query t+1 -> key t stored at {sum(stored)} of {len(stored)} positions"
            f" (first miss at t = {stored.index(False) if False in stored else 'none'})"
        )
    return lines


def _head_lines(part: dict) -> list[str]:
    """Every head's scores (models with several heads per layer) and the heads found."""
    lines = []
    if not any(key.startswith("layer") for key in part):  # several heads per layer
        for name, s in part["heads"].items():  # "layer1.head0"
            layer, head = name.removeprefix("layer").split(".head")
            lines.append(
                f"  layer {layer} head {head}: previous-token {_fmt(s['previous_token']['mass'])}   "
                f"induction {_fmt(s['induction']['mass'])} "
                f"(over all earlier occurrences {_fmt(s['induction_any']['mass'])})"
            )
    for key, title in (("previous_token_head", "previous-token head"), ("induction_head", "induction head")):
        found = part[key]
        where = (
            "none"
            if found is None
            else (f"layer {found['layer']} head {found['head']} (score {_fmt(found['score'])})")
        )
        lines.append(f"  {title}: {where}")
    return lines


def run(argv: list[str], prog: str) -> int:
    return execute(parse_args(add_arguments, argv, prog, __doc__))


def execute(args: argparse.Namespace) -> int:
    # torch, the probes and the model loader (transformer_lens, matplotlib) take seconds to import
    # (docs/tuning.md, "Start-up"): `birth inspect --help` and a bad flag answer without them
    import torch

    from birth.base.runtime import resolve_device
    from probes.attention import (
        repeated_sequence_scores,
        save_attention_heatmaps,
        save_attention_html,
        task_scores,
        typical_sequence,
    )
    from probes.recall import in_context_trigger_shares, probe_report
    from tasks.protocol import MemoryTask, memory_targets
    from training.checkpoint import load_trained_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.index is not None and not 0 <= args.index < args.batch_size:
        raise ValueError(f"--index must be in [0, --batch-size), got {args.index}")
    if args.positions < 2:
        raise ValueError(f"--positions must be >= 2, got {args.positions}")
    device = resolve_device(args.device)

    # Everything that can fail on bad input happens before anything is written.
    ckpt_path = resolve_checkpoint(args.checkpoint)
    out_dir = args.out if args.out is not None else default_out_dir(ckpt_path)
    check_writable(out_dir, "--out")
    model, config, step = load_trained_model(ckpt_path, device=device)
    half_len = args.repeat_len if args.repeat_len is not None else config.task.seq_len // 2
    if not 1 <= half_len <= config.task.seq_len // 2:
        raise ValueError(f"--repeat-len must be in [1, T/2 = {config.task.seq_len // 2}], got {half_len}")
    # a folder the user named keeps its files unless --overwrite; the default one is the run's own
    refuse_replacing(
        out_dir,
        written_names(config.model.n_layers, config.model.n_heads),
        overwrite=args.overwrite,
        derived=args.out is None,
    )

    task = config.build_task(device)
    stats = getattr(task, "stats", None)  # corpus statistics decode characters (triggered-bigram)
    # the run's own held-out batch (same seed as evaluation during training)
    batch = task.sample(args.batch_size, task.generator(config.run.eval_seed))
    with torch.no_grad():
        scores = {
            "checkpoint": str(ckpt_path),
            "step": step,
            "n_layers": config.model.n_layers,
            "task": config.task_name,
            task_section(config.task_name): task_scores(model, task, batch),
            "repeated_random": repeated_sequence_scores(
                model, half_len, batch_size=32, seed=config.run.eval_seed
            ),
        }
        # a memory task with random triggers: W_KQ2 weighs the tokens by their share of the
        # in-context targets of the run's own held-out batch, as the run logged it
        # (`training.evaluation.RecallProbes`)
        targets, weights = memory_targets(task), None
        if targets.triggers is None and isinstance(task, MemoryTask):
            heldout = task.sample(config.run.eval_batch_size, task.generator(config.run.eval_seed))
            weights = in_context_trigger_shares(heldout.inputs, heldout.counter, model.W_E.shape[0])
        scores["memory_probes"] = probe_report(model, targets.triggers, targets.bigram, weights)

    index = typical_sequence(batch, args.positions, task=task) if args.index is None else args.index
    scores["shown_sequence"] = index

    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = save_attention_heatmaps(
        model, stats, batch, out_dir, index=index, max_positions=args.positions, task=task
    )
    html = save_attention_html(model, stats, batch, out_dir / "attention.html", index=index)
    scores_path = atomic_write_json(out_dir / "scores.json", scores)  # NaN as null: strict JSON

    print(
        f"checkpoint {ckpt_path} (step {scores['step']}, {config.model.n_layers} layer{'s' * (config.model.n_layers > 1)})"
    )
    for line in format_scores(scores):
        print(line)
    typical = "typical: repeated occurrences, no trigger followed by itself"
    chosen = "--index" if args.index is not None else typical
    print(f"figures: held-out sequence {index} ({chosen})")
    print("wrote:")
    for path in (*pngs, html, scores_path):
        print(f"  {path}")
    return 0
