"""Make the documentation site's figures (docs/figures/*.png), each by the experiment itself.

    python scripts/docs_figures.py --quick-run runs/quick     # a finished `birth train` run
    python scripts/docs_figures.py                            # trains the quick preset first

The experiment families' figures come from their experiments at the small size the tests use
(seconds each); the learning order and the attention heatmap of the getting-started and
transformer pages come from a run of the quick preset (`birth plot`, `birth inspect`). Each
figure is shrunk to at most WIDTH pixels and 256 colours so the site stays small.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from birth.experiments.registry import get, run_experiment

DOCS_FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"
WIDTH = 900
# docs figure name -> (experiment, the PNG it writes)
EXPERIMENT_FIGURES = {
    "theory_lemma": ("lemma", "lemma.png"),
    "scaling_d_and_T": ("d-and-T", "d-and-T.png"),
    "capacity": ("capacity", "capacity.png"),
    "dynamics_margins": ("margins", "margins.png"),
}


def shrink(source: Path, target: Path, width: int = WIDTH) -> None:
    image = Image.open(source).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    print(f"wrote {target} ({target.stat().st_size // 1024} KB)")


def birth(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "birth.cli", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick-run", type=Path, help="a finished quick-preset run (default: train one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for figure, (name, png) in EXPERIMENT_FIGURES.items():
            experiment = get(name)
            run_experiment(name, experiment.small(), work / name, progress=False, log=lambda *_: None)
            shrink(work / name / png, DOCS_FIGURES / f"{figure}.png")
        run = args.quick_run
        if run is None:
            run = work / "quick"
            birth("train", "--out", str(run), "--wandb", "off", "--no-progress")
        birth("plot", str(run), "--out", str(work / "plot"))
        shrink(work / "plot" / "learning_order.png", DOCS_FIGURES / "learning_order.png")
        birth("inspect", str(run), "--out", str(work / "inspect"))
        shrink(work / "inspect" / "attention_layer2.png", DOCS_FIGURES / "attention_layer2.png")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
