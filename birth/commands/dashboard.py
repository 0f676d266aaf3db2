"""`birth dashboard --entity ENTITY [--project birth]`: the W&B learning-order workspace, as code.

Builds (with `wandb-workspaces`) a workspace for a W&B project of `birth train` runs: the three
recall probes and the in-context accuracy against the step with the 0.9 line, the attention probes,
the W_F probe, the loss next to the bigram floor, the learning-order columns of the runs table,
the attention heatmaps, runs grouped by their W&B group (a grid or a study). `training.dashboard`
lists the panels.

--dry-run prints the workspace's view spec as JSON and touches nothing; without it the workspace
is saved to W&B, which needs an API key (`wandb login` or WANDB_API_KEY) and the network.
"""

from __future__ import annotations

import argparse
import json

from birth.cli import parse_args
from training.dashboard import (
    DEFAULT_NAME,
    DEFAULT_PROJECT,
    build_workspace,
    check_wandb_name,
    check_workspace_name,
    save_workspace,
    workspace_spec,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entity", required=True, help="W&B entity (user or team) that owns the project")
    p.add_argument(
        "--project", default=DEFAULT_PROJECT, help=f"W&B project of the runs (default: {DEFAULT_PROJECT})"
    )
    p.add_argument("--name", default=DEFAULT_NAME, help=f"workspace name (default: {DEFAULT_NAME!r})")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the workspace spec as JSON instead of saving it (offline)",
    )


def run(argv: list[str], prog: str) -> int:
    args = parse_args(add_arguments, argv, prog, __doc__)
    check_wandb_name(args.entity, "--entity")
    check_wandb_name(args.project, "--project")
    check_workspace_name(args.name, "--name")
    workspace = build_workspace(args.entity, args.project, args.name)
    if args.dry_run:
        print(json.dumps(workspace_spec(workspace), indent=1))
        return 0
    url = save_workspace(workspace)
    print(f"saved workspace {args.name!r} of {args.entity}/{args.project}: {url}")
    return 0
