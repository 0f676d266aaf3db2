"""The tutorial notebook (docs/tutorials/quickstart.ipynb) runs from top to bottom through the public
API, and the copy the site renders holds its outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "tutorials" / "quickstart.ipynb"


def _outputs(notebook) -> tuple[str, int]:
    """The text of every output and the number of images."""
    texts, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", output
            texts.append(output.get("text", ""))
            data = output.get("data", {})
            texts.append(data.get("text/plain", ""))
            images += "image/png" in data
    return "".join(texts), images


def _check(notebook) -> None:
    text, images = _outputs(notebook)
    assert "learning order (first step with recall >= 0.9):" in text
    by_hand, probe = re.search(r"W_OV2 read by hand: ([\d.]+)  \(probe: ([\d.]+)\)", text).groups()
    assert by_hand == probe  # the probe is that memory_recall
    assert images >= 3  # the learning order, the attention maps, the experiment's figure


def test_the_rendered_notebook_holds_its_outputs():
    nbformat = pytest.importorskip(
        "nbformat", reason="the docs tools are not installed: pip install -e '.[docs]'"
    )
    _check(nbformat.read(NOTEBOOK, as_version=4))


@pytest.mark.slow
def test_the_notebook_runs_from_top_to_bottom(tmp_path):
    nbformat = pytest.importorskip(
        "nbformat", reason="the docs tools are not installed: pip install -e '.[docs]'"
    )
    nbclient = pytest.importorskip(
        "nbclient", reason="the docs tools are not installed: pip install -e '.[docs]'"
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    _check(notebook)
