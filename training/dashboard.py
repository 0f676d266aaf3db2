"""The W&B learning-order dashboard as code: one `wandb-workspaces` workspace for a project of
`birth train` runs, so that nobody arranges the panels by hand after `wandb sync`.

Sections, top to bottom (each panel reads keys the trainer logs; the integration test trains a
run and checks every key against its metrics.jsonl, summary.json and W&B history):

- Learning order: the three recall probes and the in-context accuracy against the step with the
  0.9 line (a probe "has learned" its memory once it crosses it), the first step at which each
  probe crosses 0.9 (summary `order/*`) and the final in-context accuracy;
- Attention probes: the attention masses and accuracies of the previous-token head (layer 1) and
  the induction head (layer 2), logged with `--attention-probes`;
- Feed-forward memory: the W_F probe (a KL divergence in nats: lower is better), logged when the
  last layer has a feed-forward layer;
- Loss: the held-out bigram loss next to its floor (the Bayes loss of the bigram targets), the
  loss on the trained targets and the training loss;
- Margins: the non-saturating readings of the three memories;
- Attention heatmaps: the images logged every `--heatmap-every` steps.

The runs table pins the learning-order columns (the summary table) and groups runs by their W&B
group: `birth grid` puts every point of a grid in one group, and `WANDB_RUN_GROUP=NAME birth train
...` puts the runs of a study in one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from probes.recall import FF_PROBE, PROBES
from tasks.triggered_bigram import BIGRAM_FLOOR, BIGRAM_LOSS, ICL_ACC
from training.evaluation import ATTENTION, EVAL_LOSS, MARGIN, STEP, THRESHOLD, TRAIN_LOSS
from training.evaluation import PROBES as PROBE_KEY

DEFAULT_PROJECT = "birth"  # the project `birth train --wandb offline|online` logs to
DEFAULT_NAME = "birth: learning order"
HEATMAP_LAYERS = (1, 2)  # `attention/layer{n}`: the two layers of the paper's model

# W&B entity and project names: letters, digits, '-', '_' and '.', at most 128 characters
_WANDB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

KeyKind = Literal["history", "summary", "media"]


@dataclass(frozen=True)
class DashboardKey:
    """A metric a panel reads: `history` (a metrics.jsonl column), `summary` (a summary.json key)
    or `media` (an image key of the W&B history)."""

    kind: KeyKind
    name: str


def check_wandb_name(value: str, option: str) -> str:
    """A W&B entity or project name, or a ValueError naming `option`."""
    if not _WANDB_NAME.fullmatch(value):
        raise ValueError(
            f"{option} must be a W&B name (letters, digits, '-', '_', '.'; at most 128 characters), "
            f"got {value!r}"
        )
    return value


def check_workspace_name(value: str, option: str = "--name") -> str:
    if not value.strip() or not value.isprintable() or len(value) > 128:
        raise ValueError(
            f"{option} must be a non-empty printable name of at most 128 characters, got {value!r}"
        )
    return value


def _probe(name: str) -> str:
    return PROBE_KEY + name


def build_workspace(entity: str, project: str = DEFAULT_PROJECT, name: str = DEFAULT_NAME) -> Any:
    """The learning-order workspace (a `wandb_workspaces.workspaces.Workspace`, not saved).

    Building it is offline; `save_workspace` writes it to W&B."""
    # wandb_workspaces imports wandb and its pydantic models: only the dashboard needs them
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    check_wandb_name(entity, "--entity")
    check_wandb_name(project, "--project")
    check_workspace_name(name)
    threshold_line = f"0*${{{ICL_ACC}}} + {THRESHOLD}"  # a constant line, drawn per run
    order = [wr.SummaryMetric(f"order/{p}") for p in PROBES]

    def line(title: str, keys: list[str], **options: Any) -> Any:
        return wr.LinePlot(title=title, x=STEP, y=keys, title_x=STEP, **options)

    sections = [
        ws.Section(
            name="Learning order",
            is_open=True,
            pinned=True,
            panels=[
                line(
                    f"Memory recall and in-context accuracy ({THRESHOLD}: learned)",
                    [*map(_probe, PROBES), ICL_ACC],
                    custom_expressions=[threshold_line],
                    range_y=(0.0, 1.02),
                ),
                wr.BarPlot(title=f"First step at recall {THRESHOLD}", metrics=order, orientation="v"),
                wr.ScalarChart(
                    title="Final in-context accuracy", metric=wr.SummaryMetric(f"final/{ICL_ACC}")
                ),
            ],
        ),
        ws.Section(
            name="Attention probes (previous-token head, induction head)",
            is_open=True,
            panels=[
                line(
                    "Attention mass: previous token (layer 1), induction (layer 2)",
                    [ATTENTION + "prev_mass", ATTENTION + "induction_mass"],
                    range_y=(0.0, 1.02),
                ),
                line(
                    "Attention accuracy",
                    [ATTENTION + k for k in ("score_acc", "score2_acc", "pred_attended_acc")],
                    range_y=(0.0, 1.02),
                ),
            ],
        ),
        ws.Section(
            name="Feed-forward memory W_F",
            is_open=True,
            panels=[line("W_F probe: KL(bigram || W_F readout), nats", [_probe(FF_PROBE)])],
        ),
        ws.Section(
            name="Loss",
            is_open=True,
            panels=[
                line("Bigram loss and its floor (nats)", [BIGRAM_LOSS, BIGRAM_FLOOR]),
                line("Loss on the trained targets (nats)", [EVAL_LOSS, TRAIN_LOSS]),
            ],
        ),
        ws.Section(
            name="Margins",
            panels=[line("Normalized margins of the memories", [MARGIN + p for p in PROBES])],
        ),
        ws.Section(
            name="Attention heatmaps",
            is_open=True,
            panels=[
                wr.MediaBrowser(
                    title="Attention of one held-out sequence",
                    media_keys=[f"attention/layer{n}" for n in HEATMAP_LAYERS],
                    gallery_axis="step",
                    num_columns=len(HEATMAP_LAYERS),
                )
            ],
        ),
    ]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis=STEP, max_runs=50),
        runset_settings=ws.RunsetSettings(
            groupby=[expr.Metric("Group")],
            pinned_columns=[f"summary:order/{p}" for p in PROBES]
            + [f"summary:final/{ICL_ACC}", "summary:status"],
        ),
    )


def workspace_spec(workspace: Any) -> dict[str, Any]:
    """The workspace as the JSON view spec `save` would send (offline)."""
    return json.loads(workspace._to_model().model_dump_json(by_alias=True, exclude_none=True))


_EXPRESSION_KEY = re.compile(r"\$\{([^}]+)\}")


def dashboard_keys(spec: dict[str, Any]) -> set[DashboardKey]:
    """Every metric the spec's panels and runs table read (the x axis included)."""
    keys: set[DashboardKey] = set()
    section = spec["spec"]["section"]
    for sec in section["panelBankConfig"]["sections"]:
        for panel in sec["panels"]:
            config = panel["config"]
            for metric in config.get("metrics", []):
                if metric.startswith("summary_metrics."):
                    keys.add(DashboardKey("summary", metric.removeprefix("summary_metrics.")))
                else:
                    keys.add(DashboardKey("history", metric))
            for expression in config.get("expressions") or []:
                keys.update(DashboardKey("history", k) for k in _EXPRESSION_KEY.findall(expression))
            if "xAxis" in config:
                keys.add(DashboardKey("history", config["xAxis"]))
            keys.update(DashboardKey("media", k) for k in config.get("mediaKeys", []))
    for runset in section["runSets"]:
        for column, pinned in runset.get("runFeed", {}).get("columnPinned", {}).items():
            if pinned and column.startswith("summary:"):
                keys.add(DashboardKey("summary", column.removeprefix("summary:")))
    return keys


def wandb_api_key() -> str | None:
    """The W&B API key this machine would use (WANDB_API_KEY, then the netrc entry of the W&B
    host), or None; read locally, without contacting W&B."""
    key = os.environ.get("WANDB_API_KEY")
    if key:
        return key
    from wandb.errors import AuthenticationError
    from wandb.sdk.lib.wbauth import read_netrc_auth

    try:
        return read_netrc_auth(host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    except (AuthenticationError, OSError) as err:
        raise ValueError(f"the W&B API key of the netrc file cannot be used: {err}") from None


def save_workspace(workspace: Any) -> str:
    """Save the workspace to W&B (needs an API key and the network); return its URL."""
    if wandb_api_key() is None:
        raise ValueError(
            "saving a workspace needs a W&B API key: run `wandb login` or set WANDB_API_KEY "
            "(--dry-run prints the spec offline)"
        )
    saved = workspace.save()
    return saved.url
