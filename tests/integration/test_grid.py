"""`birth grid`: spec validation, the results file, and real grids through submitit's executors."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Literal

import pytest
import yaml

from birth.base.config_io import load_yaml
from birth.experiments import grid
from birth.experiments.theory.toy import ToyConfig, toy_draws

TOY = "birth.experiments.theory.toy:toy"


def write_spec(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_local_grid_skips_finished_points_and_reports_failures(tmp_path):
    out = tmp_path / "out"
    executor = {"cluster": "local", "parallel": 2, "threads": 1}
    fixed = {"n": 300, "tags": ["a", "b"]}
    spec_path = write_spec(
        tmp_path / "toy.yaml",
        experiment=TOY,
        fixed=fixed,
        out=str(out),
        executor=executor,
        grid=[{"seed": [0, 1, 2]}, {"seed": [3], "fail": [True]}],  # a union of two products
    )
    logged: list[str] = []
    report = grid.run_grid(grid.load_spec(spec_path), log=logged.append)
    assert (report.total, report.skipped, len(report.ok), len(report.failed)) == (4, 0, 3, 1)
    assert report.exit_code == 1

    rows = {r["name"]: r for r in lines(out / "results.jsonl")}
    assert set(rows) == {"seed=0", "seed=1", "seed=2", "seed=3,fail=true"}
    for seed in (0, 1, 2):
        ok = rows[f"seed={seed}"]
        assert ok["status"] == "ok" and ok["error"] is None
        assert ok["point"] == {"seed": seed}
        assert ok["overrides"] == {"n": 300, "tags": ["a", "b"], "seed": seed}
        # the job ran the point's config: its numbers are the ones recomputed here
        z = toy_draws(ToyConfig(n=300, seed=seed))
        assert ok["result"]["mean"] == pytest.approx(float(z.mean()), abs=1e-15)
        assert ok["result"]["std"] == pytest.approx(float(z.std()), abs=1e-15)
        assert ok["result"]["tags"] == ["a", "b"]
        assert ok["seconds"] > 0
        saved = json.loads((out / ok["name"] / "result.json").read_text())
        assert saved["result"]["mean"] == ok["result"]["mean"]
    assert len({rows[f"seed={s}"]["result"]["mean"] for s in (0, 1, 2)}) == 3
    failed = rows["seed=3,fail=true"]
    assert failed["status"] == "failed" and failed["result"] is None
    assert failed["error"] == "RuntimeError: toy experiment asked to fail (n=300, seed=3)"
    assert "asked to fail" in Path(failed["log"]).read_text()  # the traceback is in the job's log
    assert sum("FAILED" in line for line in logged) == 1

    # re-run with one more seed: the finished points are skipped, the failed one runs again
    mtime = (out / "seed=0" / "result.json").stat().st_mtime_ns
    write_spec(
        spec_path,
        experiment=TOY,
        fixed=fixed,
        out=str(out),
        executor=executor,
        grid=[{"seed": [0, 1, 2, 4]}, {"seed": [3], "fail": [True]}],
    )
    report = grid.run_grid(grid.load_spec(spec_path), log=logged.append)
    assert (report.total, report.skipped, len(report.ok), len(report.failed)) == (5, 3, 1, 1)
    assert report.ok == ["seed=4"]
    names = [r["name"] for r in lines(out / "results.jsonl")]
    assert sorted(names) == ["seed=0", "seed=1", "seed=2", "seed=3,fail=true", "seed=3,fail=true", "seed=4"]
    assert (out / "seed=0" / "result.json").stat().st_mtime_ns == mtime

    # changing a fixed override makes every point a new one
    spec = grid.load_spec(spec_path)
    other = grid.parse_spec({**yaml.safe_load(spec_path.read_text()), "fixed": {"n": 301}})
    done = grid.finished_keys(lines(out / "results.jsonl"))
    assert sum(grid.point_key(TOY, "default", p.overrides) in done for p in spec.points) == 4
    assert sum(grid.point_key(TOY, "default", p.overrides) in done for p in other.points) == 0


def test_cli_debug_executor_and_dry_run(tmp_path, capsys):
    from birth.cli import main

    out = tmp_path / "g"
    spec = write_spec(
        tmp_path / "s.yaml",
        experiment=TOY,
        base="small",
        grid={"scale": [0.5, 2]},
        out=str(out),
        executor={"cluster": "debug"},
    )
    assert main(["grid", str(spec), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "to run" in text and "scale=0.5" in text and "scale=2.0" in text
    assert not (out / "results.jsonl").exists()

    assert main(["grid", str(spec)]) == 0
    rows = lines(out / "results.jsonl")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    base = toy_draws(ToyConfig(n=100))  # base: small is n = 100
    for row in rows:
        scale = row["overrides"]["scale"]
        assert row["result"]["mean"] == pytest.approx(scale * float(base.mean()), rel=1e-12)
    assert main(["grid", str(spec), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("done ") == 2

    # a failing point: exit status 1, and the CLI names it
    bad = write_spec(
        tmp_path / "bad.yaml",
        experiment=TOY,
        fixed={"fail": True},
        out=str(out / "bad"),
        executor={"cluster": "debug"},
    )
    assert main(["grid", str(bad)]) == 1
    assert "failed: point: RuntimeError: toy experiment asked to fail" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"experiment": "no-such-experiment"}, "unknown experiment 'no-such-experiment'"),
        ({"experiment": "birth.nonexistent:toy"}, "cannot import module 'birth.nonexistent'"),
        ({"experiment": "birth.experiments.theory.toy:other"}, "registers no experiment 'other'"),
        ({"experiment": TOY, "grid": {"size": [1, 2]}}, "grid.size: unknown field 'size' of"),
        ({"experiment": TOY, "fixed": {"sede": 1}}, "fixed.sede: unknown field 'sede'"),
        ({"experiment": TOY, "grid": {"n": [10, "ten"]}}, "grid.n[1] must be an integer, got 'ten'"),
        ({"experiment": TOY, "grid": {"fail": [0]}}, "grid.fail[0] must be true or false, got 0"),
        ({"experiment": TOY, "grid": {"tags": ["a"]}}, "grid.tags[0] must be a list, got 'a'"),
        ({"experiment": TOY, "grid": {"scale": ["big"]}}, "grid.scale[0] must be a number, got 'big'"),
        ({"experiment": TOY, "grid": {"n": [10, 1]}}, "point n=1: --n must be an integer >= 2, got 1"),
        ({"experiment": TOY, "grid": {"n": 10}}, "grid.n must be a non-empty list"),
        ({"experiment": TOY, "grid": {"n": [10, 10]}}, "repeated points"),
        ({"experiment": TOY, "fixed": {"n": 5}, "grid": {"n": [10]}}, "grid.n is also in fixed"),
        ({"experiment": TOY, "base": "huge"}, "base must be one of default, full, small"),
        ({"experiment": TOY, "preset": "quick"}, "preset is for train grids"),
        ({"experiment": TOY, "exeuctor": {}}, "unknown key 'exeuctor'"),
        ({"experiment": TOY, "executor": {"cluster": "aws"}}, "executor.cluster must be one of"),
        ({"experiment": TOY, "executor": {"gpus": 1}}, "executor: unknown key 'gpus'"),
        ({"experiment": TOY, "executor": {"parallel": 0}}, "--parallel must be an integer >= 1"),
        ({"experiment": TOY, "wandb": {"mode": "cloud"}}, "wandb.mode must be one of off, offline, online"),
        ({"experiment": "train", "grid": {"lr": [0.1, -1.0]}}, "point lr=-1.0: --lr must be"),
        ({"experiment": "train", "grid": {"d_modle": [8]}}, "grid.d_modle: unknown field"),
        ({"experiment": TOY, "grid": [{"n": [10]}, {"n": [10]}]}, "repeated points"),
        ({"experiment": TOY, "grid": [{"n": [10]}, {"m": [10]}]}, "grid[1].m: unknown field"),
        ({"experiment": "train", "preset": "huge"}, "preset must be one of"),
    ],
)
def test_spec_errors_name_the_key(spec, message, tmp_path):
    with pytest.raises(ValueError) as err:
        grid.parse_spec({"out": str(tmp_path), **spec}, source="s.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("s.yaml")
    assert "\n" not in str(err.value)


def test_executor_parameters_are_checked_before_any_job(tmp_path):
    spec = grid.parse_spec({"experiment": TOY, "out": str(tmp_path), "executor": {"slurm": {"bogus": 1}}})
    with pytest.raises(ValueError, match="executor: .*bogus"):
        grid.make_executor(spec)
    assert not (tmp_path / "results.jsonl").exists()


def test_coerce_and_point_names():
    assert grid.coerce(3, float, "x") == 3.0 and isinstance(grid.coerce(3, float, "x"), float)
    assert load_yaml("lr: 1e-3")["lr"] == 0.001  # YAML 1.1 would read 1e-3 as a string
    with pytest.raises(ValueError, match="x must be a number"):
        grid.coerce("40", float, "x")  # a quoted number is a string, as in an edited config.json
    assert grid.coerce([1, 2], tuple[int, ...], "x") == (1, 2)
    assert grid.coerce([1, 2.5], tuple[int, float], "x") == (1, 2.5)
    assert grid.coerce(None, int | None, "x") is None
    assert grid.coerce("sgd", Literal["sgd", "adam"], "x") == "sgd"
    with pytest.raises(ValueError, match="x must be one of sgd, adam, got 'sign'"):
        grid.coerce("sign", Literal["sgd", "adam"], "x")
    with pytest.raises(ValueError, match=r"x\[1\] must be an integer"):
        grid.coerce([1, True], tuple[int, ...], "x")
    with pytest.raises(ValueError, match="x must be a list of 2 values"):
        grid.coerce([1], tuple[int, float], "x")
    with pytest.raises(ValueError, match="x must be an integer or null"):
        grid.coerce("a", int | None, "x")

    assert grid.point_name({"d": 10, "lr": 0.1, "ln": True, "ms": ("a", "b")}) == "d=10,lr=0.1,ln=true,ms=a+b"
    assert grid.point_name({}) == "point"
    odd = grid.point_name({"name": "a b/c"})
    assert odd.startswith("name=a_b_c-") and "/" not in odd
    assert odd == grid.point_name({"name": "a b/c"}) != grid.point_name({"name": "a_b/c"})
    long = grid.point_name({"dims": tuple(range(100))})
    assert len(long) <= 111 and long != grid.point_name({"dims": tuple(range(101))})


def _append_many(args: tuple[str, int]) -> None:
    path, worker = args
    for i in range(60):
        # lines longer than a pipe buffer (4 KiB): an unlocked, split write could interleave them
        grid.append_line(Path(path), {"worker": worker, "i": i, "pad": "x" * 9000})


def test_append_line_keeps_lines_whole_across_processes(tmp_path):
    path = tmp_path / "results.jsonl"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(str(path), w) for w in range(4)])
    rows = lines(path)  # every line parses
    assert sorted((r["worker"], r["i"]) for r in rows) == [(w, i) for w in range(4) for i in range(60)]
    path.write_text(path.read_text() + '{"cut": ')  # a line cut by a crash is skipped
    assert len(grid.read_results(path)) == 240


def test_train_grid_in_process(tmp_path, tiny_config, one_thread):
    out = tmp_path / "runs"
    spec = grid.parse_spec(
        {
            "experiment": "train",
            "fixed": {
                "d_model": 16,
                "seq_len": 16,
                "batch_size": 8,
                "eval_batch_size": 16,
                "eval_every": 2,
                "checkpoint_every": 4,
                "steps": 4,
            },
            "grid": {"lr": [0.05, 0.5]},
            "device": "cpu",
            "out": str(out),
            "executor": {"cluster": "debug", "threads": 1},
        }
    )
    report = grid.run_grid(spec, log=lambda _: None)
    assert len(report.ok) == 2 and not report.failed
    rows = lines(out / "results.jsonl")
    for row in rows:
        assert row["base"] == "preset:quick"
        assert row["result"]["status"] == "completed" and row["result"]["step"] == 4
        saved = json.loads((out / row["name"] / "config.json").read_text())
        assert saved["optim"]["lr"] == row["point"]["lr"] and saved["model"]["d_model"] == 16
    assert grid.run_grid(spec, log=lambda _: None).skipped == 2


def test_slurm_parameters_reach_the_executor(tmp_path, monkeypatch):
    spec = grid.parse_spec(
        {
            "experiment": TOY,
            "out": str(tmp_path),
            "grid": {"seed": [0, 1]},
            "executor": {
                "cluster": "slurm",
                "parallel": 3,
                "timeout_min": 30,
                "cpus_per_task": 4,
                "slurm": {"partition": "gpu", "qos": "high"},
            },
        }
    )
    with pytest.raises(ValueError, match='executor: cluster slurm: Could not detect "srun"'):
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        grid.make_executor(spec)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    params = grid.make_executor(spec)._executor.parameters
    assert params == {
        "time": 30,
        "cpus_per_task": 4,
        "partition": "gpu",
        "qos": "high",
        "array_parallelism": 3,
    }
    assert grid._job_threads(spec) == 4  # a Slurm job's torch threads: its cores
