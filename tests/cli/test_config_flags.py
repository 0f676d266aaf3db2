"""Flags of a config section that holds another type than its annotation names (the markov-icl
task's config in a training config's task section): they parse, and the parsed config is of the
project's own classes again."""

from __future__ import annotations

import warnings

import pytest
import yaml

from birth.commands import experiment, train
from tasks.markov_icl import MarkovICLConfig
from training.config import TrainConfig


def test_train_flags_of_another_task_parse_into_a_plain_train_config() -> None:
    cmd = train.parse(["--task", "markov-icl", "--n-states", "4", "--alpha", "0.5", "--steps", "7"])
    assert type(cmd) is train.TrainCommand and type(cmd.config) is TrainConfig
    assert cmd.config.task == MarkovICLConfig(n_states=4, alpha=0.5, seq_len=cmd.config.task.seq_len)
    assert cmd.config.optim.steps == 7


@pytest.mark.parametrize(
    ("name", "flags", "section"),
    [
        ("markov-phases", ["--n-states", "4", "--alpha", "0.5"], "train"),
        ("clamps", ["--config.markov.task.n-states", "4", "--config.markov.task.alpha", "0.5"], "markov"),
    ],
)
def test_experiment_flags_reach_a_nested_task_section(capsys, name, flags, section) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tyro warns when a default's type is not its annotation's
        assert experiment.run_named(name, [*flags, "--print-config"], f"birth reproduce {name}") == 0
    task = yaml.safe_load(capsys.readouterr().out)[section]["task"]
    assert (task["n_states"], task["alpha"]) == (4, 0.5)


def test_bad_value_in_a_nested_task_section_names_its_flag() -> None:
    with pytest.raises(ValueError, match=r"^--n-states must be an integer >= 2, got 1$"):
        experiment.run_named("markov-phases", ["--n-states", "1", "--print-config"], "birth reproduce")
