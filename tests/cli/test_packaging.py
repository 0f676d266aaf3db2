"""The distribution and the README: what a new user installs and copies must work as shown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARY_PACKAGES = {"birth", "tasks", "probes", "training"}  # the design card's library folders


def _python_blocks(markdown: str, section: str) -> list[str]:
    body = markdown.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with the installed setuptools (no network)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("birth-*.whl")
    return path


def test_wheel_holds_only_the_library_packages(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/")[0] for n in names if n.endswith("/__init__.py") and n.count("/") == 1}
    assert top == LIBRARY_PACKAGES
    assert not any(n.startswith("scripts/") for n in names)
    assert "tasks/data/shakespeare_stats.json" in names  # the shipped statistics
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as z:
        assert "birth = birth.cli:main" in z.read(entry).decode()


def test_installed_command_runs_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "disabled"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    birth = [str(target / "bin" / "birth")]
    help_ = subprocess.run(birth + ["--help"], cwd=work, env=env, capture_output=True, text=True)
    assert help_.returncode == 0 and "reproduce" in help_.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import birth, tasks; print(birth.__file__, tasks.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(p.startswith(str(target)) for p in where.stdout.split())  # the wheel, not the checkout
    args = [
        "train",
        "--steps",
        "5",
        "--d-model",
        "16",
        "--seq-len",
        "16",
        "--batch-size",
        "8",
        "--eval-batch-size",
        "16",
        "--eval-every",
        "5",
        "--wandb",
        "off",
        "--no-progress",
        "--out",
        "run",
    ]
    trained = subprocess.run(birth + args, cwd=work, env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    assert (work / "run" / "checkpoints" / "step_000005.pt").is_file()
    assert "learning order" in trained.stdout


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python example, executed from the README text itself."""
    blocks = _python_blocks((REPO / "README.md").read_text(), "Python")
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    printed: list = []
    namespace = {"print": lambda *a, **k: printed.append(a)}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    probes = printed[0][0]
    assert set(probes) == {"W_OV2", "W_KQ2", "W_KQ1"} and all(0 <= v <= 1 for v in probes.values())
    assert (tmp_path / "runs" / "example" / "checkpoints" / "step_000100.pt").is_file()
    assert (tmp_path / "results" / "lemma" / "result.json").is_file()
    assert isinstance(printed[1][0], str) and printed[1][0]
